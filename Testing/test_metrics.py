"""SSIM, PSNR and MSE on 3-D volumes (LDAELib.evaluation.similarity): the standard definitions, reference second."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from LDAELib.evaluation.similarity import mse, psnr, ssim


def _phantom(shape=(24, 28, 20), seed: int = 0) -> np.ndarray:
    """A smooth volume in [0, 1]: a sum of random Gaussian blobs, rescaled."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    v = np.zeros(shape)
    for _ in range(12):
        centre, width = rng.uniform(0, 1, 3) * np.array(shape), rng.uniform(2, 6)
        v += rng.uniform(-1, 1) * np.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre)) / (2 * width**2))
    return (v - v.min()) / (v.max() - v.min())


def test_identical_volumes_have_ssim_one_mse_zero_and_infinite_psnr():
    v = _phantom()
    assert ssim(v, v) == pytest.approx(1.0, abs=1e-12)
    assert mse(v, v) == 0.0
    assert psnr(v, v) == math.inf


def test_ssim_drops_monotonically_with_added_noise():
    v = _phantom()
    noise = np.random.default_rng(1).standard_normal(v.shape)
    scores = [ssim(v + s * noise, v) for s in (0.0, 0.01, 0.03, 0.1, 0.3)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] < 0.5


def test_psnr_matches_a_hand_computed_case():
    ref = np.zeros((4, 4, 4))
    ref[0, 0, 0] = 2.0  # data range 2
    a = ref + 0.1  # MSE = 0.01
    assert mse(a, ref) == pytest.approx(0.01)
    assert psnr(a, ref) == pytest.approx(10 * math.log10(4 / 0.01))  # 26.02 dB
    assert psnr(a, ref, data_range=1.0) == pytest.approx(20.0)


def test_default_data_range_is_that_of_the_reference_second_argument():
    ref = _phantom()
    a = 3.0 * _phantom(seed=2)  # a wider range than the reference
    assert ssim(a, ref) == ssim(a, ref, data_range=float(ref.max() - ref.min()))
    assert ssim(a, ref) != ssim(a, ref, data_range=float(a.max() - a.min()))


def test_torch_tensors_and_leading_singleton_axes_give_the_same_numbers():
    a, b = _phantom(seed=3), _phantom(seed=4)
    ta, tb = torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float()
    expected = ssim(a.astype(np.float32), b.astype(np.float32))
    assert ssim(ta, tb) == pytest.approx(expected, abs=1e-12)
    assert ssim(ta.bfloat16(), tb) == pytest.approx(ssim(ta.bfloat16().float(), tb), abs=1e-12)
    assert mse(ta, tb) == pytest.approx(mse(a.astype(np.float32), b.astype(np.float32)))


def test_mismatched_or_too_small_volumes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        ssim(np.zeros((12, 12, 12)), np.zeros((12, 12, 13)))
    with pytest.raises(ValueError, match="11"):
        ssim(np.ones((8, 12, 12)), np.arange(8 * 12 * 12.0).reshape(8, 12, 12))
    with pytest.raises(ValueError, match="data_range"):
        ssim(np.zeros((12, 12, 12)), np.zeros((12, 12, 12)))


def test_ssim_agrees_with_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    a = _phantom((32, 40, 28), seed=5)
    b = np.clip(a + 0.05 * np.random.default_rng(6).standard_normal(a.shape), 0, 1)
    for r in (1.0, float(b.max() - b.min())):
        ref = metrics.structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=r
        )
        assert ssim(a, b, data_range=r) == pytest.approx(ref, abs=1e-6)
