"""Logging to stderr in fspl's style: ``LEVEL target: message`` (no timestamps).

Levels follow fspl's ``-l/--log-level``: trace, debug, info, warn, error (case-insensitive,
or 1–5 from error to trace).  Default: info.
"""

from __future__ import annotations

import logging
import sys

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(logging.WARNING, "WARN")

LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
          "1": logging.ERROR, "2": logging.WARNING, "3": logging.INFO, "4": logging.DEBUG,
          "5": TRACE}

log = logging.getLogger("fspl_gw")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname:>5} {record.name}: {record.getMessage()}"


def parse_level(text: str) -> int:
    try:
        return LEVELS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {text!r} (trace, debug, info, warn, error)") from None


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Our own messages at the chosen level; third-party libraries (SDKs) one step quieter
    # unless tracing, so that their debug chatter (which may include headers) stays out.
    root.setLevel(level if level <= TRACE else max(level, logging.WARNING))
    log.setLevel(level)
