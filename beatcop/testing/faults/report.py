"""
What a soak found, as a result (L{summarize}: a dict, also written as JSON)
and as text (L{render}: the tables the single-server soak prints; the
replicated soak's are in L{beatcop.testing.faults.failovers}).
"""

import collections

from .kinds import KINDS

# Seconds between the history sampler's looks, and then some.
SAMPLING_SLACK = 0.05


def textTable(rows):
    """
    Rows of cells as text, each column as wide as its widest cell.
    """
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def summarize(cluster, chaos, options, verdict, elapsed):
    report = verdict.report
    byKind = collections.Counter(entry["kind"] for entry in chaos.faultLog if not entry.get("skipped"))
    skipped = collections.Counter(entry["kind"] for entry in chaos.faultLog if entry.get("skipped"))
    runsByPid = {run.pid: run for run in report.runs}

    def faultBefore(t):
        before = [entry for entry in chaos.faultLog if entry["t"] <= t and not entry.get("skipped")]
        return f"step {before[-1]['step']} {before[-1]['kind']} ({before[-1]['target']})" if before else None

    overlaps = [
        {
            "pids": [a, b],
            "nodes": [runsByPid[a].node if a in runsByPid else "?", runsByPid[b].node if b in runsByPid else "?"],
            "ms": round(seconds * 1000, 1),
            "at": round(runsByPid[b].start, 3) if b in runsByPid else None,
            "after": faultBefore(runsByPid[b].start) if b in runsByPid else None,
            "earlier_alive": {str(pid): round(t, 3) for pid, t in report.aliveAfter(
                a, runsByPid[b].start if b in runsByPid else 0).items()},
        }
        for a, b, seconds in report.overlaps
    ]
    gap = report.availabilityGap or 0.0
    gapAt = report.availabilityGapAt
    # The worst gap after each kind of fault (the last one before the gap;
    # a run killed ends, for the checker, when a sample last saw it alive,
    # which may be a few ms before the fault's entry was stamped).
    worstByKind = {}
    for counted, (a, _) in report.gaps:
        before = [entry for entry in chaos.faultLog if entry["t"] <= a + SAMPLING_SLACK and not entry.get("skipped")]
        if before:
            kind = before[-1]["kind"]
            worstByKind[kind] = max(worstByKind.get(kind, 0.0), counted)
    exits = collections.Counter(str(code) for _, _, code in verdict.exits)
    result = {
        "seed": options.seed,
        "nodes": options.nodes,
        "duration_s": options.duration,
        "elapsed_s": round(elapsed, 1),
        "ttl_ms": options.ttl,
        "faults": dict(sorted(byKind.items())),
        "worst_gap_ms_by_kind": {kind: round(seconds * 1000) for kind, seconds in sorted(worstByKind.items())},
        "longest_gaps": [
            {"ms": round(counted * 1000), "at": [round(a, 3), round(b, 3)], "after": faultBefore(a + SAMPLING_SLACK)}
            for counted, (a, b) in sorted(report.gaps, key=lambda gap: -gap[0])[:10]
        ],
        "faults_total": sum(byKind.values()),
        "skipped": dict(sorted(skipped.items())),
        "runs": len(report.runs),
        "overlaps": {
            "count": len(overlaps),
            "total_ms": round(sum(o["ms"] for o in overlaps), 1),
            "list": overlaps,
            "crowded_samples": report.crowdedSamples,
            "uncertain": [
                {"pids": [a, b], "ms_at_most": round(s * 1000, 1)} for a, b, s in report.uncertainOverlaps
            ],
        },
        "worst_gap": {
            "ms": round(gap * 1000),
            "bound_ms": round(verdict.bound * 1000),
            "ok": verdict.availabilityOk,
            "at": [round(x, 3) for x in gapAt] if gapAt else None,
            "after": faultBefore(gapAt[0]) if gapAt else None,
        },
        "fencing_violations": [
            {"earlier": {"pid": a.pid, "node": a.node, "token": a.token},
             "later": {"pid": b.pid, "node": b.node, "token": b.token},
             "after": faultBefore(b.start)}
            for a, b in report.tokenViolations
        ],
        "outlived": [
            {"pid": run.pid, "node": run.node, "node_exit": round(exitedAt, 3), "alive_until": round(end, 3)}
            for run, exitedAt, end in verdict.outlived
        ],
        "node_exits": dict(sorted(exits.items())),
        "tracebacks": verdict.tracebacks,
        "unrecovered": [{"step": e["step"], "kind": e["kind"]} for e in chaos.unrecovered],
        "harness_errors": [{"step": e["step"], "kind": e["kind"], "error": e["error"]} for e in chaos.harnessErrors],
        "fault_log": chaos.faultLog,
        "directory": cluster.directory,
    }
    result["ok"] = verdict.ok() and not chaos.unrecovered and not chaos.harnessErrors
    return result


def verdictRows(result):
    """
    The summary table's last rows: what outlived the run, node exits,
    tracebacks, faults without recovery, harness errors, and the verdict.
    """
    return [
        ("runs outliving their node", len(result["outlived"])),
        ("leftover processes after the nodes stopped", len(result.get("leftovers", []))),
        ("node exits by code", " ".join(f"{code}:{n}" for code, n in result["node_exits"].items()) or "-"),
        ("tracebacks in logs", len(result["tracebacks"])),
        ("faults without recovery", len(result["unrecovered"])),
        ("harness errors", len(result["harness_errors"])),
        ("verdict", "OK" if result["ok"] else "FAILED"),
    ]


def incidentLines(result):
    """
    The report's lines for each overlap and each token that went back.
    """
    lines = []
    for overlap in result["overlaps"]["list"]:
        lines.append(
            f"  overlap {overlap['ms']} ms: pids {overlap['pids']} on {overlap['nodes']} at {overlap['at']}"
            f", after {overlap['after']}; of the earlier run, alive after the later started: {overlap['earlier_alive']}"
        )
    for violation in result["fencing_violations"]:
        lines.append(
            f"  token went back: {violation['earlier']['token']} ({violation['earlier']['node']}) then"
            f" {violation['later']['token']} ({violation['later']['node']}), after {violation['after']}"
        )
    return lines


def setupLines(result):
    """
    The report's lines saying what the soak ran on: the server, and the
    settings given with C{--set}.
    """
    lines = []
    if result.get("server"):
        lines.append(f"server: {result['server']['version']} ({result['server']['path']})")
    if result.get("settings"):
        lines.append("settings: " + ", ".join(f"{key} = {value}" for key, value in sorted(result["settings"].items())))
    return lines


def render(result):
    rows = [("fault", "injected", "skipped", "worst gap after it (ms)")]
    byKind = result.get("worst_gap_ms_by_kind", {})
    for kind in sorted(KINDS):
        rows.append((kind, result["faults"].get(kind, 0), result["skipped"].get(kind, 0), byKind.get(kind, "-")))
    rows.append(("total", result["faults_total"], sum(result["skipped"].values()), max(byKind.values(), default="-")))
    gap = result["worst_gap"]
    summary = [
        ("check", "result"),
        ("runs of the command", result["runs"]),
        ("overlaps", f"{result['overlaps']['count']} ({result['overlaps']['total_ms']:.1f} ms in all)"),
        ("samples with two runs alive", result["overlaps"]["crowded_samples"]),
        ("possible overlaps (sampling uncertainty)", len(result["overlaps"]["uncertain"])),
        ("worst gap while Redis reachable", f"{gap['ms']} ms vs bound {gap['bound_ms']} ms"
         f" {'ok' if gap['ok'] else 'BREACHED'}" + (f", after {gap['after']}" if gap["after"] else "")),
        ("fencing violations", len(result["fencing_violations"])),
    ] + verdictRows(result)
    lines = [
        f"seed {result['seed']}, {result['nodes']} nodes, {result['elapsed_s']} s, TTL {result['ttl_ms']} ms,"
        f" containment {result.get('containment', 'auto')}, on_redis_loss {result.get('on_redis_loss', 'exit')}",
    ] + setupLines(result) + [
        "",
        textTable(rows),
        "",
        textTable(summary),
    ]
    lines += incidentLines(result)
    for run in result["outlived"]:
        lines.append(f"  run {run['pid']} of {run['node']} alive until {run['alive_until']}, node exited {run['node_exit']}")
    return "\n".join(lines)
