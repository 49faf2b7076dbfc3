"""
What C{/proc} says about the nodes: CPU time and RSS, the process tree, and
which of a process's sockets are connections to Redis (to attribute each
command a C{MONITOR} sees to a node).
"""

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _statFields(pid):
    """
    The fields of /proc/PID/stat after the command name (state first), or
    None if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def cpuSeconds(pid):
    """
    CPU time used by all threads of a process so far: from schedstat
    (nanoseconds) where the kernel has it, else utime + stime (clock ticks,
    10 ms, too coarse for an idle standby over a short window).
    """
    total, found = 0, False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
                found = True
        except (OSError, ValueError, IndexError):
            pass
    if found:
        return total / 1e9
    fields = _statFields(pid)
    if fields is None:
        return None
    # utime and stime are fields 14 and 15 of stat, 12th and 13th after the name.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rssBytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return 0


def parentMap():
    """
    pid -> parent pid, for every process.
    """
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _statFields(name)
            if fields is not None:
                parents[int(name)] = int(fields[1])
    return parents


def childrenOf(pid, parents):
    return [child for child, parent in parents.items() if parent == pid]


def descendantsOf(pid, parents):
    found, todo = [], [pid]
    while todo:
        for child in childrenOf(todo.pop(), parents):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def redisClientSockets(redisPort):
    """
    inode -> local port of every established TCP connection to
    127.0.0.1:redisPort (the client side).
    """
    remote = f"0100007F:{redisPort:04X}"
    found = {}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[2] == remote and parts[3] == "01":
                    found[int(parts[9])] = int(parts[1].split(":")[1], 16)
    except OSError:
        pass
    return found


def socketInodes(pid):
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def redisPortsByPid(pids, redisPort):
    """
    pid -> local ports of its connections to Redis.
    """
    sockets = redisClientSockets(redisPort)
    result = {}
    for pid in pids:
        result[pid] = sorted(sockets[i] for i in socketInodes(pid) if i in sockets)
    return result
