"""The container image, built and run on this machine (``make test-deploy``; README "Deploy").

No registry is reachable and ``podman run`` cannot work in this kind of sandbox (crun cannot set the
container's rlimits), so:

* the base is made locally: ``debootstrap --variant=minbase --include=python3,python3-venv bookworm``,
  imported with ``podman import`` (kept as ``localhost/voice-bridge-test-base:bookworm`` between runs;
  ``VOICE_BRIDGE_TEST_BASE`` names another base image, e.g. ``python:3.11-slim`` where a registry works);
* the Dockerfile is built with ``podman build --isolation chroot --build-arg BASE=…``;
* the image is run the way a runtime would, without the runtime: a container's writable root filesystem
  (``podman create`` + ``podman mount``), a private mount namespace with /proc, /dev and /sys, optionally
  a network namespace with only loopback, then ``chroot`` as the image's ``User``, in its ``WorkingDir``,
  with exactly its ``Env``, executing its ``Entrypoint`` + ``Cmd``; the ``Healthcheck`` command is run the
  same way. Calls come from the simulated Twilio caller speaking real speech, outside the image.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitQuiet, run_call
from conftest import ROOT, SPEECH_DIR, free_port, speech
from test_security import assert_echoed, bridge_yaml

pytestmark = pytest.mark.timeout(1200)

BASE_TAG = "localhost/voice-bridge-test-base:bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
RUN_ID = uuid.uuid4().hex[:8]
IMAGE = f"localhost/voice-bridge-test:{RUN_ID}"
TOKEN = "deploy-test-auth-token-0123456789"


def _run(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _podman_usable() -> str | None:
    """Why podman cannot work here, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install -y podman debootstrap; .ci/run does this)"
    info = _run(["podman", "info", "--format", "{{.Store.GraphDriverName}}"], timeout=60)
    if info.returncode != 0:
        return f"`podman info` fails, podman cannot work on this machine:\n{info.stderr.strip()}"
    if os.geteuid() != 0:
        return "podman image mount and chroot need root"
    return None


_UNUSABLE = _podman_usable()
if _UNUSABLE:
    pytest.skip(f"SKIPPED, the image was NOT tested: {_UNUSABLE}", allow_module_level=True)


def _log(message: str) -> None:
    print(f"[test-deploy +{time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


@pytest.fixture(scope="module", autouse=True)
def _only_when_asked(request: pytest.FixtureRequest) -> None:
    """A bare ``pytest`` run does not build images; ``make test-deploy`` names this directory."""
    asked = any("deploy" in str(arg) for arg in request.config.args)
    if not asked and os.environ.get("VOICE_BRIDGE_TEST_DEPLOY") != "1":
        pytest.skip("image tests are slow: run `make test-deploy` (or name tests/deploy, or set "
                    "VOICE_BRIDGE_TEST_DEPLOY=1)")


# --------------------------------------------------------------------------- building


def _base_image(tmp: Path) -> str:
    """A local Debian base with python3 (made once with debootstrap, then reused)."""
    if os.environ.get("VOICE_BRIDGE_TEST_BASE"):
        return os.environ["VOICE_BRIDGE_TEST_BASE"]
    if _run(["podman", "image", "exists", BASE_TAG]).returncode == 0:
        _log(f"base image {BASE_TAG} exists, reused")
        return BASE_TAG
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is needed to make the base image (apt-get install -y debootstrap)")
    root = tmp / "base-root"
    _log(f"debootstrap bookworm from {DEBIAN_MIRROR} …")
    made = _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(root),
                 DEBIAN_MIRROR], timeout=900)
    assert made.returncode == 0, f"debootstrap failed:\n{made.stdout[-3000:]}\n{made.stderr[-3000:]}"
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["podman", "import", "-", BASE_TAG], stdin=tar.stdout, capture_output=True,
                              text=True, timeout=600)
    tar.wait()
    assert imported.returncode == 0 and tar.returncode == 0, f"podman import failed:\n{imported.stderr}"
    shutil.rmtree(root, ignore_errors=True)
    _log(f"base image {BASE_TAG} made")
    return BASE_TAG


def _ca_bundle() -> str | None:
    """The CA bundle pip should trust in the builder (a TLS-intercepting proxy's CA is in the host's)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass
class Image:
    name: str
    inspect: dict
    build_seconds: float

    @property
    def config(self) -> dict:
        return self.inspect["Config"]

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env", []))

    @property
    def healthcheck(self) -> list[str]:
        test = (self.inspect.get("Healthcheck") or self.config.get("Healthcheck") or {}).get("Test") or []
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"no HEALTHCHECK in the image: {test}"
        return test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    tmp = tmp_path_factory.mktemp("image")
    base = _base_image(tmp)
    cmd = ["podman", "build", "--isolation", "chroot", "--format", "docker", "--layers=false",
           "--build-arg", f"BASE={base}", "--tag", IMAGE, "--file", str(ROOT / "Dockerfile")]
    ca = _ca_bundle()
    if ca:
        cmd += ["--secret", f"id=pip_ca,src={ca}"]
    _log(f"podman build ({' '.join(cmd[2:])}) …")
    began = time.monotonic()
    log = tmp / "build.log"
    with log.open("w") as out:
        built = subprocess.run([*cmd, str(ROOT)], stdout=out, stderr=subprocess.STDOUT, timeout=1200)
    seconds = time.monotonic() - began
    assert built.returncode == 0, f"podman build failed after {seconds:.0f} s:\n{log.read_text()[-6000:]}"
    _log(f"image {IMAGE} built in {seconds:.0f} s")
    try:
        inspect = json.loads(_run(["podman", "image", "inspect", IMAGE]).stdout)[0]
        yield Image(IMAGE, inspect, seconds)
    finally:
        removed = _run(["podman", "rmi", "--force", IMAGE])
        _log(f"image {IMAGE} removed (rc {removed.returncode})")


@dataclass
class Container:
    name: str
    root: Path
    """Its writable root filesystem, mounted on the host."""

    def changes(self) -> list[str]:
        """Paths the runs so far added or changed in the container's filesystem (``podman diff``)."""
        diff = _run(["podman", "diff", "--format", "json", self.name])
        assert diff.returncode == 0, diff.stderr
        return sorted({path for paths in (json.loads(diff.stdout or "{}") or {}).values() for path in paths or []})


@pytest.fixture
def container(image: Image) -> Iterator[Container]:
    """A fresh container's root filesystem, as ``podman run`` would start the process in (one per test)."""
    name = f"voice-bridge-test-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    created = _run(["podman", "create", "--name", name, "--no-healthcheck", image.name])
    assert created.returncode == 0, created.stderr
    try:
        mounted = _run(["podman", "mount", name])
        assert mounted.returncode == 0, mounted.stderr
        yield Container(name, Path(mounted.stdout.strip()))
    finally:
        _run(["podman", "umount", name])
        _run(["podman", "rm", "--force", name])


# --------------------------------------------------------------------------- running without a runtime

_SETUP = r"""
set -eu
root=$1; user=$2; workdir=$3; isolate=$4; mounts=$5; shift 5
if [ "$isolate" = 1 ]; then ip link set lo up; fi
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    name=${node%%:*}; numbers=${node#*:}
    mknod -m 0666 "$root/dev/$name" c "${numbers%%:*}" "${numbers#*:}"
done
mkdir "$root/dev/shm" "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"; ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys" 2>/dev/null || mount --rbind /sys "$root/sys"
# -v HOST:CONTAINER:ro, one "HOST=CONTAINER" per line
printf '%s\n' "$mounts" | while IFS== read -r host inside; do
    [ -n "$host" ] || continue
    mkdir -p "$(dirname "$root$inside")"; touch "$root$inside"
    mount --bind "$host" "$root$inside"; mount -o remount,bind,ro "$root$inside"
done
exec chroot --userspec="$user" "$root" /usr/bin/env -i -C "$workdir" "$@"
"""


class ImageProcess:
    """The image's entry point in its own root filesystem, as its user, with exactly its environment.

    ``unshare`` without ``--fork`` execs the setup shell, which execs ``chroot``, ``env``, the entry point
    shell and ``python``: ``self.proc.pid`` is the server's pid, so signals reach it as a runtime's would.
    """

    def __init__(self, image: Image, rootfs: Path, log: Path, *, env: dict[str, str] | None = None,
                 isolate_network: bool = False, mounts: dict[str, Path] | None = None,
                 args: list[str] | None = None):
        self.image, self.rootfs, self.log = image, rootfs, log
        self.env = {**image.env, **(env or {})}
        self.env.setdefault("HOME", self._home(rootfs, image.config["User"]))  # as a runtime sets it
        self.isolated = isolate_network
        self.port = int(self.env["PORT"])
        self.user = image.config["User"]
        assert ":" in self.user, "USER uid:gid (numeric) so runtimes can check it is not root"
        self.argv = [*image.config["Entrypoint"], *(args if args is not None else image.config.get("Cmd", []))]
        mount_lines = "\n".join(f"{host}={inside}" for inside, host in (mounts or {}).items())
        unshare = ["unshare", "--mount", *(["--net"] if isolate_network else [])]
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [*unshare, "sh", "-c", _SETUP, "setup", str(rootfs), self.user, image.config.get("WorkingDir") or "/",
             "1" if isolate_network else "0", mount_lines, *self._assignments(), *self.argv],
            stdout=self._log_file, stderr=subprocess.STDOUT, env={"PATH": os.environ["PATH"]},
            start_new_session=True)

    @staticmethod
    def _home(rootfs: Path, user: str) -> str:
        uid = user.split(":")[0]
        for line in (rootfs / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if uid in (fields[0], fields[2]):
                return fields[5]
        return "/"

    def _assignments(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.env.items()]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def nsenter(self, *, mount: bool = True) -> list[str]:
        """Prefix that runs a command in the server's network (and mount) namespace."""
        ns = f"/proc/{self.proc.pid}/ns"
        return ["nsenter", f"--net={ns}/net", *([f"--mount={ns}/mnt"] if mount else []), "--"]

    def healthcheck(self) -> subprocess.CompletedProcess:
        """The image's HEALTHCHECK command, where a runtime runs it: in the container, as its user."""
        cmd = [*(self.nsenter() if self.isolated else []), "chroot", f"--userspec={self.user}", str(self.rootfs),
               "/usr/bin/env", "-i", "-C", self.image.config.get("WorkingDir") or "/", *self._assignments(),
               *self.image.healthcheck]
        return _run(cmd, timeout=30)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the image's entry point exited with {self.proc.returncode}:\n{self.output()}")
            if self.healthcheck().returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the server in the image did not come up:\n{self.output()}")
            time.sleep(0.3)

    def uid(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
        raise AssertionError("no Uid line")

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if not self._log_file.closed:
            self._log_file.close()


# --------------------------------------------------------------------------- the image as built


def test_image_metadata(image: Image) -> None:
    config = image.config
    size = image.inspect.get("Size", 0) / 1e6
    _log(f"image: {size:.0f} MB, user {config.get('User')}, entrypoint {config.get('Entrypoint')} "
         f"cmd {config.get('Cmd')}, healthcheck {image.healthcheck}")
    uid, _, gid = config["User"].partition(":")
    assert int(uid) != 0 and int(gid) != 0, "the image runs as a dedicated non-root user"
    assert config["Entrypoint"] == ["voice-bridge-entrypoint"] and config["Cmd"] == ["serve"]
    assert image.env["PORT"] == "8082" and "8082/tcp" in config.get("ExposedPorts", {})
    assert config.get("StopSignal") == "SIGTERM"
    assert any("/healthz" in part for part in image.healthcheck)
    assert image.healthcheck[0] == "python", "the check needs no curl in the image"


def test_image_holds_the_runtime_only(image: Image, container: Container) -> None:
    rootfs = container.root
    site = next((rootfs / "opt" / "venv" / "lib").glob("python3*/site-packages"))
    assert (rootfs / "opt/venv/bin/voice-bridge").is_file()
    model = site / "pipecat/audio/vad/data/silero_vad.onnx"
    assert model.is_file() and model.stat().st_size > 1_000_000, "the Silero model is in the image"
    dist = next(site.glob("agent_voice_bridge-*.dist-info"))
    assert not (dist / "direct_url.json").exists() or "editable" not in (dist / "direct_url.json").read_text()
    assert (site / "agent_voice_bridge" / "cli.py").is_file(), "installed from the wheel, not linked to a checkout"
    present = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert image.env.get("ORT_DISABLE_TELEMETRY") == "1", "onnxruntime must not phone home from the image"
    for unwanted in ("pytest", "pytest_asyncio", "hypothesis", "scipy", "pip", "setuptools", "wheel"):
        assert unwanted not in present, f"{unwanted} is not a runtime dependency but is in the image"
    for path in ("usr/bin/gcc", "usr/bin/cc", "src", "tests", "opt/venv/tests", "config/pipeline.yaml",
                 "home/voicebridge/.cache"):
        assert not (rootfs / path).exists(), f"/{path} should not be in the image"
    assert "voicebridge:x:10001:" in (rootfs / "etc/passwd").read_text()


# --------------------------------------------------------------------------- running it


def _call_in_namespace(server: ImageProcess, clip: Path) -> dict:
    """A simulated call from outside the image (this checkout's Python) inside the server's network."""
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path[:0] = [{str(ROOT / 'tests')!r}]
        from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitQuiet, load_wav, run_call
        from test_security import heard_seconds
        result = asyncio.run(run_call("ws://127.0.0.1:{server.port}/media-stream",
                                      [Pause(0.5), Say(load_wav({str(clip)!r})), WaitQuiet(idle=0.8)]))
        print(result.timeline(), file=sys.stderr)
        print(json.dumps({{"latency": result.reply_latencies()[0], "heard": heard_seconds(result.heard),
                           "close_code": result.close_code}}))
    """)
    done = _run([*server.nsenter(mount=False), sys.executable, "-c", script], timeout=60, cwd=ROOT)
    assert done.returncode == 0, f"the call failed:\n{done.stdout}\n{done.stderr}"
    print(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_starts_offline_passes_its_healthcheck_and_echoes(image: Image, container: Container,
                                                          tmp_path: Path) -> None:
    """No network but loopback: nothing is downloaded at start or during a call (the Silero model included)."""
    server = ImageProcess(image, container.root, tmp_path / "offline.log", isolate_network=True,
                          env={"PORT": str(free_port()), "HOME": "/home/voicebridge"})
    try:
        began = time.monotonic()
        server.wait_ready()
        _log(f"offline: healthy {time.monotonic() - began:.1f} s after start, as uid {server.uid()}")
        assert server.uid() == int(image.config["User"].split(":")[0])
        assert "<built-in echo.yaml>" in server.output(), "no config mounted: the built-in echo line"
        result = _call_in_namespace(server, SPEECH_DIR / "hello-world.wav")
        _log(f"offline call: reply after {result['latency'] * 1000:.0f} ms, {result['heard']:.2f} s heard")
        assert result["latency"] <= 1.0 and result["heard"] >= 0.5 and result["close_code"] == 1000
    finally:
        server.stop()
    changes = container.changes()
    _log(f"container filesystem changes after the offline run: {changes}")
    # Only the limits store (security.store: sqlite, a file per port in the working directory, the user's home),
    # the workers' shared metrics (one worker per core: /tmp/voice-bridge-metrics-*) and the call records
    # (storage.url: sqlite:///voice-bridge.db, also in the working directory). Notably no ~/.cache: no model or
    # telemetry state (onnxruntime writes a device id there unless ORT_DISABLE_TELEMETRY=1).
    home = "/home/voicebridge"
    unexpected = [p for p in changes if p not in ("/tmp", "/home", home)
                  and not p.startswith((f"{home}/voice-bridge-limits-{server.port}.sqlite",
                                        "/tmp/voice-bridge-metrics-", f"{home}/voice-bridge.db"))]
    assert not unexpected, f"the server wrote more than its limits store and records (a download?): {unexpected}"
    assert f"{home}/voice-bridge.db" in changes, "the call was recorded"


async def test_mounted_config_port_from_env_signed_call_and_sigterm_drain(image: Image, container: Container,
                                                                          tmp_path: Path) -> None:
    """Like ``docker run -e PORT -e TWILIO_AUTH_TOKEN -v pipeline.yaml:/config/pipeline.yaml:ro``,
    called from outside the image the way Twilio calls: signed webhook, then the stream it names."""
    port = free_port()
    doc = yaml.safe_load(bridge_yaml())
    doc["server"] = {"host": "${HOST}", "port": 9, "public_url": "${PUBLIC_URL}", "drain_seconds": 10}
    doc["twilio"] = {"auth_token": "${TWILIO_AUTH_TOKEN}"}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    config.chmod(0o644)
    server = ImageProcess(image, container.root, tmp_path / "served.log", mounts={"/config/pipeline.yaml": config},
                          env={"PORT": str(port), "HOST": "127.0.0.1", "PUBLIC_URL": f"http://127.0.0.1:{port}",
                               "TWILIO_AUTH_TOKEN": TOKEN,
                               # one process: this test watches the call go live in that process's /healthz
                               "VOICE_BRIDGE_WORKERS": "1"})
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(timeout=5) as client:
            health = (await client.get(server.base + "/healthz")).json()
        assert health["pipeline"] == "/config/pipeline.yaml", "the mounted config is served"
        assert "checks are OFF" not in server.output(), "signatures are checked with the token from the env"
        assert TOKEN not in server.output()

        call = asyncio.create_task(run_call(server.base + "/incoming",
                                            [Pause(0.5), Say(speech("hello-world")), WaitQuiet(idle=0.8)],
                                            auth_token=TOKEN))
        deadline = time.monotonic() + 15
        async with httpx.AsyncClient(timeout=5) as client:
            while (await client.get(server.base + "/healthz")).json()["live_calls"] != 1:
                assert time.monotonic() < deadline and not call.done(), "the call did not go live"
                await asyncio.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)  # what Cloud Run / Fly / systemd send: it must reach python
            while (await client.get(server.base + "/healthz")).json()["status"] != "draining":
                assert time.monotonic() < deadline, "SIGTERM did not start the drain"
                await asyncio.sleep(0.05)
            refused = await client.post(server.base + "/incoming", data={"CallSid": "CAx"})
            assert refused.status_code == 503, "a draining instance sends Twilio to the fallback URL"
            assert server.healthcheck().returncode == 0, "a draining instance is still healthy"
        result = await call
        assert_echoed(result)
        _log(f"served call: reply after {result.reply_latencies()[0] * 1000:.0f} ms, then drained")
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
        assert "1 live call(s) may run" in server.output() and "drained" in server.output()
        assert server.healthcheck().returncode != 0, "the healthcheck fails once the server is gone"
    finally:
        await asyncio.to_thread(server.stop)


def test_check_subcommand_through_the_entry_point(image: Image, container: Container, tmp_path: Path) -> None:
    server = ImageProcess(image, container.root, tmp_path / "check.log", args=["check"])
    assert server.proc.wait(60) == 0, server.output()
    server.stop()
    assert "OK, 8 stages" in server.output()
