"""
C{[redis]}: which Redis topology the lock lives in (one server over TCP or
a unix socket, Redis Cluster seeds, Sentinel, a proxy, the embedded one),
with its replication and proxy settings, checked into a L{RedisConfig}.
"""

import re

from .model import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SENTINEL_PORT,
    MAXIMUM_REPLICAS,
    RedisConfig,
    defaultReplyTimeout,
)
from .secrets import _checkUsername, _readSecret, _readTlsSettings
from .url import _DIGITS, _parsePort, _readUrl, _splitHostPort


_LOCATIONS = ("url", "host", "startup_nodes", "sentinels")


_LOCATION_WORDS = "url, host, startup_nodes or sentinels"


def _readRedis(reader, ttl):
    locations = [key for key in _LOCATIONS if reader.given("redis", key)]
    if not locations:
        reader.fail("redis", None, f"no Redis given; set one of {_LOCATION_WORDS}")
    if len(locations) > 1:
        reader.fail(
            "redis",
            locations[0],
            f"conflicts with {' and '.join(locations[1:])};"
            f" give exactly one of {_LOCATION_WORDS}",
        )

    connectTimeout = reader.milliseconds(
        "redis", "connect_timeout", DEFAULT_CONNECT_TIMEOUT
    )
    replyTimeout = reader.milliseconds(
        "redis", "reply_timeout", defaultReplyTimeout(ttl)
    )
    settings = dict(
        username=reader.text("redis", "username"),
        connectTimeout=connectTimeout,
        replyTimeout=replyTimeout,
    )

    (location,) = locations
    if location == "url":
        settings.update(_readUrl(reader))
    elif location == "host":
        host = reader.text("redis", "host")
        if "://" in host:
            reader.fail("redis", "host", "looks like a URL; write it as url = ...")
        if "/" in host:
            # BeatCop 1.0: a host containing "/" is a unix socket path.
            if reader.given("redis", "port"):
                reader.warn("redis", "port", "ignored with a unix socket host")
            settings.update(
                unixSocket=host, database=reader.database("redis", "database")
            )
        else:
            if any(character.isspace() for character in host):
                reader.fail("redis", "host", f"not a host name: {host!r}")
            settings.update(
                host=host,
                port=reader.port("redis", "port"),
                database=reader.database("redis", "database"),
            )
    elif location == "startup_nodes":
        settings.update(startupNodes=_readNodes(reader, "startup_nodes"))
        for key, reason in (
            ("port", "each seed node gives its own port"),
            ("database", "Redis Cluster has only database 0"),
        ):
            if reader.given("redis", key):
                reader.warn("redis", key, f"ignored with startup_nodes ({reason})")
    else:
        settings.update(
            sentinels=_readNodes(reader, "sentinels", DEFAULT_SENTINEL_PORT),
            database=reader.database("redis", "database"),
        )
        if reader.given("redis", "port"):
            reader.warn(
                "redis", "port", "ignored with sentinels (the sentinels name the master)"
            )

    secrets = []
    password, secretName = _readSecret(reader, "password", settings.get("password"))
    settings["password"] = password
    if secretName is not None:
        secrets.append(secretName)
    _checkUsername(reader, "username", settings["username"], password)

    _readSentinelSettings(reader, settings, secrets)
    _readTlsSettings(reader, settings, location)
    _readReplicationSettings(reader, settings)
    _readProxySetting(reader, settings, location)
    if reader.boolean("redis", "allow_eviction", False):
        settings["allowEviction"] = True
    settings["secretEnvironment"] = tuple(secrets)
    return RedisConfig(**settings)


_SENTINEL_KEYS = (
    "service_name",
    "sentinel_username",
    "sentinel_password",
    "sentinel_password_env",
    "sentinel_password_file",
)


def _readSentinelSettings(reader, settings, secrets):
    if not settings.get("sentinels"):
        for key in _SENTINEL_KEYS:
            if reader.given("redis", key):
                reader.fail(
                    "redis",
                    key,
                    "only used with Redis Sentinel"
                    " (sentinels = ..., or url = redis+sentinel://...)",
                )
        return
    serviceName = reader.text("redis", "service_name")
    if serviceName is not None and settings.get("serviceName"):
        reader.fail(
            "redis", "service_name", "conflicts with url (the URL gives the service name)"
        )
    serviceName = serviceName or settings.get("serviceName")
    if not serviceName:
        reader.fail(
            "redis",
            "service_name",
            "missing: give the name Sentinel knows the master by (e.g. mymaster)",
        )
    if any(character.isspace() for character in serviceName):
        reader.fail("redis", "service_name", f"not a service name: {serviceName!r}")
    username = reader.text("redis", "sentinel_username")
    password, secretName = _readSecret(reader, "sentinel_password", None)
    if secretName is not None:
        secrets.append(secretName)
    _checkUsername(reader, "sentinel_username", username, password)
    settings.update(
        serviceName=serviceName, sentinelUsername=username, sentinelPassword=password
    )


def _readReplicationSettings(reader, settings):
    text = reader.text("redis", "wait_replicas")
    waitReplicas = 0
    if text is not None:
        if not _DIGITS.match(text) or len(text) > 4 or int(text) > MAXIMUM_REPLICAS:
            reader.fail(
                "redis",
                "wait_replicas",
                f"not a number of replicas (0 to {MAXIMUM_REPLICAS}): {text!r}",
            )
        waitReplicas = int(text)
    if not waitReplicas:
        if reader.given("redis", "wait_timeout"):
            reader.fail("redis", "wait_timeout", "only used with wait_replicas")
        return
    if settings.get("embedded"):
        reader.fail("redis", "wait_replicas", "the embedded Redis has no replicas")
    replyTimeout = settings["replyTimeout"]
    waitTimeout = reader.milliseconds(
        "redis", "wait_timeout", max(1, replyTimeout // 2)
    )
    if waitTimeout >= replyTimeout:
        reader.fail(
            "redis",
            "wait_timeout",
            f"{waitTimeout} ms must be less than reply_timeout ({replyTimeout} ms):"
            f" the WAIT is answered within the reply timeout",
        )
    settings.update(waitReplicas=waitReplicas, waitTimeout=waitTimeout)


def _readProxySetting(reader, settings, location):
    proxy = reader.boolean("redis", "proxy", False)
    if not proxy:
        return
    if settings.get("startupNodes") or settings.get("sentinels"):
        reader.fail(
            "redis",
            "proxy",
            "a proxy is one address: give it with url or host, not with"
            " Redis Cluster seeds or sentinels",
        )
    if settings.get("embedded"):
        reader.fail("redis", "proxy", "not used with url = embedded")
    if settings.get("waitReplicas"):
        reader.fail(
            "redis", "wait_replicas", "not through a proxy (proxies do not pass WAIT on)"
        )
    settings["proxy"] = True


def _readNodes(reader, key, defaultPort=None):
    """
    A list of C{host:port} (C{startup_nodes}) or C{host[:port]}
    (C{sentinels}, whose port defaults to C{defaultPort}).
    """
    text = reader.text("redis", key)
    what = "seed node" if key == "startup_nodes" else "sentinel"
    nodes = []
    for word in re.split(r"[\s,]+", text):
        if not word:
            continue
        if defaultPort is None:
            host, colon, portText = word.rpartition(":")
            host = host.strip("[]") if host.startswith("[") else host
            if not colon or not host:
                reader.fail("redis", key, f"not a host:port {what}: {word!r}")
            port = _parsePort(
                portText,
                lambda problem: reader.fail("redis", key, f"{what} {word!r}: {problem}"),
            )
            nodes.append((host, port))
            continue
        node = _splitHostPort(word, defaultPort)
        if node is None:
            reader.fail(
                "redis", key, f"not a host[:port] {what} (port 1 to 65535): {word!r}"
            )
        nodes.append(node)
    if not nodes:
        reader.fail("redis", key, f"no {what}s given")
    return tuple(nodes)
