"""Progress of the long stages (compute, analyses, plots, report) on the terminal.

:class:`Progress` draws one rich progress bar per stage on stderr when it is a terminal and
nothing otherwise (or with ``quiet``); code that reports progress only calls :meth:`stage`.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["Progress", "NO_PROGRESS"]


def _nothing(n: int = 1) -> None:
    return None


class Progress:
    """Stage progress bars.  ``with progress.stage("compute", total=12) as advance:
    advance(1)``."""

    def __init__(self, quiet: bool = False) -> None:
        self.enabled = not quiet and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

    @contextmanager
    def stage(self, name: str, total: "int | None" = None) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield _nothing
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        bar = RichProgress(TextColumn("{task.description:<10}"), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                           console=Console(stderr=True), transient=True)
        with bar:
            task: Any = bar.add_task(name, total=total)

            def advance(n: int = 1) -> None:
                bar.advance(task, n)

            yield advance


#: A Progress that shows nothing.
NO_PROGRESS = Progress(quiet=True)
