"""
Redis addresses as written in a configuration: C{url} (every scheme),
C{host:port} words, port numbers; and a URL quoted in a message without its
password.
"""

import re
import urllib.parse

from .model import DEFAULT_REDIS_PORT, DEFAULT_SENTINEL_PORT


_DIGITS = re.compile(r"[0-9]+\Z")


_NEGATIVE = re.compile(r"-[0-9]+\Z")


def _parsePort(text, fail):
    if not _DIGITS.match(text) or len(text) > 5 or not 1 <= int(text) <= 65535:
        fail(f"not a port number (1 to 65535): {text!r}")
    return int(text)


def _redactUrl(url):
    """
    The URL with any password (and anything that could be one) replaced, so
    that it can be quoted in a message.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    userInfo, _, hostPart = rest.rpartition("@")
    user, colon, _ = userInfo.partition(":")
    redacted = f"{user}:***" if colon else "***"
    return f"{scheme}://{redacted}@{hostPart}"


def _splitHostPort(word, defaultPort):
    """
    C{(host, port)} from C{host}, C{host:port}, C{[v6]} or C{[v6]:port};
    L{None} if it is none of those.
    """
    if word.startswith("["):
        host, bracket, rest = word[1:].partition("]")
        if not bracket or not host:
            return None
        if not rest:
            return host, defaultPort
        if not rest.startswith(":"):
            return None
        portText = rest[1:]
    else:
        host, colon, portText = word.rpartition(":")
        if not colon:
            host, portText = word, None
        if ":" in host:
            return None
    if not host or any(character.isspace() for character in host):
        return None
    if portText is None:
        return host, defaultPort
    if not _DIGITS.match(portText) or len(portText) > 5 or not 1 <= int(portText) <= 65535:
        return None
    return host, int(portText)


_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://...,"
    " redis+cluster://host:port,host:port,..., redis+sentinel://host[:port],.../service[/db],"
    " unix:///path?db=N, or embedded"
)


_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def _readUrl(reader):
    """
    The parts of a [redis] url as L{RedisConfig} keyword arguments, checking
    that the keys the URL already says are not also given separately.
    """
    url = reader.text("redis", "url")
    shown = repr(_redactUrl(url))

    def fail(problem):
        reader.fail("redis", "url", f"{problem}: {shown}")

    for key in ("port", "database"):
        if reader.given("redis", key):
            reader.fail("redis", key, "conflicts with url (the URL gives it)")

    if url.lower() == "embedded":
        for key in ("username", "password", "password_env", "password_file"):
            if reader.given("redis", key):
                reader.fail("redis", key, "not used with url = embedded")
        return dict(embedded=True)

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        fail("not a URL")
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix") + _CLUSTER_SCHEMES + _SENTINEL_SCHEMES:
        fail(f"not a Redis URL (use {_URL_FORMS})")
    if parts.fragment:
        fail("unexpected #fragment")

    settings = {}
    userInfo, at, hostPort = parts.netloc.rpartition("@")
    if at:
        # As redis-py reads it: "user@" is a user name, ":secret@" a
        # password for the default user.
        user, _, password = userInfo.partition(":")
        user = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(password) or None
        for key, value in (("username", user), ("password", password)):
            if value is not None:
                if reader.given("redis", key):
                    reader.fail(
                        "redis", key, "conflicts with url (the URL gives it)"
                    )
                settings[key] = value

    query = _readUrlQuery(parts.query, fail)
    if scheme in _CLUSTER_SCHEMES + _SENTINEL_SCHEMES:
        sentinel = scheme in _SENTINEL_SCHEMES
        defaultPort = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_REDIS_PORT
        nodes = []
        for word in hostPort.split(","):
            node = _splitHostPort(urllib.parse.unquote(word.strip()), defaultPort)
            if node is None:
                fail(f"{word.strip()!r} is not a host[:port] (port 1 to 65535)")
            nodes.append(node)
        tls = scheme.startswith("rediss")
        segments = [urllib.parse.unquote(part) for part in parts.path.split("/") if part]
        if not sentinel:
            if segments not in ([], ["0"]) or query.get("db", 0) != 0:
                fail("Redis Cluster has only database 0")
            settings.update(startupNodes=tuple(nodes), tls=tls)
            return settings
        if len(segments) > 2:
            fail("the path must be /service_name[/db]")
        database = 0
        if len(segments) == 2:
            if not _DIGITS.match(segments[1]) or len(segments[1]) > 10:
                fail("the database must be a number (0 or more)")
            if "db" in query:
                fail("gives the database twice")
            database = int(segments[1])
        settings.update(
            sentinels=tuple(nodes),
            serviceName=segments[0] if segments else None,
            database=query.get("db", database),
            tls=tls,
        )
        return settings
    if scheme == "unix":
        if hostPort:
            fail("a unix URL names no host; write unix:///path/to/socket")
        path = urllib.parse.unquote(parts.path)
        if not path or path == "/":
            fail("no socket path")
        settings.update(unixSocket=path, database=query.get("db", 0))
        return settings

    if not parts.hostname:
        fail("no host")
    try:
        port = parts.port
    except ValueError:
        fail("not a port number (1 to 65535)")
    if port is None:
        port = DEFAULT_REDIS_PORT
    elif not 1 <= port <= 65535:
        fail("not a port number (1 to 65535)")
    path = parts.path.strip("/")
    database = 0
    if path:
        if not _DIGITS.match(path) or len(path) > 10:
            fail("the path must be a database number (0 or more)")
        database = int(path)
        if "db" in query:
            fail("gives the database twice")
    database = query.get("db", database)
    settings.update(
        host=parts.hostname, port=port, database=database, tls=scheme == "rediss"
    )
    return settings


def _readUrlQuery(query, fail):
    """
    The database a URL's C{?db=N} (or C{?database=N}) names, as
    C{{"db": N}}; anything else in the query is a mistake.
    """
    result = {}
    if not query:
        return result
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name not in ("db", "database"):
            fail(f"unknown URL parameter {name!r}")
        if "db" in result:
            fail("gives the database twice")
        if not _DIGITS.match(value) or len(value) > 10:
            fail("the database must be a number (0 or more)")
        result["db"] = int(value)
    return result
