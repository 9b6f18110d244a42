"""The benchmark's outputs: a table for the terminal, JSON, and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return fmt.format(x)
    return str(x)


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "—"


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    meta = results.get("meta", {})
    lines.append(f"voice-bridge bench — {meta.get('date', '')} — {meta.get('cpus', '?')} CPUs, "
                 f"pipecat {meta.get('pipecat', '?')}, Python {meta.get('python', '?')}")
    codec = results.get("codec")
    if codec:
        o, p = codec["ours"], codec["pipecat"]
        lines += ["", f"1. Codec path, µs per 20 ms frame (median of {codec['repeats']} × {codec['frames']} frames)",
                  f"   {'':34}{'ours codec':>12}{'ours +JSON':>12}{'pipecat':>10}{'ours/pipecat':>14}",
                  f"   {'caller→model (μ-law 8k → 16k)':34}{o['in_codec_us']:>12.2f}{o['in_wire_us']:>12.2f}"
                  f"{p['in_us']:>10.2f}{_ratio(o['in_wire_us'], p['in_us']):>14}",
                  f"   {'model→caller (24k → μ-law 8k)':34}{o['out_codec_us']:>12.2f}{o['out_wire_us']:>12.2f}"
                  f"{p['out_us']:>10.2f}{_ratio(o['out_wire_us'], p['out_us']):>14}"]
    load = results.get("load")
    if load:
        lines += ["", f"2. Load: {load['seconds_per_call']:g} s calls of human speech, callers in "
                      f"separate processes (all on this machine: caller CPU shown)",
                  "   " + "".join(f"{h:>{w}}" for h, w in LOAD_COLUMNS)]
        for p in load["points"]:
            lines.append("   " + "".join(f"{_f(p.get(k), fmt):>{w}}" for (h, w), (k, fmt) in zip(LOAD_COLUMNS, LOAD_KEYS)))
        best = load.get("max_calls_within_limits", {})
        lines.append(f"   largest N with p99 added latency ≤ {load['latency_limit_ms']:g} ms and completeness ≥ "
                     f"{load['completeness_limit']:g} (of those run): "
                     + ", ".join(f"{k} {_f(v, '{}')}" for k, v in best.items()))
        goal = load.get("max_calls_meeting_goal")
        if goal is not None:
            lines.append(f"   largest N meeting the goal (p99 ≤ {load['goal_latency_ms']:g} ms, completeness 1.0000, "
                         "no errors): " + ", ".join(f"{k} {_f(v, '{}')}" for k, v in goal.items()))
        lines.append("   (added latency includes the simulated Twilio's 20 ms playback tick: 20 ms is the floor; "
                     "cores = server CPU; other = busy cores used by neither server nor callers)")
    barge = results.get("barge_in")
    if barge:
        lines += ["", f"3. Barge-in ({barge['chain']}, start_secs {barge['start_secs']}): "
                      f"{barge['clears']}/{barge['barge_ins']} cleared, missed {barge['missed']}, "
                      f"extra {barge['extra_clears']}",
                  f"   speech onset → clear: p50 {_f(barge['clear_p50_ms'], '{:.0f}')} ms, p95 "
                  f"{_f(barge['clear_p95_ms'], '{:.0f}')} ms, max {_f(barge['clear_max_ms'], '{:.0f}')} ms "
                  f"(goal ≤ {_f(barge['goal_ms'], '{:.0f}')} ms); stale audio after clear: "
                  f"{barge['stale_bytes_after_clear']} B"]
    setup = results.get("setup")
    if setup:
        lines += ["", "4. Call setup: build one call's pipeline (ms)",
                  f"   {'':22}{'chain once':>11}{'first':>9}{'p50':>9}{'p99':>9}{'max':>9}"]
        for name, s in setup.items():
            lines.append(f"   {name:22}{_f(s.get('chain_ms'), '{:.2f}'):>11}{_f(s['first_build_ms'], '{:.2f}'):>9}"
                         f"{_f(s['p50_ms'], '{:.2f}'):>9}{_f(s['p99_ms'], '{:.2f}'):>9}{_f(s['max_ms'], '{:.2f}'):>9}")
    stages = results.get("stages")
    if stages:
        lines += ["", f"5. Where our server's time goes: {stages['calls']} calls of {stages['seconds_per_call']:g} s "
                      "on a ladder of chains (CPU ms per call-second)",
                  f"   {'chain':20}{'adds':34}{'CPU':>8}{'added':>8}{'lat p50':>9}{'MB/call':>9}"]
        for s in stages["steps"]:
            lines.append(f"   {s['chain']:20}{s['adds']:34}{_f(s['cpu_ms_per_call_s']):>8}"
                         f"{_f(s['added_ms_per_call_s']):>8}{_f(s['latency_p50_ms'], '{:.0f}'):>9}"
                         f"{_f(s['rss_per_call_mb'], '{:.2f}'):>9}")
    reloads = results.get("reloads")
    if reloads:
        lines += ["", *reloads_table(reloads)]
    return "\n".join(lines)


def reloads_table(r: dict[str, Any]) -> list[str]:
    """Live edits under load: the calls' verdict, how long edits took, memory over the reloads after."""
    memory = r.get("memory") or {}
    edits = r["edits"]
    return [
        f"7. Live edits: {r['calls']} echo-line calls through {len(edits)} edits of lines.yaml and a pipeline file "
        f"({sum(not e['good'] for e in edits)} broken), {r['workers']} worker(s)",
        f"   dropped calls {r['dropped_calls']}, calls hearing another configuration {r['calls_hearing_a_wrong_key']}, "
        f"broken configurations heard {r['broken_keys_heard'] or 'none'}; completeness {_f(r['completeness'], '{:.4f}')} "
        f"(min {_f(r['completeness_min'], '{:.4f}')}); worst gap p99 {_f(r['worst_gap_p99_ms'], '{:.0f}')} ms, "
        f"max {_f(r['worst_gap_max_ms'], '{:.0f}')} ms (callers' loop late by up to "
        f"{_f(r.get('caller_loop_lag_max_ms'), '{:.0f}')} ms)",
        f"   edit saved → new chain serving on every worker: p50 {_f(r['reload_p50_ms'], '{:.0f}')} ms, p95 "
        f"{_f(r['reload_p95_ms'], '{:.0f}')} ms; broken edit refused: p50 {_f(r['refusal_p50_ms'], '{:.0f}')} ms",
        f"   {memory.get('reloads', 0)} more reloads (no calls): server RSS {_f(memory.get('rss_before_mb'))} → "
        f"{_f(memory.get('rss_after_half_mb'))} (half-way) → {_f(memory.get('rss_after_mb'))} MB; each p50 "
        f"{_f(memory.get('reload_p50_ms'), '{:.0f}')} ms, p95 {_f(memory.get('reload_p95_ms'), '{:.0f}')} ms"
        if memory else "   (no reloads after the calls)",
    ]


LOAD_COLUMNS = [("server", 9), ("N", 5), ("CPU ms/call-s", 15), ("cores", 7), ("lat p50", 9), ("lat p99", 9),
                ("gap p99", 9), ("complete", 10), ("MB/call", 9), ("errors", 8), ("caller ms/call-s", 18),
                ("machine busy", 14), ("other", 7), ("ok", 4)]
LOAD_KEYS = [("server", "{}"), ("calls", "{}"), ("cpu_ms_per_call_s", "{:.1f}"), ("server_cpu_cores", "{:.2f}"),
             ("latency_p50_ms", "{:.0f}"), ("latency_p99_ms", "{:.0f}"), ("worst_gap_p99_ms", "{:.0f}"),
             ("completeness", "{:.4f}"), ("rss_per_call_mb", "{:.2f}"), ("errors", "{}"),
             ("caller_cpu_ms_per_call_s", "{:.1f}"), ("machine_cpu_busy", "{:.0%}"), ("other_cpu_cores", "{:.2f}"),
             ("passes", "{}")]


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Added latency and CPU vs concurrent calls, both servers. Returns why not, if it could not."""
    load = results.get("load")
    if not load or not load.get("points"):
        return "no load results to plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    colours = {"ours": "tab:blue", "pipecat": "tab:red", "ours-w2": "tab:green", "ours-w1": "tab:cyan"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for server in sorted({p["server"] for p in load["points"]}):
        pts = sorted((p for p in load["points"] if p["server"] == server), key=lambda p: p["calls"])
        n = [p["calls"] for p in pts]
        c = colours.get(server, None)
        ax1.plot(n, [p["latency_p99_ms"] for p in pts], "o-", color=c, label=f"{server} p99")
        ax1.plot(n, [p["latency_p50_ms"] for p in pts], "s--", color=c, alpha=0.6, label=f"{server} p50")
        ax2.plot(n, [p["cpu_ms_per_call_s"] for p in pts], "o-", color=c, label=f"{server} server")
        ax2.plot(n, [p["caller_cpu_ms_per_call_s"] for p in pts], "x:", color=c, alpha=0.6,
                 label=f"callers (vs {server})")
    ax1.axhline(load["latency_limit_ms"], color="grey", lw=0.8, ls=":")
    ax1.set_yscale("log")
    ax1.set_xlabel("concurrent calls")
    ax1.set_ylabel("added latency, ms (log)")
    ax1.set_title("Added latency (caller clock, 20 ms floor)")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("concurrent calls")
    ax2.set_ylabel("CPU ms per call-second")
    ax2.set_title("CPU per call-second (server process tree)")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    meta = results.get("meta", {})
    fig.suptitle(f"voice-bridge vs pipecat's Twilio path — {meta.get('cpus', '?')} CPUs, "
                 f"{load['seconds_per_call']:g} s calls — {meta.get('date', '')}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
