"""Log lines that say which call they belong to.

Every line logged while a call runs carries its CallSid (the call session sets it
with ``logger.contextualize``; tasks the call starts inherit it), so one call's
story can be pulled out of a busy server's log with grep.
"""

from __future__ import annotations

import os
import sys

from loguru import logger

FORMAT = ("<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
          "<cyan>{extra[call_sid]}</cyan> | {name}:{function} - <level>{message}</level>")


def configure(level: str) -> None:
    """``LOGURU_FORMAT`` in the environment replaces the format, as loguru itself allows."""
    logger.remove()
    logger.configure(extra={"call_sid": "-"})
    logger.add(sys.stderr, level=level.upper(), format=os.environ.get("LOGURU_FORMAT", FORMAT))
