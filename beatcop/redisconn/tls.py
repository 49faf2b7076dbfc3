"""
TLS for the Redis client: the certificates of a configuration, read once,
and what went wrong in a handshake, in a few words.  pyOpenSSL and
service_identity are imported only here, and only with TLS configured.
"""

def _isTLSFailure(reason):
    if reason is None:
        return False
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - TLS not installed
        return False
    try:
        from service_identity.exceptions import VerificationError
    except ImportError:  # pragma: no cover
        VerificationError = SSL.Error
    return reason.check(SSL.Error, VerificationError) is not None


def _describeTLSFailure(reason):
    """
    What went wrong in a TLS handshake, in a few words.
    """
    value = reason.value
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover
        SSL = None
    if SSL is not None and isinstance(value, SSL.Error):
        details = []
        for entry in value.args[0] if value.args and isinstance(value.args[0], list) else []:
            if isinstance(entry, tuple) and entry:
                details.append(str(entry[-1]))
        text = "; ".join(d for d in details if d) or str(value) or "handshake failed"
        if "certificate required" in text or "bad certificate" in text or "unknown ca" in text:
            text += " (Redis refused our client certificate, or wants one: see tls_cert_file and tls_key_file)"
        elif "certificate verify failed" in text:
            text += " (Redis's certificate is not signed by a trusted CA: see tls_ca_file)"
        return text
    errors = getattr(value, "errors", None)
    if errors:
        names = []
        for mismatch in errors:
            identity = getattr(mismatch, "mismatched_id", None)
            name = getattr(identity, "hostname", getattr(identity, "ip", identity))
            names.append(name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
        return (
            f"Redis's certificate does not match the name {', '.join(names)}"
            f" (see tls_server_name)"
        )
    return str(value) or reason.type.__name__


class _TLSSettings:
    """
    The certificates of a TLS configuration, read once.
    """

    def __init__(self, redisConfig):
        from twisted.internet import ssl

        self._ssl = ssl
        self.config = redisConfig
        self.trustRoot = None
        self.clientCertificate = None
        if redisConfig.tlsCaFile:
            with open(redisConfig.tlsCaFile, "rb") as f:
                certificates = [ssl.Certificate.loadPEM(block) for block in _pemBlocks(f.read(), b"CERTIFICATE")]
            self.trustRoot = ssl.trustRootFromCertificates(certificates)
        if redisConfig.tlsCertFile:
            with open(redisConfig.tlsCertFile, "rb") as f:
                data = f.read()
            if redisConfig.tlsKeyFile and redisConfig.tlsKeyFile != redisConfig.tlsCertFile:
                with open(redisConfig.tlsKeyFile, "rb") as f:
                    data += b"\n" + f.read()
            self.clientCertificate = ssl.PrivateCertificate.loadPEM(data)

    def creatorFor(self, host):
        ssl = self._ssl
        if not self.config.tlsVerify:
            options = {}
            if self.clientCertificate is not None:
                options = dict(
                    privateKey=self.clientCertificate.privateKey.original,
                    certificate=self.clientCertificate.original,
                )
            return ssl.CertificateOptions(verify=False, **options)
        return ssl.optionsForClientTLS(
            self.config.tlsServerName or host,
            trustRoot=self.trustRoot,
            clientCertificate=self.clientCertificate,
        )


def _pemBlocks(data, kind):
    """
    The PEM blocks of one kind (e.g. C{b"CERTIFICATE"}) in C{data}.
    """
    begin, end = b"-----BEGIN " + kind + b"-----", b"-----END " + kind + b"-----"
    blocks = []
    position = 0
    while True:
        start = data.find(begin, position)
        if start == -1:
            return blocks
        stop = data.find(end, start)
        if stop == -1:
            return blocks
        position = stop + len(end)
        blocks.append(data[start:position] + b"\n")
