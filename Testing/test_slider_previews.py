"""The alpha slider's preview rules (LDAELib.slicer.slider), on a fake clock: no Qt, no worker."""

from __future__ import annotations

import pytest

from LDAELib.slicer.slider import COMPUTE, PROMOTE, WAIT, PreviewRequest, SliderPreviews


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def slider(clock):
    return SliderPreviews(clock, debounce=0.15)


def test_a_value_set_without_a_press_starts_nothing(slider, clock):
    slider.move(1.5)  # code, the parameter node, a keyboard or wheel step
    slider.release(1.5)
    clock.advance(10)
    assert slider.due_in() is None and slider.take() is None


def test_a_drag_gives_one_quick_preview_per_pause(slider, clock):
    slider.press()
    slider.move(1.0)
    clock.advance(0.1)
    slider.move(0.5)  # still moving: the first one never starts
    assert slider.take() is None and slider.due_in() == pytest.approx(0.15)
    clock.advance(0.15)
    assert slider.take() == PreviewRequest(0.5, full=False)
    assert slider.take() is None  # taken once


def test_release_gives_a_full_quality_preview_at_once(slider, clock):
    slider.press()
    slider.move(-1.0)
    slider.release(-1.2, key="src")
    assert slider.due_in() == 0.0
    assert slider.take() == PreviewRequest(-1.2, full=True, key="src")
    assert not slider.dragging


def test_apply_keeps_the_finished_full_preview_for_the_same_alpha_and_settings(slider):
    full = PreviewRequest(2.0, True, "k")
    slider.started(full)
    assert slider.finished(full, ok=True) is None
    assert slider.apply(2.0, "k") == PROMOTE
    assert slider.apply(2.5, "k") == COMPUTE
    assert slider.apply(2.0, "other settings") == COMPUTE


def test_a_quick_preview_is_never_kept(slider):
    quick = PreviewRequest(2.0, False, "k")
    slider.started(quick)
    slider.finished(quick, ok=True)
    assert slider.apply(2.0, "k") == COMPUTE


def test_apply_waits_for_the_running_full_preview_then_keeps_it(slider):
    full = PreviewRequest(2.0, True, "k")
    slider.started(full)
    assert slider.apply(2.0, "k") == WAIT
    assert slider.finished(full, ok=True) == PROMOTE


def test_apply_computes_when_the_preview_it_waited_for_failed(slider):
    full = PreviewRequest(2.0, True, "k")
    slider.started(full)
    slider.apply(2.0, "k")
    assert slider.finished(full, ok=False) == COMPUTE


def test_a_superseded_preview_counts_for_nothing(slider):
    first, second = PreviewRequest(1.0, True, "k"), PreviewRequest(1.5, False, "k")
    slider.started(first)
    slider.started(second)
    assert slider.finished(first, ok=True) is None
    assert slider.apply(1.0, "k") == COMPUTE


def test_apply_drops_a_preview_not_yet_started(slider, clock):
    slider.press()
    slider.move(3.0)
    slider.apply(3.0)
    clock.advance(1)
    assert slider.take() is None


def test_reset_forgets_the_drag_and_the_previews(slider):
    slider.press()
    slider.started(PreviewRequest(1.0, True))
    slider.finished(PreviewRequest(1.0, True), ok=True)
    slider.reset()
    slider.move(2.0)
    assert slider.due_in() is None and slider.apply(1.0) == COMPUTE
