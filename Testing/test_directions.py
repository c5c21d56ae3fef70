"""Directions: the authors' edit formula, probe fitting, direction files, and the fit-probe command."""

from __future__ import annotations

import math

import pytest
import torch

from LDAELib.cli import main
from LDAELib.directions import Direction, fit_linear_probe, fit_longitudinal_direction
from LDAELib.directions.files import load_direction, save_direction
from LDAELib.errors import LDAEError


def test_edit_formula_is_the_authors():
    g = torch.Generator().manual_seed(0)
    w, mu, sd = torch.randn(768, generator=g), torch.randn(768, generator=g), torch.rand(768, generator=g) + 0.5
    y = torch.randn(2, 768, generator=g)
    d = Direction("d", w, mu, sd)
    expected = ((y - mu) / sd + 1.5 * math.sqrt(768) * w / w.norm()) * sd + mu
    assert torch.allclose(d.apply(y, 1.5), expected, atol=1e-5)
    assert torch.allclose(d.apply(y, 0.0), y, atol=1e-6)


def test_edit_sign_reverses_the_edit_and_keeps_the_reading():
    """A direction oriented against its probe (edit_sign −1) moves a code the other way by the same
    amount; its score (the label's reading) and its description are unchanged."""
    g = torch.Generator().manual_seed(3)
    w, mu, sd = torch.randn(64, generator=g), torch.randn(64, generator=g), torch.rand(64, generator=g) + 0.5
    y = torch.randn(3, 64, generator=g)
    along = Direction("age", w, mu, sd, positive="older", scale=0.4)
    against = Direction("age", w, mu, sd, positive="older", scale=0.4, edit_sign=-1)
    assert torch.allclose(against.apply(y, 1.5) - y, -(along.apply(y, 1.5) - y), atol=1e-5)
    assert torch.allclose(against.apply(y, 1.5), along.apply(y, -1.5), atol=1e-5)
    assert torch.equal(against.score(y), along.score(y)) and against.describe() == along.describe()
    for bad in (0, 2, True, "-1", -1.5):
        with pytest.raises(LDAEError, match="edit_sign"):
            Direction("age", w, mu, sd, edit_sign=bad)


def test_settings_leave_out_the_defaults_and_round_trip():
    d = Direction("cn", torch.randn(8), torch.randn(8), torch.rand(8) + 1, bias=0.2, positive="cn", meta={"k": 1})
    assert set(d.settings()) == {"bias", "positive", "negative", "alpha_unit", "meta"}
    o = Direction("age", torch.randn(8), torch.randn(8), torch.rand(8) + 1, scale=0.5, edit_sign=-1, alpha_unit="5 years")
    back = Direction.from_settings("age", o.weight, o.mean, o.std, o.settings())
    assert (back.scale, back.edit_sign, back.alpha_unit) == (0.5, -1, "5 years")


def _ageing_codes(between: float, seed: int = 5):
    """Codes of 30 subjects × 4 visits: each subject a large random offset, plus within-subject
    ageing of 0.1 per year along axis v; across subjects, age adds ``between`` per year along v."""
    g = torch.Generator().manual_seed(seed)
    e = 48
    v = torch.randn(e, generator=g)
    v /= v.norm()
    codes, ages, subjects = [], [], []
    for s in range(30):
        base, start = torch.randn(e, generator=g) * 3, 55 + 30 * float(torch.rand(1, generator=g))
        for k in range(4):
            age = start + 2 * k
            codes.append(base + (0.1 * 2 * k + between * (start - 70)) * v + 0.02 * torch.randn(e, generator=g))
            ages.append(age)
            subjects.append(f"s{s}")
    return torch.stack(codes), torch.tensor(ages), subjects, v


@pytest.mark.parametrize("between", [0.05, -0.3])
def test_longitudinal_direction_follows_each_subjects_own_ageing(between):
    """The axis is the within-subject change, whatever the subjects' spread; +1 moves a code as
    its subject ages by per_unit years; the reading predicts age along it, and where older
    subjects sit lower on the axis the weight points back and edit_sign is −1."""
    codes, ages, subjects, v = _ageing_codes(between)
    d = fit_longitudinal_direction(codes, ages, subjects, "age", per_unit=5.0, positive="older")
    assert d.edit_sign == (1 if between > 0 else -1)
    y = codes[:3]
    move = ((d.apply(y, 1.0) - d.mean) / d.std) - ((y - d.mean) / d.std)
    within = v / d.std  # the within-subject change, in normalised code
    assert torch.nn.functional.cosine_similarity(move[0], within, dim=0) > 0.95
    per_year_norm = float((0.1 * v / d.std).norm())
    assert float(move[0].norm()) == pytest.approx(5.0 * per_year_norm, rel=0.05)
    pred = d.meta["target_mean"] + d.meta["target_std"] * d.score(codes).double()
    assert float(torch.corrcoef(torch.stack([pred, ages.double()]))[0, 1]) > 0  # the reading goes with age
    assert d.meta["kind"] == "longitudinal" and d.meta["axis_subjects"] == 30


def test_longitudinal_direction_needs_repeated_visits():
    codes, ages, subjects, _ = _ageing_codes(0.05)
    with pytest.raises(LDAEError, match="two or more codes"):
        fit_longitudinal_direction(codes, ages, [f"v{i}" for i in range(len(subjects))], "age", per_unit=5.0)
    with pytest.raises(LDAEError, match="positive amount"):
        fit_longitudinal_direction(codes, ages, subjects, "age", per_unit=0.0)
    only = torch.tensor([s in ("s0", "s1") for s in subjects])
    d = fit_longitudinal_direction(codes, ages, subjects, "age", per_unit=5.0, axis_rows=only)
    assert d.meta["axis_subjects"] == 2


def test_binary_probe_points_towards_label_one():
    g = torch.Generator().manual_seed(1)
    axis = torch.randn(32, generator=g)
    labels = torch.tensor([0, 1] * 40, dtype=torch.float32)
    codes = torch.randn(80, 32, generator=g) + (labels[:, None] * 2 - 1) * axis
    d = fit_linear_probe(codes, labels, "group", positive="1", negative="0")
    acc = ((d.score(codes) > 0).float() == labels).float().mean()
    assert acc > 0.95
    y0 = codes[labels == 0][:1]
    assert float(d.score(d.apply(y0, 2.0))) > float(d.score(y0))


def test_continuous_probe_follows_the_target():
    g = torch.Generator().manual_seed(2)
    age = torch.linspace(55, 85, 60)
    codes = torch.randn(60, 16, generator=g) * 0.1
    codes[:, 3] += (age - 70) / 10
    d = fit_linear_probe(codes, age, "age", kind="continuous")
    r = torch.corrcoef(torch.stack([d.score(codes), age]))[0, 1]
    assert r > 0.95


def test_probe_needs_both_classes():
    with pytest.raises(LDAEError, match="both classes"):
        fit_linear_probe(torch.randn(10, 4), torch.ones(10), "x")


def test_mismatched_statistics_are_refused():
    with pytest.raises(LDAEError, match="same model"):
        Direction("d", torch.randn(8), torch.zeros(4), torch.ones(8))


def test_direction_file_round_trip(tmp_path):
    d = Direction("age", torch.randn(8), torch.randn(8), torch.rand(8) + 1, bias=0.3, positive="older", alpha_unit="4 years")
    save_direction(d, tmp_path / "age.safetensors")
    back = load_direction(tmp_path / "age.safetensors")
    assert torch.equal(back.weight, d.weight) and back.positive == "older" and back.alpha_unit == "4 years"
    assert back.bias == pytest.approx(0.3)
    assert back.edit_sign == 1
    d.edit_sign = -1
    save_direction(d, tmp_path / "against.safetensors")
    assert load_direction(tmp_path / "against.safetensors").edit_sign == -1


def test_fit_probe_command(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    rows, labels = ["path," + ",".join(f"e{i}" for i in range(6))], ["path,group"]
    for i in range(30):
        lab = i % 2
        v = torch.randn(6, generator=g) + torch.tensor([2.0 * lab - 1, 0, 0, 0, 0, 0])
        p = tmp_path / f"s{i}.nii.gz"
        rows.append(f"{p}," + ",".join(f"{x:.5f}" for x in v.tolist()))
        labels.append(f"{p},{lab}")
    (tmp_path / "emb.csv").write_text("\n".join(rows))
    (tmp_path / "labels.csv").write_text("\n".join(labels))
    out = tmp_path / "group.safetensors"
    assert main(["fit-probe", str(tmp_path / "emb.csv"), str(tmp_path / "labels.csv"), "--target", "group", "--name", "group", "-o", str(out)]) == 0
    d = load_direction(out)
    assert d.name == "group" and float(d.weight[0]) > 0
