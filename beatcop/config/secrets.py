"""
Secrets and TLS in C{[redis]}: passwords given directly, by environment
variable or by file (which others should not read), ACL user names, and the
TLS files (readable, PEM, the key matching the certificate).
"""

import os

from .model import _ENVIRONMENT_NAME


def _checkUsername(reader, key, username, password):
    if username is not None and password is None:
        reader.fail(
            "redis",
            key,
            "needs a password too (Redis AUTH takes a user name and a password)",
        )


def _readSecret(reader, key, fromUrl):
    """
    A password given as C{key}, C{key_env} (the name of an environment
    variable holding it) or C{key_file} (a file holding it), or in the URL.

    @return: C{(password or None, name of the environment variable or
        None)}.
    """
    keys = [
        name
        for name in (key, f"{key}_env", f"{key}_file")
        if reader.given("redis", name)
    ]
    if fromUrl is not None and keys:
        reader.fail("redis", keys[0], "conflicts with url (the URL gives the password)")
    if len(keys) > 1:
        reader.fail(
            "redis",
            keys[0],
            f"conflicts with {' and '.join(keys[1:])}; give the password one way",
        )
    if not keys:
        return fromUrl, None
    (given,) = keys
    if given == key:
        return reader.text("redis", key), None
    if given.endswith("_env"):
        name = reader.text("redis", given)
        if not _ENVIRONMENT_NAME.match(name):
            reader.fail(
                "redis", given, f"not an environment variable name: {name!r}"
            )
        value = os.environ.get(name)
        if value is None:
            reader.fail("redis", given, f"the environment variable {name} is not set")
        if not value:
            reader.fail("redis", given, f"the environment variable {name} is empty")
        return value, name
    path = reader.path("redis", given)
    try:
        with open(path, "rb") as secretFile:
            data = secretFile.read()
            mode = os.fstat(secretFile.fileno()).st_mode
    except OSError as error:
        reader.fail(
            "redis", given, f"cannot read {path!r}: {error.strerror or error}"
        )
    if mode & 0o077:
        # As ssh says of a private key: anyone who can read it is Redis's
        # client, and so decides which node runs the command.
        reader.warn(
            "redis",
            given,
            f"{path!r} is open to users other than its owner (mode {mode & 0o777:04o}): chmod 600 it",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        reader.fail("redis", given, f"{path!r} is not UTF-8 text")
    # Only the line end that editors and `echo` add: a password may start or
    # end with spaces.
    text = text.rstrip("\r\n")
    if not text:
        reader.fail("redis", given, f"{path!r} is empty")
    if "\n" in text or "\r" in text:
        reader.fail("redis", given, f"{path!r} has more than one line")
    return text, None


_TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify", "tls_server_name")


def _readTlsSettings(reader, settings, location):
    if reader.given("redis", "tls"):
        if location == "url":
            reader.fail(
                "redis", "tls", "conflicts with url (a rediss:// URL means TLS)"
            )
        if settings.get("embedded"):
            reader.fail("redis", "tls", "not used with url = embedded")
        settings["tls"] = reader.boolean("redis", "tls", False)
        if settings["tls"] and settings.get("unixSocket"):
            reader.fail("redis", "tls", "not with a unix socket")
    if not settings.get("tls"):
        for key in _TLS_KEYS:
            if reader.given("redis", key):
                reader.fail(
                    "redis", key, "only used with TLS (url = rediss://..., or tls = yes)"
                )
        return
    try:
        import OpenSSL  # noqa: F401 (Twisted's TLS)
        import service_identity  # noqa: F401 (Twisted needs it to check names)
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        reader.fail(
            "redis",
            "tls" if location != "url" else "url",
            "TLS needs pyOpenSSL and service_identity: pip install 'beatcop[tls]'",
        )

    def pem(key, kind):
        path = reader.path("redis", key)
        if path is None:
            return None, b""
        try:
            with open(path, "rb") as pemFile:
                data = pemFile.read()
        except OSError as error:
            reader.fail("redis", key, f"cannot read {path!r}: {error.strerror or error}")
        if f"-----BEGIN {kind}".encode() not in data:
            reader.fail("redis", key, f"{path!r} holds no PEM {kind.lower() or 'key'}")
        return path, data

    def certificate(key, path, data):
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError:
            reader.fail("redis", key, f"{path!r}: not a valid PEM certificate")

    caFile, caData = pem("tls_ca_file", "CERTIFICATE")
    if caFile is not None:
        certificate("tls_ca_file", caFile, caData)
    certFile, certData = pem("tls_cert_file", "CERTIFICATE")
    keyFile, keyData = (None, b"")
    if reader.given("redis", "tls_key_file"):
        if certFile is None:
            reader.fail("redis", "tls_key_file", "needs tls_cert_file too")
        keyFile, keyData = pem("tls_key_file", "")
    if certFile is not None:
        keyKey = "tls_key_file" if keyFile else "tls_cert_file"
        publicKey = certificate("tls_cert_file", certFile, certData).public_key()
        try:
            privateKey = serialization.load_pem_private_key(keyData or certData, password=None)
        except (ValueError, TypeError):
            reader.fail(
                "redis",
                keyKey,
                f"{keyFile or certFile!r}: no readable unencrypted PEM private key"
                + ("" if keyFile else " (give it in tls_key_file)"),
            )

        def spki(key):
            return key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )

        if spki(privateKey.public_key()) != spki(publicKey):
            reader.fail("redis", keyKey, "the private key does not belong to the certificate")
    verify = reader.boolean("redis", "tls_verify", True)
    if not verify:
        reader.warn(
            "redis",
            "tls_verify",
            "certificates are not verified: anyone on the way to Redis can pose as it",
        )
    serverName = reader.text("redis", "tls_server_name")
    if serverName is not None and any(c.isspace() or c == "/" for c in serverName):
        reader.fail("redis", "tls_server_name", f"not a host name: {serverName!r}")
    settings.update(
        tlsCaFile=caFile,
        tlsCertFile=certFile,
        tlsKeyFile=keyFile,
        tlsVerify=verify,
        tlsServerName=serverName,
    )
