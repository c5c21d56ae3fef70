"""Progress and cancel for long operations: one bar over all the network calls of an operation.

A front end passes ``progress(done, total, stage)`` and ``cancel() -> bool``. An operation knows
its cost in network calls before it starts (cache hits make the bar jump ahead) and reports after
each call; ``cancel`` is checked before each. An operation made of several parts (encode two
scans, then sample) gives each part its ``phase`` of one bar.
"""

from __future__ import annotations

from typing import Callable

from ..errors import Cancelled

ProgressCallback = Callable[[int, int, str], None]
"""progress(done, total, stage): done/total count network calls of the whole operation."""
CancelCallback = Callable[[], bool]
"""cancel() → True when the caller wants the computation stopped (checked before each network call)."""


class Progress:
    """Counts the network calls of one operation into ``callback`` and checks ``cancel``."""

    def __init__(self, total: int, callback: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> None:
        self.total, self.done, self.callback, self.cancel = total, 0, callback, cancel

    def check(self) -> None:
        """Raise ``Cancelled`` when the caller asked to stop."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")

    def advance(self, stage: str, n: int = 1) -> None:
        self.done += n
        if self.callback:
            self.callback(min(self.done, self.total), self.total, stage)


class Phases:
    """One bar over an operation made of parts: ``phase(cost)`` gives a part its own progress
    callback, whose counts are offset by the parts before it."""

    def __init__(self, report: ProgressCallback | None, total: int) -> None:
        self.report, self.total, self.offset = report, max(1, total), 0

    def phase(self, cost: int) -> ProgressCallback:
        start = self.offset
        self.offset += cost

        def callback(done: int, _total: int, stage: str) -> None:
            if self.report is not None:
                self.report(min(start + done, self.total), self.total, stage)

        return callback
