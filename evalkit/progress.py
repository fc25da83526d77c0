"""Progress bars for the three phases of a run (loading, generation, scoring).

Bars go to stderr through rich; ``Silent`` is used by the Python API when asked for no output.
"""

from __future__ import annotations

from contextlib import contextmanager

from evalkit.errors import raise_if_stopped


class Phase:
    """One phase's progress. Every step of it is a safe point where a stop that a signal asked for is raised (see
    :func:`evalkit.errors.raise_if_stopped`), whether or not a bar is drawn."""

    def __init__(self, progress=None, task=None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        raise_if_stopped()
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, *, completed: int | None = None, status: str | None = None, total: int | None = None) -> None:
        """Set what is done, the status line, or the total (a phase whose total was an upper bound ends at what
        it did)."""
        raise_if_stopped()
        if self._progress is not None:
            kwargs = {"completed": completed} if completed is not None else {}
            if total is not None:
                kwargs["total"] = total
            if status is not None:
                kwargs["status"] = status
            self._progress.update(self._task, **kwargs)


class Silent:
    @contextmanager
    def phase(self, description: str, total: int | None = None):
        yield Phase()

    def note(self, message: str) -> None:
        """A line the user should read (something set aside, something redone); silent here."""


class Quiet(Silent):
    """No progress bars (``--quiet``), but the notes a user must read still go to stderr."""

    def note(self, message: str) -> None:
        import sys

        print(f"note: {message}", file=sys.stderr, flush=True)


class RichProgress:
    def __init__(self, console=None):
        import sys

        from rich.console import Console

        self.console = console or Console(file=sys.stderr)  # bound now: a library's redirect cannot hide it

    def note(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)

    @contextmanager
    def phase(self, description: str, total: int | None = None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = [SpinnerColumn(), TextColumn("[bold]{task.description:<10}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn()]
        else:
            columns += [TimeElapsedColumn()]
        columns.append(TextColumn("[dim]{task.fields[status]}"))
        progress = Progress(*columns, console=self.console, transient=False)
        progress.start()
        task = progress.add_task(description, total=total, status="")
        try:
            yield Phase(progress, task)
        except BaseException:
            progress.live.transient = True  # the error line alone is what the user reads: erased in a terminal,
            progress.live.stop()  # and off one without Progress.stop's closing empty line
            raise
        if total is None:
            progress.update(task, total=1, completed=1, status="done")
        progress.stop()
