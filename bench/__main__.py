"""``python -m bench`` / ``voice-bridge bench``: the whole benchmark in one run.

    python -m bench                       # N = 1,10,25,50,...,150 until a server collapses, 30 s calls (~20 min)
    python -m bench --quick               # small N, short calls: under 2 minutes
    python -m bench --calls 1,50 --seconds 20 --only load
    python -m bench --only cascade        # Whisper → fake Claude → Piper reply time (needs the [local] extra)
    python -m bench --only reloads        # 50 calls through 10 live edits, then 100 reloads (~2 minutes)
    python -m bench --only turns          # turn-taking on phone-line scenes, ours and pipecat (needs espeak-ng)

Writes ``bench/results/bench-<time>.json`` and ``.png`` (``--publish`` also writes the
committed copies ``bench/results-latest.json`` and ``bench/results-latest.png``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARTS = ("codec", "load", "barge-in", "setup", "stages", "cascade", "reloads", "turns")
OPT_IN = ("cascade", "turns")  # only with --only: the [local] extra; ~10 minutes of calls
DEFAULT_PARTS = ("codec", "load", "barge-in", "setup")  # --quick leaves out "stages" (six more load runs)
QUICK = {"calls": [1, 4], "seconds": 6.0, "ramp": 1.0, "codec_frames": 1000, "builds": 50, "pipecat_builds": 5,
         "barge_calls": 2, "barge_rounds": 2, "stage_calls": 4, "stage_seconds": 5.0, "quiet_wait": 5.0,
         "reload_calls": 10, "reload_edits": 4, "reloads": 20}
FULL = {"calls": [1, 10, 25, 50, 75, 100, 125, 150], "seconds": 30.0, "ramp": 2.0, "codec_frames": 5000, "builds": 300,
        "pipecat_builds": 30, "barge_calls": 5, "barge_rounds": 4, "stage_calls": 25, "stage_seconds": 20.0,
        "quiet_wait": 60.0, "reload_calls": 50, "reload_edits": 10, "reloads": 100}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N and short calls (under 2 minutes)")
    parser.add_argument("--calls", help="comma-separated concurrent call counts, e.g. 1,10,50")
    parser.add_argument("--seconds", type=float, help="length of each load call in seconds")
    parser.add_argument("--ramp", type=float, help="calls start spread over this many seconds")
    parser.add_argument("--workers", type=int, help="pass --workers N to our server (default: serve's default)")
    parser.add_argument("--servers", default="ours,pipecat",
                        help="servers to load: ours (serve's default workers, or --workers), ours-wN (N worker "
                             "processes), pipecat")
    parser.add_argument("--turn-servers", default="ours,pipecat",
                        help="--only turns: servers to compare: ours, pipecat, ours-NAME (bench/pipelines/turns-NAME.yaml)")
    parser.add_argument("--turn-repeats", type=int, default=3, help="--only turns: how many times each scene kind runs")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--calls-per-process", type=int, default=25, help="simulated calls per caller process")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where to write JSON, PNG and logs")
    parser.add_argument("--publish", action="store_true",
                        help="also write bench/results-latest.json and .png (the committed copies)")
    return parser.parse_args(argv)


def meta(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata as md

    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "pipecat": md.version("pipecat-ai"),
        "argv": sys.argv[1:],
        "quick": args.quick,
        "settings": settings,
    }


def server_spec(name: str, workers: int | None) -> Any:
    """``ours``, ``ours-w<N>`` or ``pipecat`` on a free loopback port."""
    from bench.servers import ServerSpec, free_port

    if name == "pipecat":
        return ServerSpec.pipecat(free_port())
    if name == "ours" or name.startswith("ours-w") and name[6:].isdigit():
        spec = ServerSpec.ours(ROOT / "bench" / "pipelines" / "loopback-vad.yaml", free_port(),
                               int(name[6:]) if name != "ours" else workers)
        spec.name = name
        return spec
    raise SystemExit(f"bench: unknown server {name!r} (ours, ours-wN, pipecat)")


def run_load(args: argparse.Namespace, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    from bench.load import COMPLETENESS_LIMIT, GOAL_LATENCY_MS, LATENCY_LIMIT_MS, run_point

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for name in servers:
        server_spec(name, args.workers)  # refuse a typo before the first run, not after
    collapsed: set[str] = set()
    points: list[dict[str, Any]] = []
    for n in settings["calls"]:
        for name in servers:
            if name in collapsed:
                continue
            spec = server_spec(name, args.workers)
            print(f"  load: {name} with {n} calls of {settings['seconds']:g} s …", file=sys.stderr, flush=True)
            try:
                point = run_point(spec, n, settings["seconds"], ramp=settings["ramp"], log_dir=out / "logs",
                                  calls_per_process=args.calls_per_process, quiet_wait=settings["quiet_wait"])
            except Exception as exc:  # one broken point must not lose the others
                point = {"server": name, "calls": n, "errors": n, "error_examples": [f"{type(exc).__name__}: {exc}"],
                         "passes": False, "collapsed": True}
            points.append(point)
            print(f"    p99 {point.get('latency_p99_ms')} ms, CPU {point.get('cpu_ms_per_call_s')} ms/call-s, "
                  f"completeness {point.get('completeness')}, errors {point.get('errors')}", file=sys.stderr, flush=True)
            if point.get("collapsed"):
                collapsed.add(name)
                print(f"    {name} collapsed at {n} calls: not going higher", file=sys.stderr)
    best, goal = {}, {}
    for name in servers:
        best[name] = max((p["calls"] for p in points if p["server"] == name and p.get("passes")), default=None)
        goal[name] = max((p["calls"] for p in points if p["server"] == name and p.get("meets_goal")), default=None)
    return {"seconds_per_call": settings["seconds"], "ramp_s": settings["ramp"], "latency_limit_ms": LATENCY_LIMIT_MS,
            "completeness_limit": COMPLETENESS_LIMIT, "our_workers": args.workers, "points": points,
            "max_calls_within_limits": best, "max_calls_meeting_goal": goal, "goal_latency_ms": GOAL_LATENCY_MS,
            "collapsed": sorted(collapsed)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from loguru import logger

    logger.remove()  # pipecat logs at DEBUG by default; the harness prints its own table
    logger.add(sys.stderr, level="WARNING")

    settings = dict(QUICK if args.quick else FULL)
    if args.calls:
        settings["calls"] = [int(x) for x in args.calls.split(",") if x.strip()]
    if args.seconds:
        settings["seconds"] = args.seconds
    if args.ramp is not None:
        settings["ramp"] = args.ramp
    parts = args.only or [p for p in (DEFAULT_PARTS if args.quick else PARTS) if p not in OPT_IN]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    results: dict[str, Any] = {"meta": meta(args, settings)}

    if "codec" in parts:
        from bench.codec import run_codec

        print("  codec path …", file=sys.stderr, flush=True)
        results["codec"] = run_codec(settings["codec_frames"], 5)
    if "setup" in parts:
        from bench.setup_time import run_setup

        print("  call setup …", file=sys.stderr, flush=True)
        results["setup"] = run_setup(settings["builds"], settings["pipecat_builds"])
    if "barge-in" in parts:
        from bench.barge_in import run_barge_in

        print("  barge-in …", file=sys.stderr, flush=True)
        results["barge_in"] = run_barge_in(settings["barge_calls"], settings["barge_rounds"], out / "logs")
    if "load" in parts:
        results["load"] = run_load(args, settings, out)
    if "stages" in parts:
        from bench.stages import LADDER, run_stages

        print(f"  stage costs: {settings['stage_calls']} calls on each of {len(LADDER)} chains …", file=sys.stderr, flush=True)
        results["stages"] = run_stages(settings["stage_calls"], settings["stage_seconds"], ramp=settings["ramp"],
                                       log_dir=out / "logs", workers=args.workers,
                                       calls_per_process=args.calls_per_process, quiet_wait=settings["quiet_wait"])
    if "cascade" in parts:
        from bench.cascade import run_cascade
        from bench.cascade import table as cascade_table

        print("  cascade reply time …", file=sys.stderr, flush=True)
        results["cascade"] = run_cascade(8, out / "logs")
        print(cascade_table(results["cascade"]))
    if "reloads" in parts:
        from bench.reloads import run_reloads

        print(f"  live edits: {settings['reload_calls']} calls through {settings['reload_edits']} edits, then "
              f"{settings['reloads']} reloads …", file=sys.stderr, flush=True)
        results["reloads"] = run_reloads(settings["reload_calls"], settings["reload_edits"], settings["reloads"],
                                         out / "logs", workers=args.workers)
    if "turns" in parts:
        from bench.turns import run_turns
        from bench.turns import table as turns_table

        print("  turn-taking scenes …", file=sys.stderr, flush=True)
        results["turns"] = run_turns([s.strip() for s in args.turn_servers.split(",") if s.strip()],
                                     repeats=args.turn_repeats, log_dir=out / "logs", workers=args.workers)
        print(turns_table(results["turns"], conditions=True))
    results["meta"]["duration_s"] = round(time.monotonic() - began, 1)

    from bench.report import plot, table, write_json

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path, png_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.png"
    write_json(results, json_path)
    why_not = plot(results, png_path)
    print(table(results))
    print(f"\nJSON: {json_path}")
    print(f"plot: {png_path}" if why_not is None else f"plot: skipped ({why_not})")
    if args.publish:
        shutil.copyfile(json_path, ROOT / "bench" / "results-latest.json")
        if why_not is None:
            shutil.copyfile(png_path, ROOT / "bench" / "results-latest.png")
        print("published: bench/results-latest.json" + ("" if why_not else ", bench/results-latest.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
