"""Files only the server's own user may read: recordings, call records, the limits store.

They hold callers' voices, numbers and transcripts, so they are created 0600 in
0700 directories whatever the process umask is (a default 022 made them readable
by every local user). SQLite gives its ``-wal``/``-shm`` files the database file's
mode, so creating the database file privately covers those too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """``mkdir -p`` where the directories this creates are 0700 (existing ones are left as they are)."""
    missing = []
    for parent in [path, *path.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)


def open_private(path: Path) -> BinaryIO:
    """Open ``path`` for writing from scratch (truncated), readable by this user only."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
    return os.fdopen(fd, "wb")


def create_private(path: Path) -> None:
    """Create ``path`` empty and private if it does not exist yet (a database file before SQLite opens it)."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
