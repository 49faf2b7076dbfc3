"""
The parts of the benchmarks (C{failover.py} and C{footprint.py} beside this
package are the commands), named for what they do:

  - L{plumbing}: errors, the log, bounded waits, the command-line options
    both share, the source's fingerprint, the JSON and the work directory;
  - L{stats}: medians and percentiles, the table's number format;
  - L{procfs}: CPU, memory, process trees and Redis sockets, from C{/proc};
  - L{monitor}: a Redis C{MONITOR} reader, and what a command does to the
    lock (acquire, refresh, release);
  - L{historytail}: the recorders' history file, read as it grows;
  - L{peers}: the implementations measured (BeatCop, single-beat);
  - L{run}: one implementation's nodes on one Redis (start in batches,
    wait, find the holder, restart, stop, clean up);
  - the failover benchmark's phases, as mixins of its run: L{startup}
    (cold starts, the command alone), L{steady} (an idle cluster's cost),
    L{takeovers} (clean handovers and the host's death, round by round),
    L{crashes} (the node's process alone killed, its whole tree killed and
    restarted, the host's death after a standby's restart).

Importing it puts the checkout first on C{sys.path}, so that the benchmarks
measure the C{beatcop/} beside them (nodes started later import it anew).
"""

import os
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPOSITORY not in sys.path:
    sys.path.insert(0, REPOSITORY)
