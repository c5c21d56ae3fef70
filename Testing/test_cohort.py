"""The synthetic longitudinal cohort (``ldae cohort``): reproducible, plausible, written all-or-nothing.

Runs on a coarse 4 mm grid (46×55×46) so the module takes well under a minute; needs nilearn (ICBM152)
and Debian's mricron-data (Colin27, AAL), and skips with the reason when either is missing.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from LDAELib.cohort.templates import templates_available

_MISSING = templates_available()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"cohort templates not installed: {_MISSING}")

SPACING = 4.0
N_SUBJECTS = 4
SEED = 3
COLUMNS = ["subject", "visit", "months", "age", "group", "path", "labels_path", "template", "ventricles_ml",
           "hippocampus_l_ml", "hippocampus_r_ml", "grey_matter_ml", "white_matter_ml", "csf_ml", "whole_brain_ml"]


def _config(**kw):
    from LDAELib.cohort.cohort import CohortConfig

    args = dict(n_subjects=N_SUBJECTS, seed=SEED, spacing_mm=SPACING, labels=True)
    args.update(kw)
    return CohortConfig(**args)


def _rows(folder: Path) -> list[dict]:
    with open(folder / "cohort.csv", newline="") as f:
        return list(csv.DictReader(f))


def _by_subject(rows) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in rows:
        out[r["subject"]].append(r)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _slope_per_year(rows, column) -> float:
    months = np.array([float(r["months"]) for r in rows])
    return float(np.polyfit(months / 12.0, np.log([float(r[column]) for r in rows]), 1)[0])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from LDAELib.cohort.cohort import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "c"
    generate_cohort(out, _config())
    return out


def test_same_seed_gives_identical_files(cohort, tmp_path):
    from LDAELib.cohort.cohort import generate_cohort

    generate_cohort(tmp_path / "again", _config())
    assert _files(tmp_path / "again") == _files(cohort)


def test_worker_processes_write_the_same_files_and_resume_a_partial_folder(cohort, tmp_path):
    """Subjects made in parallel processes are byte-identical to the serial run, kept ones included."""
    from LDAELib.cohort.cohort import generate_cohort

    out = tmp_path / "parallel"
    generate_cohort(out, _config(n_subjects=1))
    seen = []
    done = generate_cohort(out, _config(), workers=2, progress=lambda n, total, sid: seen.append((n, total)))
    assert done.reused == ["sub-0001"] and sorted(done.generated) == [f"sub-{i:04d}" for i in range(2, N_SUBJECTS + 1)]
    assert sorted(seen) == [(n, N_SUBJECTS) for n in range(2, N_SUBJECTS + 1)]
    assert _files(out) == _files(cohort)


def test_another_seed_gives_other_subjects(cohort, tmp_path):
    from LDAELib.cohort.cohort import generate_cohort

    generate_cohort(tmp_path / "other", _config(seed=SEED + 1, n_subjects=1))
    mine = _rows(tmp_path / "other")
    theirs = _by_subject(_rows(cohort))["sub-0001"]
    assert [r["age"] for r in mine] != [r["age"] for r in theirs]
    assert (tmp_path / "other" / mine[0]["path"]).read_bytes() != (cohort / theirs[0]["path"]).read_bytes()


def test_csv_columns_visits_and_months(cohort):
    rows = _rows(cohort)
    assert list(rows[0]) == COLUMNS
    subjects = _by_subject(rows)
    assert sorted(subjects) == [f"sub-{i:04d}" for i in range(1, N_SUBJECTS + 1)]
    assert {r["group"] for r in rows} == {"healthy", "disease"}
    for rs in subjects.values():
        assert 3 <= len(rs) <= 5
        assert [int(r["visit"]) for r in rs] == list(range(1, len(rs) + 1))
        months = [float(r["months"]) for r in rs]
        assert months[0] == 0.0 and all(b > a for a, b in zip(months, months[1:])) and months[-1] <= 36.0
        age0 = float(rs[0]["age"])
        assert 55.0 <= age0 <= 90.0
        assert all(abs(float(r["age"]) - (age0 + float(r["months"]) / 12.0)) < 0.011 for r in rs)
        assert len({r["group"] for r in rs}) == 1 and len({r["template"] for r in rs}) == 1
        assert all((cohort / r["path"]).is_file() and (cohort / r["labels_path"]).is_file() for r in rs)


def test_disease_ventricles_grow_faster_than_healthy(cohort):
    rates = defaultdict(list)
    for rs in _by_subject(_rows(cohort)).values():
        rates[rs[0]["group"]].append(_slope_per_year(rs, "ventricles_ml"))
    assert min(rates["healthy"]) > 0.0
    assert np.mean(rates["disease"]) > 1.5 * np.mean(rates["healthy"])
    assert min(rates["disease"]) > max(rates["healthy"])


def test_hippocampus_shrinks_over_visits(cohort):
    for rs in _by_subject(_rows(cohort)).values():
        for side in ("hippocampus_l_ml", "hippocampus_r_ml"):
            assert _slope_per_year(rs, side) < 0.0
            assert float(rs[-1][side]) < float(rs[0][side])
        # at every visit too, within the CSV's 0.001 mL (a healthy 57-year-old loses ~0.02 mL in 6 months)
        total = [float(r["hippocampus_l_ml"]) + float(r["hippocampus_r_ml"]) for r in rs]
        assert all(b <= a + 0.002 for a, b in zip(total, total[1:]))


def test_ventricles_grow_and_brain_shrinks_at_every_visit(cohort):
    for rs in _by_subject(_rows(cohort)).values():
        for column, sign in (("ventricles_ml", 1), ("grey_matter_ml", -1), ("whole_brain_ml", -1)):
            v = [float(r[column]) for r in rs]
            assert all(sign * (b - a) > 0 for a, b in zip(v, v[1:])), column


def test_volumes_are_plausible(cohort):
    """MNI-space volumes (larger than native ones): ICBM's ventricles measure about 16 mL, Colin27's about 30."""
    for r in _rows(cohort):
        v = {k: float(r[k]) for k in COLUMNS[8:]}
        assert 8.0 < v["ventricles_ml"] < 120.0
        assert 2.0 < v["hippocampus_l_ml"] < 7.0 and 2.0 < v["hippocampus_r_ml"] < 7.0
        assert 550.0 < v["grey_matter_ml"] < 1250.0 and 400.0 < v["white_matter_ml"] < 1000.0
        assert 1000.0 < v["whole_brain_ml"] < 2200.0
        assert abs(v["whole_brain_ml"] - v["grey_matter_ml"] - v["white_matter_ml"]) < 0.01
        assert v["ventricles_ml"] < v["csf_ml"]


def test_images_are_finite_mni_and_brain_extracted(cohort):
    import nibabel as nib

    from LDAELib.cohort.deform import mni_grid

    shape, affine = mni_grid(SPACING)
    for r in _rows(cohort)[:6]:
        img, lab = nib.load(str(cohort / r["path"])), nib.load(str(cohort / r["labels_path"]))
        x, y = np.asanyarray(img.dataobj), np.asanyarray(lab.dataobj)
        assert x.dtype == np.float32 and y.dtype == np.uint8
        assert x.shape == shape == y.shape
        np.testing.assert_allclose(img.affine, affine)
        assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4  # MNI152
        assert np.isfinite(x).all() and x.min() == 0.0
        assert set(np.unique(y)) <= set(range(7)) and {0, 2, 3, 4, 5, 6} <= set(np.unique(y))
        assert (x[y == 0] == 0).all(), "background must be exactly 0 (brain-extracted)"
        assert (x[y > 0] > 0).mean() > 0.999
        wm, csf = np.median(x[y == 3]), np.median(x[y == 1])
        assert wm > 1.5 * csf  # T1 contrast
        for face in (x[0], x[-1], x[:, 0], x[:, -1], x[:, :, -1]):  # the brainstem leaves the box at the bottom
            assert (face == 0).all()


def test_sidecars_record_seed_settings_and_notice(cohort):
    meta = json.loads((cohort / "cohort.json").read_text())
    assert meta["seed"] == SEED and meta["config"]["spacing_mm"] == SPACING and meta["complete"]
    assert meta["n_subjects"] == N_SUBJECTS and all(len(f["sha256"]) == 64 for f in meta["template_files"].values())
    notice = (cohort / "NOTICE.txt").read_text()
    assert "McConnell Brain Imaging Centre" in notice and "mricron" in notice.lower()
    record = json.loads((cohort / "sub-0001" / "subject.json").read_text())
    assert record["plan"]["subject"] == "sub-0001" and len(record["rows"]) == len(_by_subject(_rows(cohort))["sub-0001"])


def test_interrupted_then_resumed_equals_uninterrupted(cohort, tmp_path, monkeypatch):
    """A failure mid-subject leaves no trace of that subject; the rerun fills in and extends."""
    from LDAELib.cohort import cohort as mod

    out = tmp_path / "resumed"
    real, calls = mod._nifti_bytes, {"n": 0}

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 2 * 3:  # the first subject has ≥ 3 visits × 2 files; die inside the second
            raise OSError("disk full (simulated)")
        return real(*a, **kw)

    monkeypatch.setattr(mod, "_nifti_bytes", failing)
    with pytest.raises(OSError):
        mod.generate_cohort(out, _config(n_subjects=2))
    left = sorted(p.name for p in out.iterdir())
    assert "sub-0002" not in left and not any(n.startswith(".tmp") for n in left)
    monkeypatch.setattr(mod, "_nifti_bytes", real)

    done = mod.generate_cohort(out, _config())  # resumes, and extends to N_SUBJECTS
    assert done.reused == (["sub-0001"] if "sub-0001" in left else [])
    assert _files(out) == _files(cohort)


def test_refuses_foreign_or_different_folders(cohort, tmp_path):
    from LDAELib.cohort.cohort import generate_cohort
    from LDAELib.errors import LDAEError

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(LDAEError, match="not empty"):
        generate_cohort(foreign, _config(n_subjects=1))
    with pytest.raises(LDAEError, match="other settings"):
        generate_cohort(cohort, _config(seed=SEED + 1))


def test_cli_writes_a_cohort(tmp_path, capsys):
    from LDAELib.cli import main

    out = tmp_path / "cli"
    assert main(["cohort", str(out), "--subjects", "1", "--seed", "7", "--spacing", str(SPACING), "--visits-min", "3", "--visits-max", "3", "-q"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and "labels_path" not in rows[0]
    assert "wrote" in capsys.readouterr().out
    assert main(["cohort", str(out), "--subjects", "1", "--seed", "8", "--spacing", str(SPACING), "-q"]) == 1
    assert "other settings" in capsys.readouterr().err


def test_a_grid_too_coarse_for_the_atrophy_model_is_one_clear_error(tmp_path, capsys):
    from LDAELib.cli import main

    assert main(["cohort", str(tmp_path / "coarse"), "--subjects", "1", "--spacing", "6", "-q"]) == 1
    err = capsys.readouterr().err
    assert "between 0.5 and 4 mm" in err and "Traceback" not in err
    assert not (tmp_path / "coarse" / "cohort.csv").exists()
