"""``ldae orient`` (LDAELib.evaluation.orient): directions oriented by what the model renders.

The rules on made-up measurements, then the command on the tiny model of test_evaluate.py (trained
for a few steps on an 8-subject labelled cohort at 4 mm, 2 DDIM steps): what it writes, that the
oriented bundle renders its label's way on the scans it was measured on (the tiny model needs alpha 20 to
change the measured ventricles at all), that only training
subjects are edited, and that the model given and a failed run leave nothing changed or behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from test_evaluate import cohort, one_thread, run  # noqa: F401 (fixtures)

from LDAELib.errors import LDAEError
from LDAELib.evaluation.orient import first_visits, orientation, within_subject_rate


def _row(subject, age, ventricles, group="control"):
    return SimpleNamespace(subject=subject, get=lambda k, d=None: {"age": age, "ventricles_ml": ventricles, "group": group}.get(k, d))


def test_a_direction_rendering_against_its_label_is_flipped():
    flip, rec = orientation("age", {"ventricles": [-0.4, -0.2, 0.1], "hippocampus": [0.05, 0.0, -0.01]}, ml_per_year=0.5)
    assert flip == -1 and rec["flipped"]
    assert rec["ml_per_alpha"]["ventricles"] == pytest.approx(0.2) and rec["ml_per_alpha"]["hippocampus"] == pytest.approx(0.0)
    assert rec["ml_per_alpha_per_scan"]["ventricles"] == pytest.approx([0.4, 0.2, -0.1])
    assert rec["agreeing_scans"] == pytest.approx(2 / 3) and rec["years_per_alpha"] == pytest.approx(0.4)
    flip, rec = orientation("disease", {"ventricles": [0.3, 0.5], "hippocampus": [-0.1, -0.1]})
    assert flip == 1 and not rec["flipped"] and "years_per_alpha" not in rec
    with pytest.raises(LDAEError, match="do not change"):
        orientation("disease", {"ventricles": [0.0, 0.0], "hippocampus": [0.1, 0.1]})
    with pytest.raises(LDAEError, match="no expected effect"):
        orientation("cn", {"ventricles": [0.3], "hippocampus": [0.0]})
    with pytest.raises(LDAEError, match="no finite"):
        orientation("age", {"ventricles": [float("nan")], "hippocampus": [0.0]})


def test_the_cohort_ageing_rate_is_within_subjects():
    # two subjects growing 1 mL a year, far apart in size and age: across subjects the slope would be negative
    rows = [_row("a", 60, 40), _row("a", 62, 42), _row("b", 80, 10), _row("b", 81, 11), _row("c", 70, "")]
    assert within_subject_rate(rows, "ventricles_ml") == pytest.approx(1.0)
    assert within_subject_rate([_row("a", 60, 40), _row("b", 61, 50)], "ventricles_ml") is None


def test_first_visits_take_both_groups_in_turn_and_follow_the_seed():
    rows = [_row(f"s{i}", 60 + v, 1, "disease" if i < 3 else "control") for i in range(8) for v in range(2)]
    got = first_visits(rows, 4, seed=0)
    assert len(got) == 4 and len({r.subject for r in got}) == 4
    assert sum(r.get("group") == "disease" for r in got) == 2
    assert all(r.get("age") == 60 for r in got)  # each subject's first visit
    assert [r.subject for r in first_visits(rows, 4, seed=0)] == [r.subject for r in got]
    assert len(first_visits(rows, 20, seed=1)) == 8


def test_orient_writes_a_bundle_that_renders_its_labels_way(run, tmp_path, capsys):  # noqa: F811
    from LDAELib.cli import main
    from LDAELib.evaluation.orient import rendered_changes
    from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
    from LDAELib.evaluation.targets import EXPECTED_SIGN
    from LDAELib.evaluation.volumes import build_measure, label_values
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.weights import load_model
    from LDAELib.weights.bundle import verify_bundle

    source = verify_bundle(run / "bundle")
    out = tmp_path / "oriented"
    with one_thread():
        assert main(["orient", "--workdir", str(run), "--output", str(out), "--subjects", "3", "--alpha", "20", "--steps", "2",
                     "--atlas-subjects", "3",
                     "--threads", "1", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "disease:" in printed and "age:" in printed and f"wrote {out}" in printed
    assert verify_bundle(run / "bundle") == source  # the model given is untouched
    record = json.loads((out / "orientation.json").read_text())
    split = json.loads((run / "split.json").read_text())["subjects"]
    assert len(record["subjects"]) == 3 and set(record["subjects"]) <= set(split["train"])
    before, after = load_model(run / "bundle"), load_model(out)
    assert after.identity["id"] != before.identity["id"]
    for name, d in after.directions.items():
        rec = d.meta["rendered"]
        assert d.edit_sign == (-1 if rec["flipped"] else 1) * before.directions[name].edit_sign
        assert np.median(rec["ml_per_alpha_per_scan"]["ventricles"]) * EXPECTED_SIGN[(name, "ventricles")] > 0
    assert "years_per_alpha" in after.directions["age"].meta["rendered"]

    # measured again with the oriented bundle on the same scans, the edits go the label's way
    inp = read_inputs(EvalSettings(workdir=run, output=tmp_path / "x"))
    load = Loader(inp.rows, after.config.space, run)
    measure = build_measure(inp.train_rows, after.config.space, load, label_values(inp.cohort_csv.parent / "cohort.json"),
                            max_subjects=3, rng=np.random.default_rng(0))
    rows = {r.subject: r for r in reversed(inp.train_rows)}
    with one_thread():
        again = rendered_changes(LDAEPipeline(after), after.directions, [load(rows[s]) for s in record["subjects"]], measure, 20.0, 2)
    for name in after.directions:
        assert again[name]["ventricles"] == pytest.approx(record["directions"][name]["ml_per_alpha_per_scan"]["ventricles"], abs=1e-6)


def test_orient_refuses_an_existing_output_and_leaves_nothing_after_a_failure(run, tmp_path, capsys):  # noqa: F811
    from LDAELib.cli import main
    from LDAELib.evaluation.orient import OrientSettings, orient

    busy = tmp_path / "busy"
    busy.mkdir()
    assert main(["orient", "--workdir", str(run), "--output", str(busy), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0]
    with pytest.raises(LDAEError, match="--alpha must be positive"):
        OrientSettings(workdir=run, output=tmp_path / "o", alpha=0)

    def boom(*a, **k):
        raise KeyboardInterrupt

    with one_thread(), mock.patch("LDAELib.weights.bundle.annotate_bundle", boom), pytest.raises(KeyboardInterrupt):
        orient(OrientSettings(workdir=run, output=tmp_path / "o", subjects=3, alpha=20, steps=2, atlas_subjects=3, progress=False, threads=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_age_years_rescales_age_and_measures_it_again(run, tmp_path):  # noqa: F811
    """--age-years: the age direction's scale is multiplied so that one unit renders that many years,
    and what is stated is the second measurement. A stand-in for the model's rendering, linear in
    the direction's signed scale (age renders against its label, disease with it), makes the
    arithmetic checkable; a direction of unknown effect is left alone and listed."""
    from LDAELib.directions import Direction
    from LDAELib.evaluation import orient as mod
    from LDAELib.evaluation.orient import OrientSettings, orient
    from LDAELib.weights import load_model
    from LDAELib.weights.bundle import annotate_bundle

    per = {"age": -3.0, "disease": 5.0}  # mL per unit of signed scale

    def linear(pipe, directions, scans, measure, alpha, steps, progress=None):
        return {n: {"ventricles": [per[n] * d.scale * d.edit_sign * (1 + 0.1 * i) for i in range(len(scans))],
                    "hippocampus": [0.0] * len(scans)} for n, d in directions.items()}

    base = load_model(run / "bundle")
    model = tmp_path / "with_cn"
    import shutil
    shutil.copytree(run / "bundle", model)
    cn = Direction("cn", base.directions["disease"].weight, base.directions["disease"].mean, base.directions["disease"].std, positive="CN")
    annotate_bundle(model, directions={"cn": cn})
    with one_thread(), mock.patch.object(mod, "rendered_changes", linear):
        record = orient(OrientSettings(workdir=run, output=tmp_path / "o", model=model, subjects=3, steps=1, atlas_subjects=3,
                                       age_years=2.0, progress=False, threads=1))
    out = load_model(tmp_path / "o")
    a, a0 = out.directions["age"], base.directions["age"]
    rate = record["directions"]["age"]["cohort_ml_per_year"]
    assert a.edit_sign == -a0.edit_sign and record["directions"]["age"]["flipped"]
    assert a.meta["years_per_alpha"] == pytest.approx(2.0) and a.alpha_unit == "2.0 years of ageing, as rendered"
    before = record["directions"]["age"]["before_rescaling"]["years_per_alpha"]
    assert a.scale == pytest.approx(a0.scale * 2.0 / before) and before == pytest.approx(3.0 * 1.1 * a0.scale / rate)
    assert out.directions["disease"].edit_sign == base.directions["disease"].edit_sign
    assert record["not_oriented"] == ["cn"] and out.directions["cn"].edit_sign == 1 and "rendered" not in out.directions["cn"].meta


def test_the_contrast_axis_sums_the_candidates_in_the_sense_each_renders(run, tmp_path):  # noqa: F811
    """--disease-axis contrast: the group probe and the anatomy probe are each oriented, and the new
    disease axis is the sum of their oriented unit normals. A stand-in rendering, linear in the edit's
    move along a fixed vector R of the normalised code space, fixes each candidate's sense; the test
    recovers the anatomy probe's normal from the new axis and the recorded cosine and checks both senses,
    the reading (the disease group higher on the axis), the step and the final sense."""
    import torch

    from LDAELib.evaluation import orient as mod
    from LDAELib.evaluation.orient import OrientSettings, orient
    from LDAELib.weights import load_model
    from LDAELib.weights.bundle import verify_bundle

    base = load_model(run / "bundle")
    g = base.directions["disease"]
    R = torch.randn(g.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def moved(d):  # the edit's move per unit of alpha along R, in the normalised code space
        w = d.weight.double()
        return float(d.edit_sign * d.scale * (w / w.norm()) @ R)

    def linear(pipe, directions, scans, measure, alpha, steps, progress=None):
        return {n: {"ventricles": [moved(d) * (1 + 0.1 * i) for i in range(len(scans))], "hippocampus": [-moved(d)] * len(scans)}
                for n, d in directions.items()}

    source = verify_bundle(run / "bundle")
    ug = g.weight.double() / g.weight.double().norm()
    senses = []
    for k in range(2):   # a random R, then one along which the anatomy probe renders against its label
        with one_thread(), mock.patch.object(mod, "rendered_changes", linear):
            record = orient(OrientSettings(workdir=run, output=tmp_path / f"o{k}", subjects=3, steps=1, atlas_subjects=3,
                                           disease_axis="contrast", progress=False, threads=1))
        assert verify_bundle(run / "bundle") == source
        out = load_model(tmp_path / f"o{k}")
        d, c = out.directions["disease"], record["disease_contrast"]
        s_g, s_a, cos = c["candidates"]["group"]["sense"], c["candidates"]["anatomy"]["sense"], c["cos_group_anatomy"]
        assert s_g == np.sign(g.edit_sign * float(ug @ R))
        w = d.weight.double() / d.weight.double().norm()
        length = (2 + 2 * s_g * g.edit_sign * s_a * cos) ** 0.5
        sign = np.sign(float(w @ ug) * (s_g * g.edit_sign + s_a * cos))   # the axis may have been turned round for the reading
        ua = (sign * length * w - s_g * g.edit_sign * ug) / s_a
        assert float(ua.norm()) == pytest.approx(1.0, abs=1e-5) and float(ua @ ug) == pytest.approx(cos, abs=1e-5)
        assert s_a == np.sign(float(ua @ R))
        assert c["group_gap_along_axis"] > 0 and d.meta["kind"] == "contrast" and "contrast axis" in d.alpha_unit
        assert d.scale == pytest.approx(g.scale) and torch.equal(d.mean, g.mean) and torch.equal(d.std, g.std)
        assert moved(d) > 0 and record["directions"]["disease"]["ml_per_alpha"]["ventricles"] > 0   # renders the disease's way
        assert torch.equal(out.directions["age"].weight, base.directions["age"].weight)   # the others only change settings
        assert record["disease_axis"] == "contrast"
        senses.append((s_g, s_a))
        v = ua - cos * ug   # the anatomy normal's part across the group normal
        R = g.edit_sign * ug - 10 * v / v.norm()
    assert senses[1] == (1, -1)   # the demo model's case


def test_the_contrast_axis_needs_the_cohorts_volumes():
    from LDAELib.evaluation.orient import OrientSettings, contrast_direction

    rows = [SimpleNamespace(subject=f"s{i}", get=lambda k, d=None, i=i: {"group": "disease" if i % 2 else "control"}.get(k, d)) for i in range(4)]
    with pytest.raises(LDAEError, match="ldae cohort --labels"):
        contrast_direction(None, None, rows, None, [], None, 2.0, 1)
    with pytest.raises(LDAEError, match="--disease-axis must be one of probe, contrast"):
        OrientSettings(workdir=".", output="o", disease_axis="anatomy")


def test_the_age_contrast_axis_sums_the_candidates_and_reads_age(run, tmp_path, capsys):  # noqa: F811
    """--age-axis contrast: the age direction and an anatomy probe (the codes regressed on the age the
    true volumes read) are each oriented by a stand-in rendering linear along a vector R; the new age
    axis is the sum of their oriented unit normals, renders ageing, reads age (its reading correlates
    with the training visits' ages), keeps the age step, and leaves the disease direction as it was.
    Both axes rebuilt in one run embed the training visits once."""
    import torch

    from LDAELib.cli import main
    from LDAELib.evaluation import orient as mod
    from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
    from LDAELib.training.probes import predicted_age
    from LDAELib.weights import load_model
    from LDAELib.weights.bundle import verify_bundle

    base = load_model(run / "bundle")
    a0 = base.directions["age"]
    ua0 = a0.edit_sign * a0.weight.double() / a0.weight.double().norm()
    R = -ua0 + 0.3 * torch.randn(a0.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)   # renders the age direction against ageing

    def moved(d):
        w = d.weight.double()
        return float(d.edit_sign * d.scale * (w / w.norm()) @ R)

    def linear(pipe, directions, scans, measure, alpha, steps, progress=None):
        return {n: {"ventricles": [moved(d) * (1 + 0.1 * i) for i in range(len(scans))], "hippocampus": [-moved(d)] * len(scans)}
                for n, d in directions.items()}

    embedded = []
    real_embed = mod.embed_rows
    source = verify_bundle(run / "bundle")
    with one_thread(), mock.patch.object(mod, "rendered_changes", linear), \
            mock.patch.object(mod, "embed_rows", lambda *a, **k: embedded.append(1) or real_embed(*a, **k)):
        assert main(["orient", "--workdir", str(run), "--output", str(tmp_path / "o"), "--subjects", "3", "--steps", "1",
                     "--atlas-subjects", "3", "--age-axis", "contrast", "--disease-axis", "contrast", "--threads", "1", "-q"]) == 0
    assert len(embedded) == 1 and verify_bundle(run / "bundle") == source
    assert "age rebuilt on the contrast axis: the age direction renders against its label" in capsys.readouterr().out
    record = json.loads((tmp_path / "o" / "orientation.json").read_text())
    out = load_model(tmp_path / "o")
    a, c = out.directions["age"], record["age_contrast"]
    assert record["age_axis"] == "contrast" and c["candidates"]["age"]["sense"] == -1
    s_a, cos = c["candidates"]["anatomy"]["sense"], c["cos_age_anatomy"]
    w = a.edit_sign * a.weight.double() / a.weight.double().norm()   # the unit normal +alpha moves along
    ua = (w * (2 - 2 * s_a * cos) ** 0.5 + ua0) / s_a   # w = (−ua0 + s_a·u_anatomy) / ‖…‖
    assert float(ua.norm()) == pytest.approx(1.0, abs=1e-5) and float(ua @ ua0) == pytest.approx(cos, abs=1e-5)
    assert s_a == np.sign(float(ua @ R))
    assert moved(a) > 0 and record["directions"]["age"]["ml_per_alpha"]["ventricles"] > 0   # renders ageing
    assert a.meta["kind"] == "contrast" and a.meta["target"] == "age" and a.scale == pytest.approx(a0.scale)
    assert torch.equal(a.mean, a0.mean) and torch.equal(a.std, a0.std)
    assert "years of ageing, as rendered" in a.alpha_unit
    inp = read_inputs(EvalSettings(workdir=run, output=tmp_path / "unused"))
    from LDAELib.pipeline import LDAEPipeline

    load = Loader(inp.rows, out.config.space, run)
    with one_thread():
        codes = torch.cat([LDAEPipeline(out, device=torch.device("cpu")).embed(load(r)) for r in inp.train_rows])
    ages = np.array([r.number("age") for r in inp.train_rows])
    pred = predicted_age(a, codes).numpy()
    assert np.corrcoef(pred, ages)[0, 1] == pytest.approx(c["reading_r_training"], abs=1e-4) and c["reading_r_training"] > 0
    assert abs(pred.mean() - ages.mean()) < 1e-3   # the reading's intercept
    assert record["disease_axis"] == "contrast" and "disease_contrast" in record


def test_the_age_contrast_axis_needs_ages():
    from LDAELib.evaluation.orient import OrientSettings, age_contrast_direction

    rows = [SimpleNamespace(subject=f"s{i}", number=lambda c: 1.0,
                            get=lambda k, d=None, i=i: {"ventricles_ml": 10 + i, "age": "" if i == 2 else 60 + i}.get(k, d)) for i in range(4)]
    with pytest.raises(LDAEError, match="no age for every training visit"):
        age_contrast_direction(None, None, rows, None, [], None, 2.0, 1)
    with pytest.raises(LDAEError, match="--age-axis must be one of probe, contrast"):
        OrientSettings(workdir=".", output="o", age_axis="anatomy")
