"""
Keeping a BeatCop process small: what it need not load.

Twisted loads pyOpenSSL, cryptography and service_identity whenever they
are importable (and txredisapi's dependency on C{twisted[tls]} makes them
so): about 12 MiB of every process, cryptography's Rust extension alone
7 MiB.  A process whose configuration has no TLS makes them unimportable
before the reactor and the node's modules are imported, and runs as Twisted
runs where they are not installed.
"""

import sys

# The TLS stack: what a node needs only for rediss://.
TLS_STACK = ("OpenSSL", "cryptography", "service_identity")


def withoutTls():
    """
    Make the TLS stack unimportable in this process, unless something loaded
    it already: Twisted then runs without TLS support, as it does where
    pyOpenSSL is not installed.  For a process whose configuration has no
    TLS, before the reactor and the node's modules are imported (the twistd
    plugin imports the node's modules in C{makeService}, after the options,
    for that; L{beatcop.redisconn.resp} gives txredisapi what it imports).
    """
    for name in TLS_STACK:
        if name not in sys.modules:
            sys.modules[name] = None


__all__ = ["withoutTls", "TLS_STACK"]
