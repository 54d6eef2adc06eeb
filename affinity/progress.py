"""Progress of long stages: stage name, fraction done and ETA, for the CLI (rich) and the service."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class ProgressEvent:
    stage: str
    done: float
    total: float
    elapsed: float

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed * (self.total - self.done) / self.done


class Progress:
    """Reports stages to a callback; the base class is silent. ``cancelled`` is polled between batches."""

    def __init__(self, callback: Callable[[ProgressEvent], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> None:
        self._callback = callback
        self._cancelled = cancelled
        self._stage = ""
        self._total = 0.0
        self._done = 0.0
        self._t0 = time.perf_counter()

    def start(self, stage: str, total: float) -> None:
        self.check_cancelled()  # between stages
        self._stage, self._total, self._done, self._t0 = stage, float(total), 0.0, time.perf_counter()
        self._emit()

    def advance(self, amount: float = 1.0) -> None:
        self._done += amount
        self._emit()

    def set_total(self, total: float) -> None:
        self._total = float(total)
        self._emit()

    def finish(self) -> None:
        self._done = self._total
        self._emit()

    def check_cancelled(self) -> None:
        if self._cancelled is not None and self._cancelled():
            raise Cancelled(f"cancelled during stage {self._stage!r}")

    def _emit(self) -> None:
        if self._callback is not None:
            self._callback(ProgressEvent(self._stage, self._done, self._total, time.perf_counter() - self._t0))


class Cancelled(Exception):
    """Raised inside a stage when the job was cancelled."""


class RichProgress(Progress):
    """A terminal progress bar per stage (stage, percent, ETA)."""

    def __init__(self) -> None:
        super().__init__()
        from rich.progress import BarColumn, Progress as Bar, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self._bar = Bar(TextColumn("{task.description:<22}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), transient=False)
        self._task = None

    def __enter__(self) -> "RichProgress":
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def start(self, stage: str, total: float) -> None:
        super().start(stage, total)
        if self._task is not None:
            self._bar.update(self._task, completed=self._bar.tasks[self._task].total)
        self._task = self._bar.add_task(stage, total=max(total, 1e-9))

    def _emit(self) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=self._done, total=max(self._total, 1e-9))
