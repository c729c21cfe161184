"""Logging to stderr in fspl's style: ``LEVEL fspl_gw: message`` (no timestamps).

Levels follow fspl's ``-l/--log-level``: trace, debug, info, warn, error (case-insensitive,
or 1–5 from error to trace).  Default: info.

One logger tree for the whole package: :data:`log` (``fspl_gw``) and its children, one
per module, from :func:`get_logger` (``get_logger(__name__)`` in
``fspl_gateway.transports.s3`` is ``fspl_gw.transports.s3``).  Every module logs through
that tree — never ``logging.getLogger(__name__)``, which would sit outside it — so that
``-l debug`` shows a transport's retries and clean-ups like the engine's own messages,
all printed as ``LEVEL fspl_gw: message``.  Every other logger is foreign (boto3,
botocore, s3transfer, urllib3, paramiko, dropbox, watchdog, pycdlib …): those are kept
at warnings and errors unless tracing, so that their debug chatter (which may carry
request headers) stays out.  Every message passes through the one redaction function
(:func:`fspl_gateway.core.redact.redact`).
"""

from __future__ import annotations

import logging
import sys

from fspl_gateway.core.redact import redact

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(logging.WARNING, "WARN")

LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
          "1": logging.ERROR, "2": logging.WARNING, "3": logging.INFO, "4": logging.DEBUG,
          "5": TRACE}

#: The name of our tree, and the target printed for every message of it.
ROOT = "fspl_gw"
PACKAGE = "fspl_gateway"

log = logging.getLogger(ROOT)


def get_logger(module: str) -> logging.Logger:
    """The logger of one of our modules (pass ``__name__``): a child of :data:`log`."""
    if module == ROOT or module.startswith(ROOT + "."):
        return logging.getLogger(module)
    rest = module.removeprefix(PACKAGE).lstrip(".") if module.startswith(PACKAGE) else module
    return logging.getLogger(f"{ROOT}.{rest}" if rest else ROOT)


def is_ours(name: str) -> bool:
    """Whether the logger ``name`` belongs to our tree."""
    return name == ROOT or name.startswith(ROOT + ".")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        target = ROOT if is_ours(record.name) else record.name
        return f"{record.levelname:>5} {target}: {redact(record.getMessage())}"


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
    # Our tree at the chosen level; every foreign logger (they all inherit the root's
    # level) one step quieter, at warnings and errors, unless tracing.
    root.setLevel(level if level <= TRACE else max(level, logging.WARNING))
    log.setLevel(level)
