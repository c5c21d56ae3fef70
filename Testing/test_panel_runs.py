"""The panel's runs (LDAELib.slicer.session.PanelRuns) with fake jobs and a fake clock: what runs,
what the panel says, and Apply keeping, waiting for or recomputing the full-quality preview."""

from __future__ import annotations

import types

import pytest

from LDAELib.slicer.session import PanelRuns


class FakeJob:
    def __init__(self, alpha=None) -> None:
        self.state, self.nodes, self.error, self.result = "running", [], None, {"seconds": 1.5}
        self.on_progress = self.on_done = None
        self.alpha, self.cancelled = alpha, None

    @property
    def done(self) -> bool:
        return self.state != "running"

    def finish(self, state="done", nodes=(), error=None) -> None:
        self.state, self.nodes, self.error = state, list(nodes), error
        self.on_done(self)

    def cancel(self, kill=True) -> None:
        self.cancelled = "kill" if kill else "soft"


def node(name, alpha="+1"):
    return types.SimpleNamespace(GetName=lambda: name, GetAttribute=lambda key: alpha if key == "LDAE.Alpha" else None)


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def panel():
    shown, errors, changes = [], [], []
    clock = Clock()
    runs = PanelRuns(show=shown.append, report_error=errors.append, on_change=lambda: changes.append(1), clock=clock)
    return types.SimpleNamespace(runs=runs, shown=shown, errors=errors, changes=changes, clock=clock)


def test_a_run_shows_progress_then_its_result(panel):
    job = panel.runs.run(FakeJob, "Editing")
    assert panel.runs.busy and panel.runs.can_cancel and panel.runs.status == "Editing…" and panel.runs.polling
    job.on_progress(job, {"done": 3, "total": 22, "stage": "inversion", "eta": 8})
    assert panel.runs.progress == (3, 22) and panel.runs.status.startswith("inversion: step 3/22")
    job.finish("done", [node("visit1 LDAE cn α=+1.0")])
    assert not panel.runs.busy and panel.shown == [job] and panel.runs.status == "Done in 1.5 s: 1 new node(s)."


def test_a_failed_run_says_why_and_shows_an_error(panel):
    job = panel.runs.run(FakeJob, "Editing")
    job.finish("error", error="out of memory")
    assert panel.runs.status == "Failed: out of memory" and panel.errors == ["LDAE failed: out of memory"] and panel.shown == []


def test_a_cancelled_run_adds_nothing(panel):
    job = panel.runs.run(FakeJob, "Editing")
    job.finish("cancelled")
    assert panel.shown == [] and panel.runs.status.startswith("Cancelled")


def test_the_slider_is_prepared_once_per_scan_and_settings(panel):
    starts = []

    def start():
        starts.append(FakeJob())
        return starts[-1]

    panel.runs.prepare(("scan", 10), start, "visit1")
    panel.runs.prepare(("scan", 10), start, "visit1")
    assert len(starts) == 1 and panel.runs.status == "Preparing the slider for visit1…" and panel.runs.polling
    starts[0].finish("done")
    panel.runs.prepare(("scan", 10), start, "visit1")
    panel.runs.prepare(("scan", 20), start, "visit1")
    assert len(starts) == 2


def test_preparing_never_shows_a_dialog(panel):
    def start():
        raise RuntimeError("no worker")

    panel.runs.prepare("k", start, "visit1")
    assert panel.runs.status == "Could not prepare the slider: no worker" and panel.errors == []


def test_a_drag_starts_a_quick_preview_after_a_pause_and_a_full_one_at_release(panel):
    started = []
    runs = panel.runs
    runs.slider_pressed()
    assert runs.slider_moved(1.0) == pytest.approx(0.15)
    panel.clock.now += 0.2
    runs.start_due_preview(lambda r: started.append(r) or FakeJob(r.alpha))
    assert [(r.alpha, r.full) for r in started] == [(1.0, False)] and runs.can_cancel and not runs.busy
    first = runs.preview_job
    assert runs.slider_released(0.5, "k") == 0.0
    runs.start_due_preview(lambda r: started.append(r) or FakeJob(r.alpha))
    assert [(r.alpha, r.full) for r in started][-1] == (0.5, True)
    assert first.cancelled == "soft"  # superseded: the warm worker drops it


def test_a_value_set_without_a_drag_starts_no_preview(panel):
    assert panel.runs.slider_moved(3.0) is None
    panel.clock.now += 10
    panel.runs.start_due_preview(lambda r: pytest.fail("a preview started"))


def _full_preview(panel, alpha=2.0, key="k"):
    panel.runs.slider_pressed()
    panel.runs.slider_released(alpha, key)
    panel.runs.start_due_preview(lambda r: FakeJob(r.alpha))
    return panel.runs.preview_job


def test_apply_keeps_the_finished_full_preview(panel):
    job = _full_preview(panel)
    job.finish("done", [node("visit1 LDAE preview", "+2")])
    kept = node("visit1 LDAE cn α=+2.0")
    panel.runs.apply(2.0, "k", promote=lambda: [kept], compute=lambda: pytest.fail("recomputed"))
    assert panel.runs.status == "Kept the full-quality preview as visit1 LDAE cn α=+2.0." and not panel.runs.busy


def test_apply_waits_for_the_running_full_preview_then_keeps_it(panel):
    job = _full_preview(panel)
    kept = []
    panel.runs.apply(2.0, "k", promote=lambda: kept.append(1) or [node("visit1 LDAE cn α=+2.0")], compute=lambda: pytest.fail("recomputed"))
    assert "once it is ready" in panel.runs.status and kept == []
    job.finish("done", [node("visit1 LDAE preview", "+2")])
    assert kept == [1] and panel.runs.status.startswith("Kept the full-quality preview")


def test_apply_computes_when_the_preview_it_waited_for_failed(panel):
    job = _full_preview(panel)
    computed = []
    panel.runs.apply(2.0, "k", promote=lambda: pytest.fail("kept a failed preview"), compute=lambda: computed.append(FakeJob()) or computed[-1])
    job.finish("error", error="boom")
    assert len(computed) == 1 and panel.runs.busy


def test_apply_for_another_alpha_computes_and_stops_the_preview(panel):
    job = _full_preview(panel, alpha=2.0)
    panel.runs.apply(1.0, "k", promote=lambda: pytest.fail("kept"), compute=FakeJob)
    assert panel.runs.busy and job.cancelled == "soft"


def test_stopping_forgets_every_run(panel):
    _full_preview(panel)
    panel.runs.run(FakeJob, "Editing")
    panel.runs.stopped()
    assert not panel.runs.busy and not panel.runs.can_cancel and panel.runs.status.startswith("Cancelled")


def test_a_scene_close_stops_every_run_softly_and_ignores_what_they_report_later(panel):
    preview = _full_preview(panel)
    main = panel.runs.run(FakeJob, "Editing")
    panel.runs.drop_all()
    assert main.cancelled == "soft" and preview.cancelled == "soft"
    assert not panel.runs.can_cancel and "scene was closed" in panel.runs.status
    main.finish("error", error="'visit1' was removed from the scene")
    assert panel.errors == [] and panel.shown == []
