"""
The guard's TLS (L{beatcop.guardrelease}) accepts what the node accepts: a
real handshake on a local socket, with the test CA (made without an
Authority Key Identifier, as many private CAs are), on every Python.  On
3.13 the standard library's default context is X509_STRICT and refused it
while the node connected: the guard could not release a dead node's lease
(tox py313's failure).  No Redis; the server side is Python's own C{ssl}.
"""

import socket
import ssl
import threading

import pytest

from beatcop import guardrelease
from beatcop.testing.topologies import Certificates

TIMEOUT = 10.0


@pytest.fixture
def certificates(tmp_path):
    return Certificates(str(tmp_path))


def handshake(certificates, tls):
    """
    Connect to a local TLS server that requires a client certificate, with
    the guard's context for C{tls}; the server's outcome (C{"ok"} or the
    error) and the client's (the same).
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificates.serverCert, certificates.serverKey)
    server.load_verify_locations(certificates.caCert)
    server.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    outcome = {}

    def serve():
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server.wrap_socket(conn, server_side=True) as wrapped:
                # The handshake is done (the client's certificate checked):
                # one byte says so, so that the client closes only after
                # reading what the server sent (TLS 1.3's session tickets
                # too; closing with them unread would reset the connection).
                wrapped.sendall(b"+")
                outcome["server"] = "ok"
                try:
                    wrapped.recv(1)
                except (OSError, ssl.SSLError):
                    pass
        except (OSError, ssl.SSLError) as e:
            outcome["server"] = e

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        sock = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        try:
            wrapped = guardrelease._wrap(sock, "127.0.0.1", tls)
            outcome["client"] = "ok" if wrapped.recv(1) == b"+" else "no byte from the server"
            wrapped.close()
        except (OSError, ssl.SSLError) as e:
            sock.close()
            outcome["client"] = e
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the server's handshake did not end"
    finally:
        listener.close()
    return outcome


def test_a_ca_without_an_authority_key_identifier_is_accepted(certificates):
    outcome = handshake(certificates, {
        "ca": certificates.caCert, "cert": certificates.clientCert, "key": certificates.clientKey,
    })
    assert outcome == {"server": "ok", "client": "ok"}


def test_verification_still_refuses_another_ca(certificates):
    outcome = handshake(certificates, {
        "ca": certificates.otherCaCert, "cert": certificates.clientCert, "key": certificates.clientKey,
    })
    assert isinstance(outcome["client"], ssl.SSLCertVerificationError), outcome


def test_verification_still_checks_the_host_name(certificates):
    outcome = handshake(certificates, {
        "ca": certificates.caCert, "cert": certificates.clientCert, "key": certificates.clientKey,
        "server_name": "elsewhere.test",
    })
    assert isinstance(outcome["client"], ssl.SSLCertVerificationError), outcome
    assert "elsewhere.test" in str(outcome["client"])
