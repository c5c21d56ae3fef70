"""Orient a model's directions by what it renders (``ldae orient``; not in the paper).

A probe reads its label along its weight w from the codes. Whether moving a code along w renders
the label's effect in the image is up to the gradient estimator, and it need not: the demo model
renders a move of the code towards "older" (or towards "more ventricle") as smaller ventricles
(handover/demo_model/README.md, thirteenth run). This measures what a model renders, on training
subjects only (the evaluation's test subjects stay held out):

1. the first visits of N training subjects (a seeded draw, the groups taken in turn), in model space;
2. each edited along each direction to −A and +A (the pipeline's own edit: one inversion, T DDIM
   steps);
3. every region's volume with the evaluation's image-based measure (its ROIs and calibration come
   from training label maps);
4. per scan and region, the change per unit of alpha: (V(+A) − V(−A)) / 2A.

A direction whose median ventricle change per unit has the opposite sign of its label's effect
(``EXPECTED_SIGN``: towards disease or older, the ventricles grow) gets its ``edit_sign`` flipped.
Its probe w stays: the direction still reads the label, and +alpha now renders what its
``positive`` says. ``meta["rendered"]`` records the medians per unit after orientation, the
per-scan values and the share of scans that agree in sign; for ``age``, also how many years of the
cohort's own ageing one unit renders: the median ventricle change per unit over the cohort's
within-subject ventricle growth per year (truth columns of the training subjects, or of one group's:
``ageing_group``, e.g. the healthy one, whose ageing is not mixed with the disease's atrophy).
That number becomes the ``age`` direction's stated unit (``alpha_unit``, ``meta["years_per_alpha"]``;
the probe's own reading stays as ``probe_years_per_alpha``, negative when flipped). With
``age_years`` set, the ``age`` direction's ``scale`` is multiplied so that one unit renders that
many years, and the edits are measured again at the new scale (a model's response need not be
linear); what is stated is that second measurement. Directions whose effect is not known here
(other than ``disease`` and ``age``, e.g. the authors' ``cn``) are left as they are and listed in
the record as ``not_oriented``.

With ``disease_axis="contrast"`` the ``disease`` direction is first rebuilt (``contrast_direction``):
the group probe's axis and the codes' regression on the anatomy's disease score (a logistic
regression of the group on the cohort's true regional volumes) are each edited and oriented as
above, and the new axis is the sum of their oriented unit normals. Where the model renders one of
them against its label on a scan, the other often holds (the demo model: 7 of 8 training scans
monotone in both regions, against 5 of 8 along the group probe; handover/demo_model/README.md,
fifteenth run). Its step is the group probe's; its reading is the position along the new axis.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..directions import Direction
from ..errors import LDAEError
from .targets import EXPECTED_SIGN
from .volumes import REGIONS, within_subject_rate

ORIENTING_REGION = "ventricles"
DISEASE_AXES = ("probe", "contrast")
AGE_AXES = ("probe", "contrast")


@dataclass
class OrientSettings:
    """``ldae orient``: which model, which training subjects, how far and how finely to edit."""

    workdir: Path
    output: Path
    model: Path | None = None
    cohort: Path | None = None
    subjects: int = 8
    alpha: float = 2.0
    steps: int = 10
    ageing_group: str | None = None
    age_years: float | None = None
    disease_axis: str = "probe"
    age_axis: str = "probe"
    atlas_subjects: int = 16
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    verify: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.workdir, self.output = Path(self.workdir), Path(self.output)
        self.model = Path(self.model) if self.model else None
        if self.subjects < 1:
            raise LDAEError("--subjects must be at least 1")
        if not self.alpha > 0:
            raise LDAEError(f"--alpha must be positive (the edits go to −alpha and +alpha), got {self.alpha}")
        if self.steps < 1:
            raise LDAEError("--steps must be at least 1")
        if self.disease_axis not in DISEASE_AXES:
            raise LDAEError(f"--disease-axis must be one of {', '.join(DISEASE_AXES)}, got {self.disease_axis!r}")
        if self.age_axis not in AGE_AXES:
            raise LDAEError(f"--age-axis must be one of {', '.join(AGE_AXES)}, got {self.age_axis!r}")
        if self.age_years is not None and not self.age_years > 0:
            raise LDAEError(f"--age-years must be positive (years of ageing one unit of alpha renders), got {self.age_years}")


def rendered_changes(pipe, directions: dict, scans: list[np.ndarray], measure, alpha: float, steps: int, progress=None) -> dict:
    """{direction: {region: [change per unit of alpha, one per scan]}} of the directions as they stand."""
    out = {name: {region: [] for region in REGIONS} for name in directions}
    done, total = 0, len(scans) * len(directions)
    for x in scans:
        for name, d in directions.items():
            imgs = pipe.edit(x, d, [-alpha, alpha], steps=steps).numpy()[:, 0]
            lo, hi = measure.measure(imgs[0]), measure.measure(imgs[1])
            for region in REGIONS:
                out[name][region].append(float(hi[region] - lo[region]) / (2.0 * alpha))
            done += 1
            if progress is not None:
                progress(done, total)
    return out


def orientation(name: str, changes: dict[str, list[float]], ml_per_year: float | None = None) -> tuple[int, dict]:
    """(sign to multiply the direction's edit_sign by, the ``rendered`` record) from one direction's
    per-scan changes (as the direction stood when measured)."""
    expected = EXPECTED_SIGN.get((name, ORIENTING_REGION), 0)
    if expected == 0:
        raise LDAEError(f"direction '{name}': no expected effect on the {ORIENTING_REGION} is known; "
                        f"orientation knows {', '.join(sorted({d for d, _ in EXPECTED_SIGN}))}")
    ref = np.asarray(changes[ORIENTING_REGION], dtype=np.float64)
    if ref.size == 0 or not np.isfinite(ref).all():
        raise LDAEError(f"direction '{name}': the edits gave no finite {ORIENTING_REGION} volumes to orient by")
    median = float(np.median(ref))
    if median == 0.0:
        raise LDAEError(f"direction '{name}': its edits do not change the {ORIENTING_REGION} (median 0 mL per unit); "
                        "there is nothing to orient it by")
    flip = 1 if np.sign(median) == expected else -1
    per_scan = {region: [flip * v for v in vals] for region, vals in changes.items()}
    rec = {"region": ORIENTING_REGION, "flipped": flip == -1,
           "ml_per_alpha": {region: float(np.median(v)) for region, v in per_scan.items()},
           "ml_per_alpha_per_scan": per_scan,
           "agreeing_scans": float(np.mean(np.sign(per_scan[ORIENTING_REGION]) == expected))}
    if ml_per_year:
        rec["cohort_ml_per_year"] = float(ml_per_year)
        rec["years_per_alpha"] = rec["ml_per_alpha"][ORIENTING_REGION] / float(ml_per_year)
    return flip, rec


def contrast_direction(pipe, group: Direction, train_rows: list, load, scans: list, measure, alpha: float, steps: int,
                       l2: float = 0.01, progress=None, codes: torch.Tensor | None = None) -> tuple[Direction, dict]:
    """The ``disease`` direction of ``disease_axis="contrast"`` (module docstring) and its record.

    ``group`` is the model's group probe; ``train_rows`` the training visits (cohort table rows with
    the group and the true regional volumes), ``scans`` the model-space scans its candidates are
    edited on. The anatomy probe is expressed on the group probe's normalisation; the new axis is
    s_g·u_group + s_a·u_anatomy with each s the candidate's rendered sense (±1), its sign then
    chosen so that the disease group sits higher on it; ``edit_sign`` +1, ``scale`` the group probe's.
    ``progress(done, total)`` is called after each visit embedded and each candidate edit;
    ``codes`` (the training visits' codes, N×E) skips the embedding when given.
    """
    from ..directions import fit_linear_probe
    from ..training.probes import auc

    columns, volumes = _volume_table(train_rows)
    sick = torch.tensor([str(r.get("group", "")) == "disease" for r in train_rows])
    if bool(sick.all()) or not bool(sick.any()):
        raise LDAEError("the contrast axis needs training subjects of the disease group and of another group")
    score = fit_linear_probe(volumes, sick.double(), "anatomy", "binary", l2=l2).score(volumes.float()).double()
    w, codes, record = _sum_of_rendered(pipe, "disease", group, score, train_rows, load, scans, measure, alpha, steps, l2, progress, codes)
    mu, sd = group.mean.double(), group.std.double()
    pos = ((codes - mu) / sd) @ (w / w.norm())
    gap = float(pos[sick].mean() - pos[~sick].mean())
    if gap < 0:
        w, pos, gap = -w, -pos, -gap
    record.update(columns=columns, anatomy_score_auc_training=auc(score.numpy(), sick.numpy()),
                  group_gap_along_axis=gap, reading_auc_training=auc(pos.numpy(), sick.numpy()))
    meta = {"kind": "contrast", "n": len(train_rows), "target": "group == disease",
            "trained_on": "the model's semantic codes of the training subjects' visits (ldae orient --disease-axis contrast)",
            "axis": "the sum of the group probe's and the anatomy probe's unit normals, each in the sense it renders the disease; "
                    "anatomy probe: a ridge regression of the codes on the anatomy's disease score (a logistic regression of the group "
                    "on the true regional volumes " + ", ".join(columns) + ")",
            "calibration": "the group probe's step: one unit moves the normalised code as far as the groups' gap along the group probe",
            "code_sd_per_alpha": float(pos.std()) / (group.scale * math.sqrt(w.numel())), "contrast": record}
    d = Direction("disease", w.float(), mu.float(), sd.float(), 0.0, group.positive, group.negative,
                  "the groups' mean gap along the group probe, taken along the contrast axis", meta, group.scale, 1)
    return d, record


def age_contrast_direction(pipe, age: Direction, train_rows: list, load, scans: list, measure, alpha: float, steps: int,
                           l2: float = 0.01, progress=None, codes: torch.Tensor | None = None) -> tuple[Direction, dict]:
    """The ``age`` direction of ``age_axis="contrast"`` (module docstring) and its record.

    As ``contrast_direction``, for age: the candidates are the model's ``age`` direction (as +alpha
    moves it) and the codes' ridge regression on the anatomy's age (a ridge regression of age on the
    true regional volumes of the training visits); each is oriented by what it renders (the
    ventricles grow with age) and the new axis is the sum of their oriented unit normals. It reads
    age as the longitudinal axis does: the standardised age regressed on the position along the
    axis (``target_mean``, ``target_std``; the weight turned round, with ``edit_sign`` −1, where the
    older codes sit lower). ``scale`` stays the ``age`` direction's; ``ldae orient --age-years``
    calibrates it afterwards.
    """
    from ..directions import fit_linear_probe

    columns, volumes = _volume_table(train_rows)
    years = [r.get("age") for r in train_rows]
    if not all(_is_number(v) for v in years):
        raise LDAEError("the cohort table has no age for every training visit; give it an 'age' column, or orient without --age-axis contrast")
    years = torch.tensor([float(v) for v in years], dtype=torch.float64)
    if float(years.std()) == 0.0:
        raise LDAEError("the training visits all have the same age; there is no ageing to build an axis from")
    anatomy_age = fit_linear_probe(volumes, years, "anatomy", "continuous", l2=l2)
    score = anatomy_age.score(volumes.float()).double()
    w, codes, record = _sum_of_rendered(pipe, "age", age, score, train_rows, load, scans, measure, alpha, steps, l2, progress, codes)
    mu, sd = age.mean.double(), age.std.double()
    unit = w / w.norm()
    pos = ((codes - mu) / sd) @ unit
    tm, ts = years.mean(), years.std(unbiased=False)
    tn, pc = (years - tm) / ts, pos - pos.mean()
    c = float((pc * (tn - tn.mean())).sum() / (pc * pc).sum().clamp_min(1e-300))
    if c == 0.0 or not math.isfinite(c):
        raise LDAEError("age does not vary along the rebuilt age axis at all; there is nothing to read")
    bias = float(tn.mean() - c * pos.mean())
    r_read = float(torch.corrcoef(torch.stack([c * pos, years]))[0, 1])   # the reading's, so ≥ 0
    record.update(columns=columns, anatomy_age_r_training=float(torch.corrcoef(torch.stack([score, years]))[0, 1]),
                  reading_r_training=r_read)
    meta = {"kind": "contrast", "n": len(train_rows), "target": "age", "target_mean": float(tm), "target_std": float(ts),
            "target_per_unit_score": float(ts), "reading_r": r_read,
            "trained_on": "the model's semantic codes of the training subjects' visits (ldae orient --age-axis contrast)",
            "axis": "the sum of the age direction's and an anatomy probe's unit normals, each in the sense it renders ageing; "
                    "anatomy probe: a ridge regression of the codes on the anatomy's age (a ridge regression of age on the true "
                    "regional volumes " + ", ".join(columns) + ")",
            "calibration": "the age direction's step; the reading: the standardised age regressed on the position along the axis",
            "code_sd_per_alpha": float(pos.std()) / (age.scale * math.sqrt(w.numel())), "contrast": record}
    if "age_axis_group" in age.meta:   # whose ageing the longitudinal axis followed
        meta["age_axis_group"] = age.meta["age_axis_group"]
    return Direction("age", (c * unit).float(), mu.float(), sd.float(), bias, age.positive, age.negative, age.alpha_unit, meta,
                     age.scale, 1 if c > 0 else -1), record


def _volume_table(train_rows: list) -> tuple[list[str], torch.Tensor]:
    """(the cohort's regional volume columns every training visit has, N×K float64 volumes)."""
    from ..cohort.cohort import VOLUME_COLUMNS

    columns = [c for c in VOLUME_COLUMNS if all(_is_number(r.get(c)) for r in train_rows)]
    if not columns:
        raise LDAEError("the cohort table has no regional volume columns (ventricles_ml, …); write it with 'ldae cohort --labels' "
                        "to build the contrast axis")
    return columns, torch.tensor([[r.number(c) for c in columns] for r in train_rows], dtype=torch.float64)


def embed_rows(pipe, train_rows: list, load, progress=None, total: int | None = None) -> torch.Tensor:
    """The semantic codes (N×E, float64) of the training visits; ``progress(done, total)`` after each."""
    codes = []
    for r in train_rows:
        codes.append(pipe.embed(load(r)))
        if progress is not None:
            progress(len(codes), total or len(train_rows))
    return torch.cat(codes).double()


def _sum_of_rendered(pipe, name: str, direction: Direction, score: torch.Tensor, train_rows: list, load, scans: list, measure,
                     alpha: float, steps: int, l2: float, progress, codes) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The contrast axes' common part: the codes' ridge regression on the anatomy ``score``, put on
    ``direction``'s normalisation; ``direction`` (as +alpha moves it) and that anatomy probe each
    edited and oriented; their oriented unit normals summed. Returns (the sum, the codes, the record)."""
    from ..directions import fit_linear_probe

    embedding = len(train_rows) if codes is None else 0
    total = embedding + 2 * len(scans)
    if codes is None:
        codes = embed_rows(pipe, train_rows, load, progress, total)
    codes = torch.as_tensor(codes, dtype=torch.float64)
    anatomy = fit_linear_probe(codes, score, name, "continuous", l2=l2)
    mu, sd = direction.mean.double(), direction.std.double()
    unit = lambda w: w / w.norm()
    u_probe = unit(direction.weight.double()) * direction.edit_sign
    u_anatomy = unit(anatomy.weight.double() / anatomy.std.double() * sd)
    first = "group" if name == "disease" else name   # the disease direction is the group probe
    candidates = {first: Direction.from_settings(name, u_probe, mu, sd, {"scale": direction.scale}),
                  "anatomy": Direction.from_settings(name, u_anatomy, mu, sd, {"scale": direction.scale})}
    senses, record = {}, {f"cos_{first}_anatomy": float(u_probe @ u_anatomy), "candidates": {}}
    for k, (key, d) in enumerate(candidates.items()):
        step = None if progress is None else (lambda done, _, k=k: progress(embedding + k * len(scans) + done, total))
        flip, rec = orientation(name, rendered_changes(pipe, {key: d}, scans, measure, alpha, steps, step)[key])
        senses[key] = flip
        record["candidates"][key] = {"sense": flip, "ml_per_alpha": rec["ml_per_alpha"], "agreeing_scans": rec["agreeing_scans"]}
    return senses[first] * u_probe + senses["anatomy"] * u_anatomy, codes, record


def _follow(bar):
    """A progress(done, total) callback that moves a tqdm bar."""
    def progress(done, total):
        bar.n = done
        bar.refresh()
    return progress


def _is_number(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def first_visits(train_rows: list, n: int, seed: int) -> list:
    """The first visits of n training subjects, drawn as ``ldae evaluate`` draws test subjects (a
    seeded shuffle within each group, groups taken in turn); rows in visit order."""
    from .sections import select_subjects

    by_subject: dict[str, list] = {}
    for r in train_rows:
        by_subject.setdefault(r.subject, []).append(r)
    return [by_subject[s][0] for s in select_subjects(by_subject, n, seed)]


def orient(s: OrientSettings, command: str = "") -> dict:
    """Measure what the model renders along each direction, and write the oriented model as a new
    bundle at ``s.output`` (the model given is never changed). Returns the record (also written
    into the directions' meta and to ``orientation.json`` beside the bundle's files)."""
    from ..pipeline import LDAEPipeline
    from ..weights import load_model
    from ..weights.bundle import annotate_bundle, is_bundle
    from .sections import EvalSettings, Loader, _bar, read_inputs
    from .volumes import build_measure, label_values

    if s.output.exists():
        raise LDAEError(f"{s.output} exists; give a new folder for the oriented bundle")
    if s.threads:
        torch.set_num_threads(int(s.threads))
    inp = read_inputs(EvalSettings(workdir=s.workdir, output=s.output, model=s.model, cohort=s.cohort))
    if not is_bundle(inp.model_path):
        raise LDAEError(f"{inp.model_path} is not an LDAE bundle; orientation writes a bundle and needs one to start from")
    model = load_model(inp.model_path, verify=s.verify)
    known = {name: d for name, d in model.directions.items() if EXPECTED_SIGN.get((name, ORIENTING_REGION))}
    if not known:
        raise LDAEError(f"{inp.model_path} has no direction whose effect is known to orient by "
                        f"({', '.join(sorted({n for n, _ in EXPECTED_SIGN}))}); it has {', '.join(model.directions) or 'none'}")
    if s.disease_axis == "contrast" and "disease" not in known:
        raise LDAEError(f"{inp.model_path} has no 'disease' direction to build the contrast axis from")
    if s.age_axis == "contrast" and "age" not in known:
        raise LDAEError(f"{inp.model_path} has no 'age' direction to build the age contrast axis from")
    ageing = [r for r in inp.train_rows if s.ageing_group is None or str(r.get("group", "")) == s.ageing_group]
    if not ageing:
        raise LDAEError(f"no training subject is in group {s.ageing_group!r}; give a group of the cohort's 'group' column")
    rate = within_subject_rate(ageing, "ventricles_ml")
    if s.age_years and "age" in known and not (rate and rate > 0):
        raise LDAEError("the cohort's ventricles do not grow with age within subjects (or it has one visit each); --age-years has nothing to calibrate by")
    if not all(r.get("labels_path") for r in inp.train_rows):
        raise LDAEError("the cohort has no label maps (labels_path); write it with 'ldae cohort --labels' so the edits can be measured")
    space = model.config.space
    load = Loader(inp.rows, space, s.workdir)
    rng = np.random.default_rng(int(s.seed))
    measure = build_measure(inp.train_rows, space, load, label_values(inp.cohort_csv.parent / "cohort.json"),
                            max_subjects=s.atlas_subjects, rng=rng)
    rows = first_visits(inp.train_rows, s.subjects, s.seed)
    pipe = LDAEPipeline(model, device=torch.device(s.device), cache_size=len(rows) + 1, batch_size=2)
    scans = [load(r) for r in rows]
    bar_settings = EvalSettings(workdir=s.workdir, output=s.output, progress=s.progress)
    rebuilt, builders = {}, {"disease": contrast_direction, "age": age_contrast_direction}
    axes = [n for n, axis in (("disease", s.disease_axis), ("age", s.age_axis)) if axis == "contrast"]
    if axes:   # the training visits' codes, embedded once for every axis rebuilt
        bar = _bar(bar_settings, len(inp.train_rows), "codes of the training visits", "visit")
        codes = embed_rows(pipe, inp.train_rows, load, _follow(bar))
        bar.close()
    for name in axes:
        bar = _bar(bar_settings, 2 * len(scans), f"{name} contrast axis", "edit")
        known[name], rebuilt[name] = builders[name](pipe, known[name], inp.train_rows, load, scans, measure, s.alpha, s.steps,
                                                    progress=_follow(bar), codes=codes)
        bar.close()
    bar = _bar(bar_settings, len(rows) * len(known), "orient", "edit")
    changes = rendered_changes(pipe, known, scans, measure, s.alpha, s.steps, _follow(bar))
    bar.close()
    record = {"command": command, "model": str(inp.model_path), "subjects": [r.subject for r in rows], "alpha": s.alpha, "steps": s.steps,
              "ageing_group": s.ageing_group, "measure_atlas_subjects": list(measure.atlas_subjects), "directions": {},
              "not_oriented": sorted(set(model.directions) - set(known)), "disease_axis": s.disease_axis, "age_axis": s.age_axis}
    for name, rec in rebuilt.items():
        record[f"{name}_contrast"] = rec
    updates = {}
    for name, d in known.items():
        flip, rec = orientation(name, changes[name], rate if name == "age" else None)
        rec.update(subjects=record["subjects"], alpha=s.alpha, steps=s.steps)
        change = {"edit_sign": d.edit_sign * flip}
        if name == "age" and s.age_years:
            factor = s.age_years / rec["years_per_alpha"]
            change["scale"] = d.scale * factor
            oriented = Direction.from_settings(name, d.weight, d.mean, d.std, {**d.settings(), **change})
            again = rendered_changes(pipe, {name: oriented}, scans, measure, s.alpha, s.steps)[name]
            flip2, rec2 = orientation(name, again, rate)
            if flip2 != 1:
                raise LDAEError(f"at {factor:.2f} times its scale the age direction renders against ageing; it cannot be calibrated to {s.age_years} years")
            rec = {**rec2, "flipped": rec["flipped"], "subjects": rec["subjects"], "alpha": s.alpha, "steps": s.steps, "rescaled_by": factor,
                   "before_rescaling": {k: rec[k] for k in ("ml_per_alpha", "agreeing_scans", "years_per_alpha")}}
        if name == "age" and "years_per_alpha" in rec:
            change["alpha_unit"] = f"{rec['years_per_alpha']:.1f} years of ageing, as rendered"
            meta = {**d.meta, "years_per_alpha": rec["years_per_alpha"]}
            if "probe_years_per_alpha" in meta:
                meta["probe_years_per_alpha"] = meta["probe_years_per_alpha"] * flip * change.get("scale", d.scale) / d.scale
        else:
            meta = dict(d.meta)
        change["meta"] = {**meta, "rendered": rec}
        # a rebuilt direction replaces the bundle's whole direction; the others change their settings only
        updates[name] = Direction.from_settings(name, d.weight, d.mean, d.std, {**d.settings(), **change}) \
            if name in rebuilt else change
        record["directions"][name] = {k: v for k, v in change.items() if k != "meta"} | rec
    s.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{s.output.name}.", dir=s.output.parent))
    try:
        staged = tmp / "bundle"
        shutil.copytree(inp.model_path, staged)
        annotate_bundle(staged, directions=updates, documents={"orientation.json": json.dumps(record, indent=2) + "\n"})
        staged.rename(s.output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
