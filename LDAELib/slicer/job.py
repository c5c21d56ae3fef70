"""One request to the worker, as the Slicer side follows it (``Job``): its state, progress and results."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, LDAEError


class Job:
    """One request to the worker, seen from the Slicer side (``adapter``: the LDAESlicerAdapter that made it).

    state: "running", "done", "error" or "cancelled". ``progress``: the last progress message
    (done, total, stage, eta). ``nodes``: the new nodes once done. ``error``: the message.
    Callbacks ``on_progress(job, msg)`` and ``on_done(job)`` run on the polling thread.
    """

    def __init__(self, adapter, request_id: int, kind: str, build: Callable[[dict], list], out_dir: Path | None) -> None:
        self.adapter, self.id, self.kind = adapter, request_id, kind
        self._build, self.out_dir = build, out_dir
        self.state = "running"
        self.progress: dict | None = None
        self.result: dict | None = None
        self.nodes: list = []
        self.error: str | None = None
        self.started = time.monotonic()
        self.on_progress: Callable[["Job", dict], None] | None = None
        self.on_done: Callable[["Job"], None] | None = None

    @property
    def done(self) -> bool:
        return self.state != "running"

    def poll(self) -> bool:
        """Handle what the worker sent so far; True once this job has ended."""
        self.adapter.poll()
        return self.done

    def wait(self, idle: Callable[[], None] | None = None, timeout: float | None = None) -> list:
        """Block until the job ends; returns its nodes, raises LDAEError or Cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            self.adapter.poll(0.05 if idle is None else 0.0)
            if idle is not None:
                idle()
                time.sleep(0.02)
            if deadline is not None and time.monotonic() > deadline and not self.done:
                self.cancel()
                raise LDAEError(f"LDAE {self.kind} did not finish within {timeout:g} s and was stopped")
        if self.state == "error":
            raise LDAEError(self.error)
        if self.state == "cancelled":
            raise Cancelled(f"LDAE {self.kind} was cancelled; nothing was added to the scene")
        return self.nodes

    def cancel(self, kill: bool = True) -> None:
        """Stop the job. ``kill`` ends the worker's whole process tree at once (the model is
        loaded again on the next run); ``kill=False`` asks the warm worker to stop at its next
        network call."""
        self.adapter.cancel(self, kill=kill)

    # ------------------------------------------------------------------ (adapter side)
    def _finish(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        if self.out_dir is not None:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        if self.on_done is not None:
            self.on_done(self)
