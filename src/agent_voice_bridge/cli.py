"""``voice-bridge``: serve, call, check, schema, calls, forget, dial, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import wave
from pathlib import Path
from typing import TYPE_CHECKING

from agent_voice_bridge.configuration import LineFile, ServerSetup, load_config, load_setup
from agent_voice_bridge.pipelines.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from agent_voice_bridge.pipelines.config import BridgeConfig
    from agent_voice_bridge.lines import Lines
    from agent_voice_bridge.transports.simulated_caller import KeysAt, Step

AI_KEYS = ("GEMINI_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")


def usable_cores() -> int:
    """One worker per core: a process runs its calls on one core (the event loop)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_lines(path: str | None) -> tuple[ServerSetup, Lines] | None:
    """The file (with every pipeline file its ``lines:`` name) and the checked lines, or None after printing
    every problem of every file."""
    from agent_voice_bridge.lines import load_lines as load_and_check

    try:
        setup, lines = load_and_check(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None
    for line in lines:
        for warning in line.chain.warnings():
            print(f"warning: {warning}", file=sys.stderr)
    return setup, lines


def _cmd_check(args: argparse.Namespace) -> int:
    checked = load_lines(args.config)
    if checked is None:
        return 1
    setup, lines = checked
    from agent_voice_bridge.pipelines.endpoints import endpoint_notes

    if not setup.has_lines:
        chain = lines.first.chain
        print(f"{setup.path}: OK, {len(chain.stages)} stages")
        print(chain.describe())
    else:
        print(f"{setup.path}: OK, {len(lines)} line(s)")
        own = {file.name: file.own_keys() for file in setup.lines}
        for line in lines:
            print(f"\nline {line.name} ({line.reached_by()}): {line.chain.source}, {len(line.chain.stages)} stages"
                  + (f"; its own {', '.join(own[line.name])}" if own.get(line.name) else ""))
            print(line.chain.describe())
    for line in lines:
        for note in endpoint_notes(line.chain):
            print(note)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from agent_voice_bridge.pipelines.schema import file_schema

    print(json.dumps(file_schema(), indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from agent_voice_bridge.metrics import MULTIPROC_ENV
    from agent_voice_bridge.server import CONFIG_ENV, create_app
    from agent_voice_bridge.pipelines.endpoints import endpoint_notes
    from agent_voice_bridge.serving import LOG_LEVEL_ENV, local_url, serve

    checked = load_lines(args.config)
    if checked is None:
        return 1
    setup, lines = checked
    loaded = setup.loaded
    server = loaded.config.server
    host = args.host or server.host
    port = args.port or server.port
    tls = server.tls
    if tls is not None:  # say which file, before uvicorn fails with a bare traceback
        for what, file in (("cert", tls.cert), ("key", tls.key)):
            if not os.access(file, os.R_OK):
                print(f"{loaded.path}: server.tls.{what}: cannot read {file!r}", file=sys.stderr)
                return 1
    http, ws = ("https", "wss") if tls else ("http", "ws")
    print(banner(setup, lines, f"{http}://{host}:{port}"), file=sys.stderr)
    for line in lines:
        for note in endpoint_notes(line.chain):
            print(f"  {note}", file=sys.stderr)
    if any(s.name == "echo" for line in lines for s in line.chain.stages):
        missing = "no AI key" if not any(os.environ.get(k) for k in AI_KEYS) else "the echo chain"
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"*** OFFLINE ECHO LINE ({missing}): callers hear their own words back when they stop talking. "
              f"Try it: .venv/bin/voice-bridge call {ws}://{local}:{port}/media-stream "
              f"--wav tests/fixtures/speech/hello-world.wav --out heard.wav, or open {http}://{local}:{port}/phone ***",
              file=sys.stderr)
    from agent_voice_bridge.security.mode import DEVELOPMENT_WARNING, checks_on

    if not checks_on(loaded.config):
        print(f"*** {DEVELOPMENT_WARNING} ***", file=sys.stderr)
    drain = loaded.config.server.drain_seconds
    workers = args.workers or usable_cores()
    ready = ready_line(loaded.config, local_url(host, port, tls is not None), workers)
    if workers > 1:
        os.environ[LOG_LEVEL_ENV] = args.log_level
        os.environ.setdefault(MULTIPROC_ENV, tempfile.mkdtemp(prefix="voice-bridge-metrics-"))
        os.environ[CONFIG_ENV] = loaded.path if not loaded.path.startswith("<") else ""
        os.environ["VOICE_BRIDGE_PORT"] = str(port)
        serve("agent_voice_bridge.server:app_from_environment", host=host, port=port, drain_seconds=drain,
              workers=workers, tls=tls, max_connections=server.max_connections, ready=ready)
    else:
        serve(create_app(loaded.config.model_copy(update={"server": server.model_copy(update={"port": port})}),
                         lines, setup=setup), host=host, port=port, drain_seconds=drain, tls=tls,
              max_connections=server.max_connections, ready=ready)
    return 0


def ready_line(config: BridgeConfig, local: str, workers: int) -> str:
    """The one line ``serve`` prints once every worker answers: where Twilio, a browser and a scraper go."""
    from agent_voice_bridge.web.softphone import softphone_enabled

    public = config.server.public_url or local
    stream = public.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    urls = [f"Twilio webhook {public}/incoming", f"media stream {stream}/media-stream"]
    if softphone_enabled(config):
        urls.append(f"softphone {local}/phone")
    urls += [f"{local}/healthz", f"{local}/metrics"]
    return f"voice-bridge: ready, {workers} worker{'s' if workers != 1 else ''} answering: {', '.join(urls)}"


def banner(setup: ServerSetup, lines: Lines, url: str) -> str:
    """What ``serve`` says it serves: one pipeline file as one line, as before lines; else a line per line."""
    if not setup.has_lines:
        names = [s.name for s in lines.first.chain.stages]
        return f"voice-bridge: serving {setup.path} on {url} ({' → '.join(names)})"
    rows = [f"voice-bridge: serving {setup.path} on {url}, {len(lines)} line(s):"]
    rows += [f"  line {line.name} ({line.reached_by()}): {line.chain.source} "
             f"({' → '.join(s.name for s in line.chain.stages)})" for line in lines]
    return "\n".join(rows)


def _cmd_call(args: argparse.Namespace) -> int:
    from agent_voice_bridge.transports.simulated_caller import CallSetupError, load_wav, save_wav

    if not args.wav and not args.digits:
        print("voice-bridge call: give at least one --wav FILE to speak or --digits KEYS@SECS to press",
              file=sys.stderr)
        return 2
    try:
        steps = call_script(args, [(Path(path).name, load_wav(path)) for path in args.wav])
    except (OSError, EOFError, wave.Error) as exc:
        print(f"voice-bridge call: cannot read a --wav file: {exc}", file=sys.stderr)
        return 2
    token = os.environ.get("TWILIO_AUTH_TOKEN") or None
    account = os.environ.get("TWILIO_ACCOUNT_SID") or None
    if args.twilio_api is not None and not (token and account):
        print("voice-bridge call: --twilio-api plays Twilio's REST API for the server: set TWILIO_ACCOUNT_SID and "
              "TWILIO_AUTH_TOKEN to the server's twilio.account_sid and auth_token", file=sys.stderr)
        return 2
    try:
        result, legs = asyncio.run(_call_and_follow(args, steps, token, account))
    except (OSError, ValueError, CallSetupError) as exc:
        print(f"voice-bridge call: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(result.timeline())
    if result.events_of("gave_up"):
        print("  (--greeting-wait, --timeout and --idle set how long the caller waits)")
    for leg in legs:
        print(f"transfer: {leg.what}")
        if leg.result is not None:
            print(leg.result.timeline())
    if args.out:
        import numpy

        save_wav(args.out, numpy.concatenate([result.heard] + [leg.result.heard for leg in legs if leg.result]))
        print(f"heard audio written to {args.out}")
    return 0


async def _call_and_follow(args: argparse.Namespace, steps: list[Step], token: str | None, account: str | None):
    """The call; with ``--twilio-api``, the transfers the server makes of it too, followed to their end."""
    from agent_voice_bridge.transports.simulated_caller import WaitReply, run_call
    from agent_voice_bridge.transports.simulated_twilio import SimulatedTwilio, follow_transfers

    if args.twilio_api is None:
        return await run_call(args.url, steps, from_number=args.from_number, to_number=args.to_number,
                              auth_token=token, keys=args.digits), []
    assert token is not None and account is not None
    async with SimulatedTwilio(account, token, args.twilio_api) as twilio:
        first = await run_call(args.url, steps, from_number=args.from_number, to_number=args.to_number,
                               auth_token=token, account_sid=account, keys=args.digits)
        legs = await follow_transfers(twilio, first, from_number=args.from_number, to_number=args.to_number,
                                      answer=args.transfer_answer,
                                      listen=[WaitReply(timeout=args.timeout, idle=args.idle, what="the line")])
    return first, legs


def call_script(args: argparse.Namespace, wavs: list[tuple[str, np.ndarray]]) -> list[Step]:
    """What the simulated caller does: hear the greeting out, then say each WAV and hear each reply out.

    A line that greets gets to finish (speaking over it would clear it), and a reply has ended only after
    ``--idle`` seconds of quiet, so a model that thinks for seconds is not hung up on. ``--barge-in``
    instead speaks each next WAV that long after the previous reply starts.
    """
    from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitKeys, WaitReply

    if args.greeting_wait > 0:
        steps: list[Step] = [WaitReply(timeout=args.greeting_wait, idle=args.idle, what="greeting")]
    else:
        steps = [Pause(0.5)]
    for i, (label, audio) in enumerate(wavs):
        steps.append(Say(audio, label=label))
        last = i == len(wavs) - 1
        if args.barge_in is not None and not last:
            steps.append(WaitHeard(after=args.barge_in, timeout=args.timeout))
        else:
            steps.append(WaitReply(timeout=args.timeout, idle=args.idle))
    if args.digits:
        # Keys pressed after the last WAV get their answer heard out too (one already heard is not waited for).
        steps += [WaitKeys(), WaitReply(timeout=args.timeout, idle=args.idle, what="answer to the keys")]
    return steps


def keys_at(text: str) -> KeysAt:
    """``--digits 1234#@3.5``: the keys and when (seconds into the call) the caller presses them."""
    from agent_voice_bridge.transports.simulated_caller import KeysAt

    digits, _, seconds = text.rpartition("@")
    try:
        when = float(seconds)
    except ValueError:
        when = float("nan")
    if not digits or not all(d in "0123456789*#" for d in digits) or not 0 <= when < 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEYS@SECONDS, keys from 0-9 * #, e.g. 1234#@3.5")
    return KeysAt(digits, when)


def _open_store(path: str | None):
    from agent_voice_bridge.storage import CallStore

    try:
        url = load_config(path).config.storage.url
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None
    if not url:
        print("voice-bridge: storage.url is empty in this configuration: no calls are stored", file=sys.stderr)
        return None
    return CallStore(url)


async def _with_store(store, work):
    try:
        await store.migrate()
        return await work(store)
    finally:
        await store.close()


def _cmd_calls(args: argparse.Namespace) -> int:
    from agent_voice_bridge.storage.report import HEADER, MESSAGE_HEADER, call_line, call_report, message_line

    if args.what not in ([], ["messages"]) and (args.what[0] != "show" or len(args.what) != 2):
        print("usage: voice-bridge calls [show CALLSID | messages]", file=sys.stderr)
        return 2
    caller = None
    if args.from_number is not None:
        caller = phone_number(args.from_number, "calls")
        if caller is None:
            return 2
    store = _open_store(args.config)
    if store is None:
        return 1
    if args.what == ["messages"]:
        messages = asyncio.run(_with_store(store, lambda s: s.recent_messages(args.limit)))
        print(MESSAGE_HEADER)
        for record, message in messages:
            print(message_line(record, message))
        return 0
    if args.what:
        sid = args.what[1]

        async def show(store):
            record = await store.get_call(sid)
            if record is None:
                return None
            return call_report(record, await store.transcript(sid), messages=await store.messages(sid))

        report = asyncio.run(_with_store(store, show))
        if report is None:
            print(f"voice-bridge calls: no call {sid} in {store.url_for_display}", file=sys.stderr)
            return 1
        print(report)
        return 0
    records = asyncio.run(_with_store(store, lambda s: s.recent_calls(args.limit, caller=caller, line=args.line)))
    print(HEADER)
    for record in records:
        print(call_line(record))
    return 0


def phone_number(text: str, command: str) -> str | None:
    """``text`` as the stored form of a number (E.164, as every record keeps it), or None after saying why not.

    One parser everywhere (``phone_numbers.e164``): ``+1 (555) 000-1111`` is the same person as
    ``+15550001111``, and ``15550001111`` (no country code) is nobody's number rather than a silent miss.
    """
    from agent_voice_bridge.phone_numbers import e164

    number = e164(text)
    if number is None:
        print(f"voice-bridge {command}: {text!r} is not a phone number: write it in E.164, a + and the "
              "country code (e.g. +15551234567)", file=sys.stderr)
    return number


def _cmd_forget(args: argparse.Namespace) -> int:
    number = phone_number(args.number, "forget")
    if number is None:
        return 2
    store = _open_store(args.config)
    if store is None:
        return 1
    forgotten = asyncio.run(_with_store(store, lambda s: s.forget_caller(number)))
    from agent_voice_bridge.configuration import line_specs
    from agent_voice_bridge.security.limits import forget_caller_limits
    from agent_voice_bridge.security.policy import CallerPolicy

    loaded = load_config(args.config)
    scopes = [CallerPolicy.of(loaded.config.security, spec.security, spec.name).rate_scope
              for spec in line_specs(loaded)[0]]
    forget_caller_limits(loaded.config, number, filter(None, scopes))  # their rate-limit windows, too
    if not forgotten.calls:
        print(f"voice-bridge forget: no calls with {number} in {store.url_for_display}: nothing deleted",
              file=sys.stderr)
        return 1
    removed = 0
    for path in forgotten.audio_paths:
        try:
            Path(path).unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"voice-bridge forget: could not delete {path}: {exc}", file=sys.stderr)
    print(f"forgot {number}: deleted {forgotten.calls} call(s), {forgotten.turns} transcript turn(s), "
          f"{forgotten.messages} voicemail message(s) and {removed} of {len(forgotten.audio_paths)} "
          "recording file(s)")
    return 0


def _cmd_dial(args: argparse.Namespace) -> int:
    from agent_voice_bridge.dialing import dial
    from agent_voice_bridge.storage import CallStore
    from agent_voice_bridge.transports.twilio_rest import OutboundError

    try:
        setup = load_setup(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    loaded = setup.loaded
    parameters: dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"voice-bridge dial: --param {item!r}: write it as name=value", file=sys.stderr)
            return 2
        parameters[name.strip()] = value
    chosen = dial_line(setup, args.line, args.from_number)
    if chosen is None:
        return 2
    line, from_number = chosen
    url = loaded.config.storage.url
    store = CallStore(url) if url else None

    def placing(s):
        return dial(loaded.config, s, args.number, parameters, line.loaded.path, line.name if setup.has_lines else "",
                    from_number)

    async def place():
        return await placing(None) if store is None else await _with_store(store, placing)

    try:
        placed = asyncio.run(place())
    except OutboundError as exc:
        print(f"voice-bridge dial: {exc}", file=sys.stderr)
        return 1
    print(f"calling {args.number}: {placed.call_sid} ({placed.status}); the server at "
          f"{loaded.config.server.public_url} runs the call when it is answered")
    return 0


def dial_line(setup: ServerSetup, name: str | None, from_number: str | None) -> tuple[LineFile, str | None] | None:
    """The line a placed call runs and the number it calls from (None: ``twilio.phone_number``): ``--line``
    (from its first number), else the line of ``--from`` (else of ``twilio.phone_number``), else the default."""
    if name:
        line = next((f for f in setup.lines if f.name == name), None)
        if line is None:
            print(f"voice-bridge dial: no line {name!r} in {setup.path}; lines: "
                  f"{', '.join(f.name for f in setup.lines)}", file=sys.stderr)
            return None
        return line, from_number and phone_number(from_number, "dial") or (line.numbers[0] if line.numbers else None)
    number = setup.config.twilio.phone_number
    if from_number:
        number = phone_number(from_number, "dial")
        if number is None:
            return None
    from agent_voice_bridge.phone_numbers import e164

    line = next((f for f in setup.lines if (e164(number) or number) in f.numbers), None) or next(
        (f for f in setup.lines if f.default), None)
    if line is None:
        print(f"voice-bridge dial: no line takes {number!r} in {setup.path}: give --line", file=sys.stderr)
        return None
    return line, from_number and number


CHECKOUT = Path(__file__).resolve().parents[2]
"""The source checkout this package runs from, when it is one (an editable install): ``bench/`` lives there."""
BENCH_ELSEWHERE = ("voice-bridge bench: the benchmark harness is not installed with the package; "
                   "run it from a source checkout: python -m bench --help")


def _cmd_bench(args: argparse.Namespace) -> int:
    """The harness is a tool of the source tree, not of the product: imported only here, only when asked for."""
    if (CHECKOUT / "bench" / "__main__.py").is_file() and str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    try:
        from bench.__main__ import main as bench_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.__main__"):
            raise  # the harness is there and lacks a dependency: its own error says which
        print(BENCH_ELSEWHERE, file=sys.stderr)
        return 2
    return bench_main(args.bench_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice-bridge", description="A phone line to a real-time AI, over Twilio.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("-c", "--config", help="pipeline YAML (default ./pipeline.yaml, else the built-in echo line)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes sharing the port (default: one per core this process may use)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check", help="validate a pipeline file and print the resolved chain")
    check.add_argument("-c", "--config")
    check.set_defaults(func=_cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of pipeline files")
    schema.set_defaults(func=_cmd_schema)

    call = sub.add_parser("call", help="call a bridge as a simulated Twilio caller")
    call.add_argument("url", help="http(s)://host/incoming (follows the TwiML) or ws(s)://host/media-stream")
    call.add_argument("--wav", action="append", default=[], help="audio to speak (repeatable)")
    call.add_argument("--digits", action="append", default=[], type=keys_at, metavar="KEYS@SECS",
                      help="press KEYS (0-9 * #, 0.1 s apart) SECS into the call, e.g. 1234#@3.5 (repeatable)")
    call.add_argument("--out", help="write what the caller heard to this WAV")
    call.add_argument("--from", dest="from_number", default="+15550001111")
    call.add_argument("--to", dest="to_number", default="+15550002222")
    call.add_argument("--barge-in", type=float, metavar="SECS",
                      help="speak each next WAV SECS after the reply to the previous one starts playing")
    call.add_argument("--timeout", type=float, default=20.0, metavar="SECS",
                      help="longest wait for a reply to begin (default 20)")
    call.add_argument("--idle", type=float, default=2.0, metavar="SECS",
                      help="quiet that ends a reply or the greeting (default 2)")
    call.add_argument("--greeting-wait", type=float, default=4.0, metavar="SECS",
                      help="longest wait for the line's greeting to begin before speaking; 0 speaks at once "
                           "(default 4)")
    call.add_argument("--twilio-api", type=int, metavar="PORT",
                      help="play Twilio's REST API on 127.0.0.1:PORT (point the server's twilio.api_base_url at it) "
                           "and follow the server's transfers of the call to their end")
    call.add_argument("--transfer-answer", default="no-answer", choices=["take", "no-answer", "busy", "decline", "machine"],
                      help="with --twilio-api, what the person a call is transferred to does (default no-answer: "
                           "the call comes back to the bridge)")
    call.set_defaults(func=_cmd_call)

    calls = sub.add_parser("calls", help="recent calls, a line each; 'calls show CALLSID' for one in full; "
                           "'calls messages' for voicemail")
    calls.add_argument("what", nargs="*", metavar="show CALLSID | messages",
                       help="one call's record, transcript and messages; or the latest voicemail messages")
    calls.add_argument("-c", "--config")
    calls.add_argument("-n", "--limit", type=int, default=20)
    calls.add_argument("--from", dest="from_number", help="only calls from this number")
    calls.add_argument("--line", help="only calls on this line (a server file's line: its pipeline file's name)")
    calls.set_defaults(func=_cmd_calls)

    forget = sub.add_parser("forget", help="delete a caller's calls, transcripts and recordings")
    forget.add_argument("number", help="the caller's number, as stored (E.164, e.g. +15551234567)")
    forget.add_argument("-c", "--config")
    forget.set_defaults(func=_cmd_forget)

    dial = sub.add_parser("dial", help="place an outbound call (Twilio REST) that the server answers with its chain")
    dial.add_argument("number", help="who to call, E.164 (+15551234567)")
    dial.add_argument("-c", "--config", help="the server's pipeline file (Twilio account, public_url, storage)")
    dial.add_argument("--line", help="the line whose chain runs the call (a server file's line); it calls from "
                      "the line's first number")
    dial.add_argument("--from", dest="from_number", help="the number to call from (default twilio.phone_number); "
                      "its line runs the call")
    dial.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="a fact for the instructions' {NAME} (repeatable), e.g. --param reason='your booking'")
    dial.set_defaults(func=_cmd_dial)

    bench = sub.add_parser("bench", help="benchmark against pipecat's Twilio path (bench --help)", add_help=False,
                           prefix_chars="+")  # every option goes to bench/__main__.py
    bench.add_argument("bench_args", nargs="*")
    bench.set_defaults(func=_cmd_bench)

    args = parser.parse_args(argv)
    _quiet_logs(getattr(args, "log_level", "warning"))
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # `voice-bridge call … | head`: the reader has gone, which is no error of ours. Point stdout at
        # /dev/null so that Python's own flush at exit does not print a traceback either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a writer ended by SIGPIPE
    return code


def _quiet_logs(level: str) -> None:
    """Before pipecat is imported (it logs a banner): only what the user asked to see."""
    from agent_voice_bridge.log_setup import configure

    configure(level)


if __name__ == "__main__":
    sys.exit(main())
