"""DDIM schedules and guided steps reproduce the official arrays and per-step states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LDAELib.diffusion.ddim import ddim_step, guided_eps, timestep
from LDAELib.diffusion.schedule import ddim_schedule, linear_alphas_cumprod
from conftest import load_fixture, rel_err

ARRAYS = ("alphas_cumprod_prev", "alphas_cumprod_next", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recip_alphas_cumprod_m1")


def test_base_schedule_matches_official():
    ref = load_fixture("schedules.pt")["gaussian_diffusion"]["alphas_cumprod"]
    ours = linear_alphas_cumprod()
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-6, atol=0)
    assert ours[0] == pytest.approx(0.9999, abs=1e-7)


@pytest.mark.parametrize("steps", [3, 10, 20, 50, 100])
def test_ddim_subschedule_matches_official(steps):
    ref = load_fixture("schedules.pt")[f"ddim{steps}"]
    ours = ddim_schedule(steps)
    assert ours.timesteps.tolist() == np.asarray(ref["timestep_map"]).tolist()  # exact
    assert ours.num_steps == steps
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(ours, name), np.asarray(ref[name]), rtol=1e-6, atol=0, err_msg=name)


def test_ddim10_timesteps_are_the_authors():
    assert ddim_schedule(10).timesteps.tolist() == [0, 99, 199, 299, 399, 499, 599, 699, 799, 899, 999]


def test_every_guided_step_matches_official(official_model):
    ref = load_fixture("pipeline_autoencode_ddim3.pt")
    sched = ddim_schedule(3)
    net = official_model.shift_unet
    with torch.inference_mode():
        for st in ref["steps"]:
            k = int(st["ddim_index"])
            eps, g = net(st["x_t"], timestep(sched, k, st["x_t"].shape[0], st["x_t"].device), st["y_sem"])
            eps_hat = guided_eps(eps, g, k, sched)
            assert rel_err(eps_hat, st["eps_shifted"]) < 1e-3
            x_next = ddim_step(st["x_t"], eps_hat, k, sched, inverse=st["kind"] == "encode")
            assert rel_err(x_next, st["x_next"]) < 1e-3, (st["kind"], k)


def test_invalid_step_counts_are_refused():
    with pytest.raises(ValueError):
        ddim_schedule(0)
    with pytest.raises(ValueError):
        ddim_schedule(1000)
