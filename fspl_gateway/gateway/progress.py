"""A progress bar for the pull and push engines: rich on stderr when it is a terminal
(rich imported only then), otherwise a no-op."""

from __future__ import annotations

import logging
import sys
from typing import Any

from fspl_gateway.core.log import log


class Progress:
    """``enabled=None``: a bar when stderr is a terminal, the log level shows info and
    there is something to do."""

    def __init__(self, enabled: bool | None, total: int, description: str) -> None:
        if enabled is None:
            enabled = (sys.stderr.isatty() and log.getEffectiveLevel() <= logging.INFO
                       and total > 0)
        self._bar: Any = None
        self._task: Any = None
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        self._bar = RichProgress(console=Console(stderr=True), transient=True)
        self._task = self._bar.add_task(description, total=total)
        self._bar.start()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
