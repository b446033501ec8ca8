"""Progress bars of the long CLI operations (host bootstrap, DNS sync of every zone, bulk
redeploy): on stderr, and only when stderr is a terminal (scripts and cron see none)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[str | None], None]]:
    """Yields ``step(label)``: one unit done (``label``, if given, becomes the description)."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task(description, total=total)

        def step(label: str | None = None) -> None:
            if label is not None:
                progress.update(task, description=label)
            progress.advance(task)

        yield step
