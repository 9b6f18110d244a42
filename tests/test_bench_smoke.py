"""The benchmark harness works end to end on tiny settings (issue 5).

Checks that every part produces well-formed numbers; never how fast anything is:
timings on a shared 2-core CI machine mean nothing, the harness's job is to measure.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.analysis import best_lag, log_envelope  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_envelope_lag_finds_a_known_delay() -> None:
    rng = np.random.default_rng(1)
    burst = rng.normal(0, 3000, 4000) * np.hanning(4000)
    sent = np.concatenate([np.zeros(800), burst, np.zeros(3000)])
    heard = np.concatenate([np.zeros(8 * 37), sent])[: len(sent)]  # 37 ms late
    lag, corr = best_lag(log_envelope(sent), np.concatenate([log_envelope(heard), np.zeros(200)]))
    assert lag == 37 and corr > 0.95


def test_codec_and_setup_parts_give_numbers() -> None:
    from bench.codec import run_codec
    from bench.setup_time import run_setup

    codec = run_codec(frames=100, repeats=2)
    for value in [*codec["ours"].values(), *codec["pipecat"].values(), codec["ratio_in"], codec["ratio_out"]]:
        assert _number(value) and value > 0
    setup = run_setup(builds=3, pipecat_builds=1)
    assert set(setup) == {"echo.yaml", "loopback-vad.yaml", "pipecat"}
    for part in setup.values():
        assert all(_number(part[k]) and part[k] >= 0 for k in ("first_build_ms", "p50_ms", "p99_ms"))


def test_load_points_against_both_servers_are_well_formed(tmp_path: Path) -> None:
    from bench.__main__ import server_spec
    from bench.load import run_point
    from worktree_guard import changes, snapshot

    before = snapshot()
    for name in ("ours", "pipecat"):
        point = run_point(server_spec(name, None), 2, 2.0, ramp=0.2, log_dir=tmp_path, quiet_wait=0.0)
        assert point["server"] == name and point["calls"] == 2
        assert point["completed_calls"] == 2, point.get("error_examples")
        assert 0.0 < point["completeness"] <= 1.01
        for key in ("cpu_ms_per_call_s", "latency_p50_ms", "latency_p99_ms", "worst_gap_p99_ms", "rss_per_call_mb",
                    "caller_cpu_ms_per_call_s", "machine_cpu_busy", "call_seconds"):
            assert _number(point[key]), (key, point[key])
        assert point["cpu_ms_per_call_s"] > 0 and point["call_seconds"] > 2.0
        assert point["latency_p50_ms"] <= point["latency_p99_ms"]
        assert isinstance(point["errors"], int) and isinstance(point["passes"], bool)
    at_top = [path for path in changes(before, snapshot()) if "/" not in path]  # a server's working directory
    assert at_top == [], "the servers wrote into the repo root (their call records)"


def test_barge_in_and_report(tmp_path: Path) -> None:
    from bench.barge_in import run_barge_in
    from bench.report import plot, table, write_json

    barge = run_barge_in(calls=1, rounds=1, log_dir=tmp_path)
    assert barge["barge_ins"] == 1 and barge["failed_calls"] == []
    assert barge["clears"] + barge["missed"] >= 1
    if barge["clears"]:
        assert _number(barge["clear_p50_ms"]) and barge["clear_p50_ms"] >= 0
    assert isinstance(barge["stale_bytes_after_clear"], int)

    load = {"seconds_per_call": 2.0, "latency_limit_ms": 60.0, "completeness_limit": 0.99,
            "max_calls_within_limits": {"ours": 1},
            "points": [{"server": s, "calls": 1, "latency_p50_ms": 20.0, "latency_p99_ms": 23.0,
                        "cpu_ms_per_call_s": 10.0, "caller_cpu_ms_per_call_s": 5.0, "passes": True}
                       for s in ("ours", "pipecat")]}
    results = {"meta": {"date": "now", "cpus": 2}, "barge_in": barge, "load": load}
    text = table(results)
    assert "Barge-in" in text and "ours" in text
    write_json(results, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["load"]["points"][0]["server"] == "ours"
    why_not = plot(results, tmp_path / "r.png")
    assert why_not is None and (tmp_path / "r.png").stat().st_size > 1000 or "matplotlib" in (why_not or "")


def test_reloads_part_gives_numbers(tmp_path: Path) -> None:
    from bench.reloads import run_reloads
    from bench.report import table

    result = run_reloads(calls=3, edits=2, reloads=2, log_dir=tmp_path, workers=1)
    assert result["calls"] == 3 and result["dropped_calls"] == 0, result["per_call"]
    assert [e["refused"] for e in result["edits"]] == [False, True]
    assert result["completeness"] == 1.0 and result["calls_hearing_a_wrong_key"] == 0
    for key in ("reload_p50_ms", "reload_p95_ms", "refusal_p50_ms", "caller_loop_lag_max_ms"):
        assert _number(result[key]) and result[key] >= 0, (key, result[key])
    memory = result["memory"]
    assert memory["reloads"] == 2 and all(_number(memory[k]) and memory[k] > 0
                                          for k in ("rss_before_mb", "rss_after_mb", "reload_p50_ms"))
    assert "7. Live edits: 3 echo-line calls through 2 edits" in table({"meta": {}, "reloads": result})
