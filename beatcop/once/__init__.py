"""
C{beatcop once}: one-shot jobs (cron jobs, deploy steps) on many hosts, each
firing done by exactly one of them.

The modules, from the bottom up:

  - L{model}: what an invocation knows and says (options, what an
    attempt found, the outcome, the words of each decision), without
    Twisted;
  - L{peek}: the first look at the lock, with the standard library alone
    (one read-only script), which answers the invocations that skip
    before Twisted is loaded;
  - L{lock}: the job's lock, the node's lease whose attempts and releases
    are the one-shot scripts of L{beatcop.protocol} (the hold, the job's
    record);
  - L{job}: one invocation, a node (L{beatcop.service.BeatCopService}) and
    the state machine that decides (run, skip, wait, kill at the hold's
    end);
  - L{textfile}: the metrics file (node_exporter's textfile format);
  - L{tool}: the command line (options, log lines, signals, exit code).
"""
