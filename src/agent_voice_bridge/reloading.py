"""Live edits: on a change to the server file or any pipeline file, or on ``SIGHUP``, load and check
everything anew and swap it in for new calls.

A reload is all or nothing: every file loads and every chain checks, or nothing changes and the last
good configuration keeps serving (the error, file:line:stage, is logged, kept for ``/healthz`` and
counted in ``voice_bridge_config_reloads_total{result="failed"}``). Calls already running keep the
chain they started with; only the :class:`~agent_voice_bridge.chain_source.ChainSource` changes.

What a reload changes: the lines, their chains, and every ``security``/``storage`` key a line can set
(top-level ones too: they are the lines' defaults), since each :class:`~agent_voice_bridge.lines.Line`
carries its rules. The rest of ``server``, ``twilio``, ``security``, ``storage`` and ``outbound`` (where to
listen, the database, the limit store, the Twilio account, …) is read at start: a reload that changes any
of it is applied for the rest and names those keys, in the log and in ``/healthz``
(``config.restart_needed``), until a restart (or an edit that puts them back).
With ``serve --workers N`` every worker watches the same files and reloads on its own; they agree
because each reports the digest of what it loaded (``/healthz``: ``config.digest``).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from loguru import logger

from agent_voice_bridge import metrics
from agent_voice_bridge.chain_source import ChainSource
from agent_voice_bridge.configuration import ServerSetup
from agent_voice_bridge.lines import Lines, load_lines
from agent_voice_bridge.pipelines.config import BridgeConfig, LineSecurity, LineStorage
from agent_voice_bridge.pipelines.errors import ConfigError

RESTART_SECTIONS = ("server", "twilio", "security", "storage", "outbound")
"""Read once at start, but for the keys of :data:`LIVE_KEYS`."""
LIVE_KEYS = frozenset([f"security.{key}" for key in LineSecurity.model_fields]
                      + [f"storage.{key}" for key in LineStorage.model_fields])
"""Keys of those sections that a reload applies: what a line can set for itself (the top-level ones are its default)."""


def restart_needed(started: BridgeConfig, now: BridgeConfig) -> list[str]:
    """The keys (``server.port``) that differ between the configuration the server started with and ``now``
    and that only a restart applies."""
    before, after = started.model_dump(mode="json"), now.model_dump(mode="json")
    return [f"{section}.{key}" for section in RESTART_SECTIONS
            for key in dict.fromkeys([*before[section], *after[section]])
            if before[section].get(key) != after[section].get(key) and f"{section}.{key}" not in LIVE_KEYS]


class Reloader:
    """Reloads ``setup``'s files into ``chains``; what happened is in :meth:`status` for ``/healthz``."""

    def __init__(self, setup: ServerSetup, chains: ChainSource) -> None:
        self._path = None if setup.path.startswith("<") else setup.path
        self._setup = setup
        self._started = setup.config
        """What the server read at start: the keys a reload cannot apply keep these values."""
        self._chains = chains
        self._lock = asyncio.Lock()
        self.generation = 1
        """The configuration serving now: 1 at start, one more for each reload that changed it."""
        self.reloads = 0
        self.last_cause: str | None = None
        self.last_error: str | None = None
        self.last_reload_at: float | None = None
        self.restart_needed: list[str] = []
        """Keys the files now set otherwise than the server started with, which only a restart applies."""

    def status(self) -> dict:
        return {"generation": self.generation, "digest": self._chains.lines.digest, "reloads": self.reloads,
                "last_cause": self.last_cause, "last_error": self.last_error, "restart_needed": self.restart_needed,
                "files": self.files()}

    def files(self) -> list[str]:
        """The files a change to which reloads: the file given, every line's pipeline file and fallbacks."""
        files = self._setup.files() + [line.chain.fallback.source for line in self._chains.lines
                                       if line.chain.fallback is not None]
        return [f for f in dict.fromkeys(files) if not f.startswith("<")]

    async def reload(self, cause: str) -> bool:
        """Load and check everything anew; swap it in if it checks and differs. True if it serves now."""
        async with self._lock:  # a save seen by the watcher and a SIGHUP at once: one after the other
            self.reloads += 1
            self.last_cause = cause
            self.last_reload_at = time.time()
            try:
                setup, lines = await asyncio.to_thread(_load_and_warm, self._path)
            except ConfigError as exc:
                self.last_error = str(exc)
                metrics.CONFIG_RELOADS.labels("failed").inc()
                logger.error(f"reload ({cause}) refused, generation {self.generation} keeps serving:\n{exc}")
                return False
            except Exception as exc:  # a stage whose warm-up fails must not end the watcher or the server
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                metrics.CONFIG_RELOADS.labels("failed").inc()
                logger.exception(f"reload ({cause}) failed, generation {self.generation} keeps serving")
                return False
            self.last_error = None
            if lines.digest == self._chains.lines.digest:
                metrics.CONFIG_RELOADS.labels("unchanged").inc()
                logger.info(f"reload ({cause}): nothing changed, generation {self.generation} serves on")
                return True
            self._setup = setup
            self._chains.swap(lines)
            self.generation += 1
            metrics.CONFIG_RELOADS.labels("ok").inc()
            logger.info(f"reload ({cause}): generation {self.generation} ({lines.digest}) serves new calls: "
                        + ", ".join(f"{line.name} ({line.reached_by()}) {line.chain.source}" for line in lines))
            self._note_restart_needed(setup)
            return True

    def _note_restart_needed(self, setup: ServerSetup) -> None:
        self.restart_needed = restart_needed(self._started, setup.config)
        if self.restart_needed:
            logger.warning(f"reload: {', '.join(self.restart_needed)} changed in {setup.path} and only take effect "
                           "after a restart; until then the server keeps the values it started with (everything "
                           "else of this edit is serving)")

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change to :meth:`files` until ``stop``; the set of files is renewed after each
        reload (a server file edit may name new pipeline files)."""
        from watchfiles import awatch

        while not stop.is_set():
            files = {os.path.realpath(f) for f in self.files()}
            if not files:
                return
            # Directories, not files: editors save by writing a new file and renaming it over the old one.
            folders = sorted({str(Path(f).parent) for f in files if Path(f).parent.is_dir()})
            changed = False
            async for changes in awatch(*folders, watch_filter=lambda _, path: os.path.realpath(path) in files,
                                        stop_event=stop, debounce=400, step=50, recursive=False):
                names = sorted({Path(p).name for _, p in changes})
                await self.reload(f"file changed: {', '.join(names)}")
                changed = files != {os.path.realpath(f) for f in self.files()}
                if changed:
                    break
            if not changed:
                return


def _load_and_warm(path: str | None) -> tuple[ServerSetup, Lines]:
    """Off the event loop: reading, checking and warming a chain must not stall live calls."""
    setup, lines = load_lines(path)
    for line in lines:
        line.chain.warm_up()
    return setup, lines
