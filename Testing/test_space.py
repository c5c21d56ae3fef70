"""Model space: the authors' stage-B preprocessing (MONAI) and its geometric inverse."""

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, ResizeWithPadOrCropd, ScaleIntensityd, Spacingd

from LDAELib.errors import LDAEError
from LDAELib.space import (
    ModelSpaceConfig,
    antialias_sigmas,
    SpaceContext,
    from_model_space,
    model_space_identity,
    to_model_space,
    validate_volume,
)

MNI_SHAPE = (182, 218, 182)
MNI_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])


def world_grid(shape, affine):
    """World (mm) coordinates of every voxel centre, as three (I,J,K) arrays."""
    idx = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij", sparse=True)
    return [sum(affine[d, c] * idx[c] for c in range(3)) + affine[d, 3] for d in range(3)]


def world_pattern(shape, affine, peak=1000.0):
    """A smooth pattern defined in world millimetres (so the same object on any grid, rotated or not):
    an ellipsoid (~140×170×120 mm, centred near the MNI origin) on a 0 background, with slow internal
    structure so correlation is not decided by the edge alone. Unlike ``LDAELib.testing.phantom_brain``
    (voxel-defined), it is what resampling tests need."""
    x, y, z = world_grid(shape, affine)
    r = np.sqrt((x / 70.0) ** 2 + ((y + 18.0) / 85.0) ** 2 + ((z - 10.0) / 60.0) ** 2)
    mask = 1.0 / (1.0 + np.exp((r - 1.0) / 0.04))
    texture = 0.6 + 0.25 * np.sin(x / 9.0) * np.cos(y / 11.0) + 0.15 * np.cos(z / 7.0)
    return (peak * mask * texture).astype(np.float32)


def object_correlation(a, b, ref):
    inside = ref > 0.05 * ref.max()
    return float(np.corrcoef(a[inside].astype(np.float64), b[inside].astype(np.float64))[0, 1])


def rotation(axis, degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [d for d in range(3) if d != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


@pytest.fixture(scope="module")
def mni_volume():
    return world_pattern(MNI_SHAPE, MNI_AFFINE)


@pytest.fixture(scope="module")
def mni_forward(mni_volume):
    return to_model_space(mni_volume, MNI_AFFINE)


def monai_reference(data, affine, spacing, shape):
    """The authors' stage-B transforms, composed directly (after LoadImaged + EnsureChannelFirstd)."""
    img = MetaTensor(torch.from_numpy(data.astype(np.float32)[None].copy()), affine=torch.from_numpy(affine.copy()))
    pipe = Compose([
        Spacingd(keys="image", pixdim=spacing),
        ResizeWithPadOrCropd(keys="image", spatial_size=shape, mode="minimum"),
        ScaleIntensityd(keys="image", minv=0, maxv=1),
    ])
    out = pipe({"image": img})["image"]
    return out.as_tensor().numpy()[0], out.affine.numpy()


def test_output_is_float32_model_shape_in_unit_range(mni_forward):
    x, ctx = mni_forward
    assert x.shape == (128, 160, 128)
    assert x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert ctx.resampled and ctx.model_shape == (128, 160, 128)


def test_forward_matches_monai_compose(mni_volume, mni_forward):
    x, ctx = mni_forward
    ref, ref_affine = monai_reference(mni_volume, MNI_AFFINE, 1.5, (128, 160, 128))
    assert np.max(np.abs(x - ref)) <= 1e-6
    np.testing.assert_allclose(ctx.model_affine, ref_affine, atol=1e-9)


def test_mni_model_grid_affine_is_spacing_affine_shifted_by_padding(mni_forward):
    # 182×218×182 @ 1 mm → 122×146×122 @ 1.5 mm → padded 3/3, 7/7, 3/3.
    _, ctx = mni_forward
    expected = np.diag([-1.5, 1.5, 1.5, 1.0])
    expected[:3, 3] = np.array([90.0, -126.0, -72.0]) - expected[:3, :3] @ [3, 7, 3]
    np.testing.assert_allclose(ctx.model_affine, expected, atol=1e-9)


def test_point_lands_where_model_affine_says():
    p = np.array([25.0, -40.0, 12.0])  # off-centre on every axis, so a sign or offset error shows
    x, y, z = world_grid(MNI_SHAPE, MNI_AFFINE)
    blob = np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 2.5**2)).astype(np.float32)
    m, ctx = to_model_space(blob, MNI_AFFINE)
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in m.shape), indexing="ij")).reshape(3, -1)
    w = m.reshape(-1).astype(np.float64)
    centroid = (idx * w).sum(axis=1) / w.sum()
    world = ctx.model_affine[:3, :3] @ centroid + ctx.model_affine[:3, 3]
    np.testing.assert_allclose(world, p, atol=0.1)


def test_round_trip_mni_reproduces_input(mni_volume, mni_forward):
    x, ctx = mni_forward
    back = from_model_space(x, ctx)
    assert back.shape == MNI_SHAPE and back.dtype == np.float32
    assert object_correlation(back, mni_volume, mni_volume) >= 0.99
    # intensities back in the original units and range
    assert back.min() == pytest.approx(mni_volume.min(), abs=1e-3)
    assert back.max() == pytest.approx(mni_volume.max(), rel=0.02)
    assert np.abs(back - mni_volume).mean() < 0.01 * mni_volume.max()


def test_round_trip_anisotropic_oblique_input():
    shape = (150, 180, 50)
    affine = np.eye(4)
    affine[:3, :3] = rotation(0, 12.0) @ rotation(2, -20.0) @ np.diag([1.0, 1.0, 3.0])
    # centre the grid on the world origin, where the brain is
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    vol = world_pattern(shape, affine, peak=300.0)
    x, ctx = to_model_space(vol, affine)
    assert x.shape == (128, 160, 128)
    back = from_model_space(x, ctx)
    assert back.shape == shape
    assert object_correlation(back, vol, vol) >= 0.95


def test_inputs_are_not_modified():
    affine = np.diag([4.0, 4.0, 4.0, 1.0]) @ _centring((40, 48, 40))
    vol = world_pattern((40, 48, 40), affine)
    vol_before, affine_before = vol.copy(), affine.copy()
    x, ctx = to_model_space(vol, affine)
    x_before = x.copy()
    from_model_space(x, ctx)
    np.testing.assert_array_equal(vol, vol_before)
    np.testing.assert_array_equal(affine, affine_before)
    np.testing.assert_array_equal(x, x_before)
    ident, _ = model_space_identity(x, ctx.model_affine, ModelSpaceConfig())
    ident[...] = -1.0
    np.testing.assert_array_equal(x, x_before)


def _centring(shape):
    t = np.eye(4)
    t[:3, 3] = -(np.array(shape) - 1) / 2
    return t


def test_input_larger_than_field_of_view_is_centre_cropped_and_comes_back_as_background():
    # Already at 1.5 mm, so Spacing is (numerically) a copy and only the crop acts:
    # 141 → 128 (6 low / 7 high), 171 → 160 (5 / 6), 140 → 128 (6 / 6).
    shape = (141, 171, 140)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-100.0, -120.0, -90.0]
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    vol = (100.0 + i + 2.0 * j + 3.0 * k).astype(np.float32)  # nonzero everywhere, no background
    x, ctx = to_model_space(vol, affine)
    expected_affine = affine.copy()
    expected_affine[:3, 3] += 1.5 * np.array([6, 5, 6])
    np.testing.assert_allclose(ctx.model_affine, expected_affine, atol=1e-9)

    back = from_model_space(x, ctx)
    kept = np.zeros(shape, dtype=bool)
    kept[6:134, 5:165, 6:134] = True
    np.testing.assert_allclose(back[kept], vol[kept], atol=1e-3)
    assert np.all(back[~kept] == np.float32(ctx.intensity_min))
    assert ctx.intensity_min == pytest.approx(vol[kept].min())


def test_identity_path_returns_input_exactly():
    rng = np.random.default_rng(0)
    vol = rng.random((128, 160, 128), dtype=np.float32)
    affine = np.diag([-1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [94.5, -136.5, -76.5]
    x, ctx = model_space_identity(vol, affine, ModelSpaceConfig())
    assert not ctx.resampled
    np.testing.assert_array_equal(x, vol)
    back = from_model_space(x, ctx)
    np.testing.assert_array_equal(back, vol)
    np.testing.assert_array_equal(ctx.model_affine, affine)


def test_identity_path_rejects_wrong_shape():
    with pytest.raises(LDAEError, match="model space"):
        model_space_identity(np.ones((64, 80, 64)) * np.arange(64)[:, None, None], np.eye(4), ModelSpaceConfig())


def test_three_mm_config_runs_through_same_code(mni_volume):
    config = ModelSpaceConfig(spacing_mm=(3.0, 3.0, 3.0), shape=(64, 80, 64))
    x, ctx = to_model_space(mni_volume, MNI_AFFINE, config)
    assert x.shape == (64, 80, 64) and x.min() == 0.0 and x.max() == 1.0
    ref, ref_affine = monai_reference(mni_volume, MNI_AFFINE, 3.0, (64, 80, 64))
    assert np.max(np.abs(x - ref)) <= 1e-6
    np.testing.assert_allclose(np.abs(np.diag(ctx.model_affine)[:3]), 3.0)
    back = from_model_space(x, ctx)
    assert back.shape == MNI_SHAPE
    assert object_correlation(back, mni_volume, mni_volume) >= 0.95


# -- anti-aliasing (the demo model's space) ---------------------------------------------------------
def test_antialias_sigmas_follow_the_downsampling_factor_per_voxel_axis():
    aff = np.diag([1.0, 2.0, 3.0, 1.0])
    aff[:3, :3] = rotation(2, 30.0) @ aff[:3, :3]  # oblique: voxel sizes are the columns' lengths
    np.testing.assert_allclose(antialias_sigmas(aff, (3.0, 3.0, 3.0)), (1.0, 0.25, 0.0))
    assert antialias_sigmas(MNI_AFFINE, (1.5, 1.5, 1.5)) == (0.25, 0.25, 0.25)
    assert antialias_sigmas(np.diag([4.0, 4.0, 4.0, 1.0]), (3.0, 3.0, 3.0)) == (0.0, 0.0, 0.0)  # upsampling: none


def test_antialias_removes_detail_finer_than_the_model_grid(mni_volume):
    """A 1 mm pattern with 2 mm stripes (finer than the 3 mm grid can hold): bilinear resampling keeps
    them as aliasing; anti-aliasing first leaves the smooth object and little else."""
    plain = ModelSpaceConfig(spacing_mm=(3.0, 3.0, 3.0), shape=(64, 80, 64))
    aa = ModelSpaceConfig(spacing_mm=(3.0, 3.0, 3.0), shape=(64, 80, 64), antialias=True)
    stripes = np.where(np.arange(MNI_SHAPE[0]) % 2 == 0, 1.0, -1.0)[:, None, None].astype(np.float32)
    striped = mni_volume + 0.3 * mni_volume * stripes
    smooth, _ = to_model_space(mni_volume, MNI_AFFINE, plain)
    alias = {}
    for cfg in (plain, aa):
        x, ctx = to_model_space(striped, MNI_AFFINE, cfg)
        alias[cfg.antialias] = float(np.abs(x - smooth).mean())
        assert x.min() == 0.0 and x.max() == 1.0 and ctx.resampled
    assert alias[False] > 0.015  # what anti-aliasing is for (measured 0.024)
    assert alias[True] < 0.003 and alias[True] < alias[False] / 5  # measured 0.0007
    x_aa, ctx = to_model_space(mni_volume, MNI_AFFINE, aa)
    assert object_correlation(from_model_space(x_aa, ctx), mni_volume, mni_volume) >= 0.95


def test_antialias_is_off_by_default_and_round_trips_through_json(mni_volume):
    assert ModelSpaceConfig().antialias is False and "antialias" not in ModelSpaceConfig().to_dict()
    cfg = ModelSpaceConfig(spacing_mm=(3.0, 3.0, 3.0), shape=(64, 80, 64), antialias=True)
    assert ModelSpaceConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(LDAEError, match="antialias must be true or false"):
        ModelSpaceConfig(antialias="yes")


def test_rescale_intensity_false_stays_in_model_units(mni_forward):
    x, ctx = mni_forward
    back = from_model_space(x, ctx, rescale_intensity=False)
    assert back.min() >= 0.0 and back.max() <= 1.0


def test_context_and_config_round_trip_through_json(mni_forward):
    _, ctx = mni_forward
    again = SpaceContext.from_dict(json.loads(json.dumps(ctx.to_dict())))
    assert again.to_dict() == ctx.to_dict()
    np.testing.assert_array_equal(again.model_affine, ctx.model_affine)
    cfg = ModelSpaceConfig(spacing_mm=(3.0, 3.0, 3.0), shape=(64, 80, 64))
    assert ModelSpaceConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_incomplete_context_record_raises():
    with pytest.raises(LDAEError, match="missing"):
        SpaceContext.from_dict({"input_shape": [1, 2, 3]})


def test_unknown_intensity_mode_raises():
    with pytest.raises(LDAEError, match="intensity"):
        ModelSpaceConfig(intensity="zscore")


def test_wrong_model_shape_for_inverse_raises(mni_forward):
    _, ctx = mni_forward
    with pytest.raises(LDAEError, match="expected"):
        from_model_space(np.zeros((64, 80, 64), np.float32), ctx)


def _ramp(shape):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize(
    "data, message",
    [
        (_ramp((64, 64)), "2-D"),
        (_ramp((16, 16, 16, 3)), "4-D series"),
        (_ramp((16, 16, 16, 1)), "trailing axis"),
        (_ramp((16, 4, 16)), "far too small"),
        (np.where(_ramp((16, 16, 16)) == 5, np.nan, _ramp((16, 16, 16))), "NaN"),
        (np.where(_ramp((16, 16, 16)) == 5, np.inf, _ramp((16, 16, 16))), "NaN or infinite"),
        (np.full((16, 16, 16), 7.0, np.float32), "empty or constant"),
        (np.zeros((16, 16, 16), np.float32), "empty or constant"),
    ],
    ids=["2d", "4d", "4d-single", "tiny", "nan", "inf", "constant", "empty"],
)
def test_validate_volume_rejects_unusable_input(data, message):
    with pytest.raises(LDAEError, match=message):
        validate_volume(data)


def test_validate_volume_accepts_a_brain_and_to_model_space_validates():
    validate_volume(_ramp((16, 16, 16)))
    with pytest.raises(LDAEError, match="constant"):
        to_model_space(np.zeros((32, 32, 32), np.float32), np.eye(4))


def test_content_entirely_outside_field_of_view_raises():
    # 180 voxels at 1.5 mm are cropped to 128 (26 removed at the low end): the bright corner is lost.
    vol = np.zeros((180, 170, 140), np.float32)
    vol[:10, :10, :10] = 1.0
    with pytest.raises(LDAEError, match="field of view"):
        to_model_space(vol, np.diag([1.5, 1.5, 1.5, 1.0]))
