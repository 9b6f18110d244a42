"""A pytest plugin that fails the run when tests wrote into the working tree.

Why: tests write only under temporary directories. A server started with the repo root as its working
directory quietly added call records to ``./voice-bridge.db`` on every ``make test`` (issue 22); the file
is git-ignored, so nobody saw it. The controller (not each xdist worker) looks at every file git does not
track, before and after the session, and fails the run naming what appeared or changed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHES = frozenset({".git", ".venv", "__pycache__", ".pytest_cache", "node_modules", ".fixtures",
                    ".mypy_cache", ".ruff_cache"})
"""Directories tools keep their caches in (tests/.fixtures caches generated speech): not test output."""

Snapshot = dict[str, tuple[int, int]]


def _tracked() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set()
    return {p for p in out.stdout.decode().split("\0") if p}


def snapshot() -> Snapshot:
    """Size and mtime of every untracked file in the tree outside caches and source (``*.py``: a colleague's
    new module in a shared checkout is not test output)."""
    tracked = _tracked()
    files: Snapshot = {}
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in CACHES and not d.endswith(".egg-info")]
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, ROOT)
            if rel in tracked or name.endswith(".py"):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            files[rel] = (st.st_size, st.st_mtime_ns)
    return files


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """Files that appeared or changed between two snapshots, sorted."""
    return sorted(path for path, stat in after.items() if before.get(path) != stat)


_KEY = pytest.StashKey[Snapshot]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        session.config.stash[_KEY] = snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_KEY, None)
    if before is None:
        return
    written = changes(before, snapshot())
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = ("tests wrote into the working tree (write under a temporary directory instead): "
                   + ", ".join(written[:20]) + (" …" if len(written) > 20 else ""))
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
