"""The runs of one LDAE panel and what the panel says about them. No Qt.

At most one main job runs at a time (Apply, Reconstruct, Interpolate, Variations); beside it, the
slider's previews (when they start: ``slider.SliderPreviews``) and a background encode that
prepares the slider for the chosen scan. The panel forwards what the user does, calls ``poll``
from a timer while ``polling`` is true, and shows ``status``, ``progress``, ``busy`` and
``can_cancel`` whenever ``on_change`` is called.

Jobs are the adapter's (``LDAELib.slicer.adapter.Job``) or anything with ``state``, ``done``,
``nodes``, ``error``, ``result``, ``on_progress``, ``on_done`` and ``cancel(kill)``. Operations come
in as callables that return such a job, so this class knows nothing of the Logic or of Slicer.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable

from .panel_text import progress_status
from .slider import COMPUTE, PROMOTE, WAIT, PreviewRequest, SliderPreviews


class PanelRuns:
    """See the module docstring.

    Args:
        show: called with a finished job whose nodes should be shown (the Logic's ``showResults``).
        report_error: called with a message for a failed main job (an error dialog in Slicer).
        is_starting: whether the worker is still loading the model (keep polling meanwhile).
        on_change: called whenever what the panel shows changed.
        clock, debounce: for the slider's previews (seconds).
    """

    def __init__(self, show: Callable = lambda job: None, report_error: Callable[[str], None] = lambda text: None,
                 is_starting: Callable[[], bool] = lambda: False, on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic, debounce: float = 0.15) -> None:
        self.show, self.report_error, self.is_starting = show, report_error, is_starting
        self.previews = SliderPreviews(clock, debounce)
        self.job = self.preview_job = self.warm_job = None
        self._preview_request: PreviewRequest | None = None
        self._warmed: Hashable = None
        self._compute_after_wait: Callable | None = None
        self._promote_after_wait: Callable | None = None
        self.status, self.progress = "", (0, 0)
        self.on_change = on_change

    # ------------------------------------------------------------------ what the panel shows
    @property
    def busy(self) -> bool:
        """A main job runs (the progress bar is shown, the run buttons are disabled)."""
        return self.job is not None

    @property
    def can_cancel(self) -> bool:
        return self.job is not None or self.preview_job is not None

    @property
    def polling(self) -> bool:
        """Whether the worker still has something to report."""
        return self.can_cancel or (self.warm_job is not None and not self.warm_job.done) or self.is_starting()

    def _say(self, text: str) -> None:
        self.status = text
        self.on_change()

    # ------------------------------------------------------------------ main jobs
    def run(self, start: Callable[[], object], what: str):
        """Start a main job (``start()`` returns it); its progress and end update the panel."""
        self.previews.pending = None
        job = start()
        self.job, self.progress = job, (0, 0)
        job.on_progress, job.on_done = self._on_progress, self._on_done
        self._say(what + "…")
        return job

    def _on_progress(self, job, msg: dict) -> None:
        if job is self.job:
            self.progress = (msg.get("done", 0), msg.get("total", 0))
            self._say(progress_status(msg))

    def _on_done(self, job) -> None:
        if job is not self.job:
            return
        self.job = None
        if job.state == "done":
            self.show(job)
            self._say(f"Done in {(job.result or {}).get('seconds', 0):.1f} s: {len(job.nodes)} new node(s).")
        elif job.state == "cancelled":
            self._say("Cancelled: nothing was added to the scene.")
        else:
            self._say(f"Failed: {job.error}")
            self.report_error(f"LDAE failed: {job.error}")

    def apply(self, alpha: float, key: Hashable, promote: Callable[[], list | None], compute: Callable[[], object]) -> None:
        """Apply an edit: keep the full-quality preview when it fits (``promote()`` returns the kept
        nodes), wait for it when it is still running, else ``compute()`` (a main job)."""
        action = self.previews.apply(alpha, key)
        if action == WAIT:
            self._promote_after_wait, self._compute_after_wait = promote, compute
            self._say("Apply: keeping the full-quality preview once it is ready…")
            return
        kept = promote() if action == PROMOTE else None
        if kept:
            self.previews.reset()
            self._say(f"Kept the full-quality preview as {kept[0].GetName()}.")
            return
        self._cancel_preview()
        self.run(compute, "Editing")

    # ------------------------------------------------------------------ preparing the slider
    def prepare(self, key: Hashable, start: Callable[[], object], name: str) -> None:
        """Encode the scan in the background (``start()`` returns the job) so the first slider move
        only samples and decodes; once per ``key`` (scan and settings), never during another run."""
        if key == self._warmed or self.job is not None or (self.warm_job is not None and not self.warm_job.done):
            return
        self._warmed = key
        try:
            self.warm_job = start()
        except Exception as err:  # preparing is an optimisation: it never shows a dialog
            self._say(f"Could not prepare the slider: {err}")
            return
        self.warm_job.on_done = self._on_prepared
        self._say(f"Preparing the slider for {name}…")

    def _on_prepared(self, job) -> None:
        if job.state == "error":
            self._warmed = None
            self._say(f"Could not prepare the slider: {job.error}")
        elif job.state == "done":
            self._say(f"Ready: drag the slider for a preview ({(job.result or {}).get('seconds', 0):.0f} s to prepare).")

    # ------------------------------------------------------------------ previews while dragging
    def slider_pressed(self) -> None:
        self.previews.press()

    def slider_moved(self, alpha: float) -> float | None:
        """Returns when (seconds) to call ``start_due_preview``, or None."""
        self.previews.move(alpha)
        return self.previews.due_in()

    def slider_released(self, alpha: float, key: Hashable) -> float | None:
        self.previews.release(alpha, key)
        return self.previews.due_in()

    def start_due_preview(self, start: Callable[[PreviewRequest], object]) -> None:
        """Start the preview that is due (``start(request)`` returns its job); a newer one
        supersedes the one running, which the warm worker drops at its next network call."""
        request = self.previews.take()
        if request is None or self.job is not None:
            return
        try:
            job = start(request)
        except Exception as err:  # a preview never shows a dialog
            self._say(f"Preview not possible: {err}")
            return
        self._cancel_preview()
        self.previews.started(request)
        self.preview_job, self._preview_request = job, request
        job.on_progress = lambda j, msg: self._say(f"Preview (α={request.alpha:+.1f}): {msg.get('stage', '')}") if j is self.preview_job else None
        job.on_done = self._on_preview_done
        self.on_change()

    def _on_preview_done(self, job) -> None:
        if job is not self.preview_job:
            return
        request, self.preview_job, self._preview_request = self._preview_request, None, None
        if job.state == "done":
            self.show(job)
            self._say(f"Preview α={job.nodes[0].GetAttribute('LDAE.Alpha')} ready in {(job.result or {}).get('seconds', 0):.1f} s (Apply keeps it).")
        elif job.state == "error":
            self._say(f"Preview failed: {job.error}")
        else:
            self.on_change()
        then = self.previews.finished(request, job.state == "done")
        promote, compute = self._promote_after_wait, self._compute_after_wait
        self._promote_after_wait = self._compute_after_wait = None
        if then == PROMOTE and promote is not None:
            kept = promote()
            if kept:
                self.previews.reset()
                self._say(f"Kept the full-quality preview as {kept[0].GetName()}.")
                return
        if then in (PROMOTE, COMPUTE) and compute is not None:
            self.run(compute, "Editing")

    def _cancel_preview(self) -> None:
        if self.preview_job is not None and not self.preview_job.done:
            self.preview_job.cancel(kill=False)

    # ------------------------------------------------------------------ stopping
    def drop_all(self, text: str = "The scene was closed: its runs were stopped; nothing was added.") -> None:
        """Stop every run softly (the warm worker drops them at its next network call and keeps the
        model loaded) and forget them, so whatever they still report is ignored (a scene close)."""
        for job in (self.job, self.preview_job, self.warm_job):
            if job is not None and not job.done:
                job.cancel(kill=False)
        self.stopped(text)

    def stopped(self, text: str = "Cancelled: nothing was added to the scene. The model is loaded again on the next run.") -> None:
        """Everything was stopped (Cancel, scene close, new model): forget every run."""
        self.job = self.preview_job = self.warm_job = self._preview_request = self._warmed = None
        self._promote_after_wait = self._compute_after_wait = None
        self.previews.reset()
        self._say(text)
