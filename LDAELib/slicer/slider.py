"""When the alpha slider's previews run: a small state machine with no Qt in it.

The panel tells it what the user does (``press``, ``move``, ``release``); a single-shot timer asks
``due_in()`` how long to wait and ``take()`` what to start; the jobs report back (``started``,
``finished``); Apply asks ``apply()`` whether it can keep a preview. Times come from ``clock`` (seconds,
``time.monotonic`` by default), so tests step a fake clock.

The rules:

* Only a drag starts previews: quick ones (few steps, the slices on screen) while the slider moves,
  one per pause of ``debounce`` seconds, and one at full quality as soon as it is released. A value
  set any other way (by code, the parameter node, a scene load, a keyboard or wheel step) starts
  nothing: ``move`` outside a press is ignored. CTK's ``ctkSliderWidget`` emits
  ``valueIsChanging`` for all of those, so the panel cannot tell a drag from that signal alone; it
  tells from the inner slider's ``sliderPressed`` / ``sliderReleased``.
* Apply keeps the full-quality preview when it was made for the same alpha and settings
  (``PROMOTE``); when that preview is still running, Apply waits for it (``WAIT``) and ``finished``
  then answers ``PROMOTE`` (or ``COMPUTE`` if it failed); otherwise Apply computes (``COMPUTE``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Hashable

PROMOTE, WAIT, COMPUTE = "promote", "wait", "compute"


@dataclass(frozen=True)
class PreviewRequest:
    """A preview to start: ``alpha``; ``full``: full quality on the whole volume (after release),
    else quick; ``key``: what else the result depends on (source, direction, steps…)."""

    alpha: float
    full: bool
    key: Hashable = None


class SliderPreviews:
    """See the module docstring. ``debounce``: seconds of stillness before a quick preview starts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, debounce: float = 0.15) -> None:
        self.clock, self.debounce = clock, float(debounce)
        self.dragging = False
        self.pending: PreviewRequest | None = None
        self._due: float | None = None
        self.running: PreviewRequest | None = None
        self.ready: PreviewRequest | None = None
        self.apply_waiting = False

    # ------------------------------------------------------------------ what the user does
    def press(self) -> None:
        """The slider's handle was grabbed."""
        self.dragging = True

    def move(self, alpha: float, key: Hashable = None) -> None:
        """The value changed; a quick preview after ``debounce`` of stillness, if this is a drag."""
        if not self.dragging:
            return
        self.pending = PreviewRequest(float(alpha), False, key)
        self._due = self.clock() + self.debounce

    def release(self, alpha: float, key: Hashable = None) -> None:
        """The handle was let go: a full-quality preview at once (none without a press)."""
        if not self.dragging:
            return
        self.dragging = False
        self.pending = PreviewRequest(float(alpha), True, key)
        self._due = self.clock()

    # ------------------------------------------------------------------ the timer
    def due_in(self) -> float | None:
        """Seconds until the pending preview should start (0 when due); None when none is pending."""
        if self.pending is None:
            return None
        return max(0.0, self._due - self.clock())

    def take(self) -> PreviewRequest | None:
        """The pending preview if it is due now (it is then no longer pending), else None."""
        if self.pending is None or self.clock() < self._due:
            return None
        request, self.pending, self._due = self.pending, None, None
        return request

    # ------------------------------------------------------------------ the jobs
    def started(self, request: PreviewRequest) -> None:
        """A preview job started (it supersedes the one running, whose result will not count)."""
        self.running = request
        self.ready = None

    def finished(self, request: PreviewRequest, ok: bool) -> str | None:
        """A preview job ended. Returns what a waiting Apply should do now (PROMOTE or COMPUTE), else None."""
        if request != self.running:
            return None  # superseded
        self.running = None
        if ok and request.full:
            self.ready = request
        if not self.apply_waiting:
            return None
        self.apply_waiting = False
        return PROMOTE if ok and request.full else COMPUTE

    def apply(self, alpha: float, key: Hashable = None) -> str:
        """What Apply should do for ``alpha``: PROMOTE, WAIT (for the running full preview) or COMPUTE."""
        wanted = PreviewRequest(float(alpha), True, key)
        self.pending, self._due = None, None
        if self.ready == wanted:
            return PROMOTE
        if self.running == wanted:
            self.apply_waiting = True
            return WAIT
        return COMPUTE

    def reset(self) -> None:
        """Forget everything (the worker was stopped, the scene closed, the scan changed)."""
        self.dragging = False
        self.pending = self._due = self.running = self.ready = None
        self.apply_waiting = False
