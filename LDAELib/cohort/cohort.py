"""A synthetic longitudinal cohort built from real templates: ``ldae cohort``.

Each subject is one of the real templates (:mod:`.templates`), given an identity by a smooth random
diffeomorphism, a small global affine, its own contrast, and constitutional differences in ventricle,
hippocampus and cortex size; it has a baseline age, a group (``healthy`` or ``disease``) and 3–5
visits over 0–36 months. At every visit the atrophy of its group and age (:mod:`.atrophy`) deforms the
template, then a bias field and Rician noise of that visit are added. Everything is drawn from
generators derived from the seed and the subject's index, so adding subjects never changes earlier
ones and a visit does not depend on how many visits follow.

The volumes come out as the authors' stage-A output would: in MNI space (the FSL MNI152 box, LAS),
brain-extracted (background exactly 0), float32 T1-like intensities in arbitrary units; the
regional volumes of every visit are measured on its deformed soft label maps (partial-volume sums).

Output folder::

    cohort.csv            one row per visit: subject, visit, months, age, group, path, …, volumes (mL)
    cohort.json           the generation parameters, the seed, the grid, the template files' SHA-256
    NOTICE.txt            the licence notices of the templates, copied from the installed packages
    sub-0001/
      sub-0001_visit-1_T1w.nii.gz       (visit 1 = baseline, month 0)
      sub-0001_visit-1_labels.nii.gz    (with ``labels``: uint8, see LABELS)
      subject.json                      the subject's draws and its visits' volumes
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..errors import Cancelled, LDAEError
from .atrophy import COMPONENTS, LOBES, AtrophyModel, TemplateOnGrid
from .deform import (
    apply_affine,
    control_to_grid,
    exp_velocity,
    mni_grid,
    rotation_matrix,
    sample,
    smooth_noise,
    voxel_grid,
)
from .templates import CHANNELS, TEMPLATE_NAMES, load_template, notice_texts

GROUPS = ("healthy", "disease")
LABELS = {0: "background", 1: "csf", 2: "grey_matter", 3: "white_matter", 4: "ventricles", 5: "hippocampus_l", 6: "hippocampus_r"}
VOLUME_COLUMNS = ("ventricles_ml", "hippocampus_l_ml", "hippocampus_r_ml", "grey_matter_ml", "white_matter_ml", "csf_ml", "whole_brain_ml")
VOLUME_MEANING = {
    "ventricles_ml": "lateral ventricles (with the parts of the third ventricle joined to them)",
    "hippocampus_l_ml": "left hippocampus (AAL 37 × grey matter)",
    "hippocampus_r_ml": "right hippocampus (AAL 38 × grey matter)",
    "grey_matter_ml": "all grey matter: cortex, deep grey nuclei, hippocampi, cerebellum",
    "white_matter_ml": "all white matter",
    "csf_ml": "CSF inside the brain mask, ventricles included",
    "whole_brain_ml": "grey + white matter (parenchyma)",
}
SCHEDULE_MONTHS = 6.0  # visits fall near multiples of 6 months, like ADNI's schedule
BRAIN_CENTRE_MM = (0.0, -18.0, 18.0)


@dataclass
class CohortConfig:
    """Every parameter of a cohort; with the seed it determines every file (JSON round trip).

    Ranges are (low, high) of a uniform draw per subject unless said otherwise.
    """

    n_subjects: int = 10
    seed: int = 0
    visits_min: int = 3
    visits_max: int = 5
    max_months: float = 36.0
    spacing_mm: float = 2.0
    disease_fraction: float = 0.5
    labels: bool = False
    baseline_age: tuple[float, float] = (55.0, 85.0)
    onset_years: tuple[float, float] = (3.0, 10.0)  # disease group: years since onset at baseline
    templates: tuple[str, ...] = TEMPLATE_NAMES
    warp_mm: tuple[float, float] = (2.0, 4.0)  # RMS per axis of the identity velocity field
    warp_control_mm: float = 8.0  # control grid of the identity field; smoothed by 1.5 of its spacings
    scale_sd: float = 0.03  # log-sd of the global scaling (head size left after registration)
    anisotropy_sd: float = 0.02
    rotation_deg: float = 2.0  # sd per axis
    translation_mm: float = 2.0  # sd per axis
    visit_jitter_deg: float = 0.3  # each visit's own registration residual (sd)
    visit_jitter_mm: float = 0.5
    trait_sd: dict = field(default_factory=lambda: {"ventricles": 0.2, "hippocampus": 0.06, "cortex": 0.03})
    rate_factor_sd: float = 0.25  # log-sd of a subject's healthy and disease rate factors
    contrast: dict = field(default_factory=lambda: {"csf": (0.12, 0.30), "gm": (0.48, 0.60), "wm": (0.76, 0.88)})
    gain: tuple[float, float] = (600.0, 1400.0)  # arbitrary scanner units
    bias_rms: tuple[float, float] = (0.03, 0.10)  # log of the multiplicative bias field
    noise: tuple[float, float] = (0.01, 0.03)  # Rician noise sd, relative to white matter
    atrophy: AtrophyModel = field(default_factory=AtrophyModel)

    def __post_init__(self) -> None:
        if isinstance(self.atrophy, dict):
            self.atrophy = AtrophyModel.from_dict(self.atrophy)
        self.templates = tuple(self.templates)
        for name in ("baseline_age", "onset_years", "warp_mm", "gain", "bias_rms", "noise"):
            setattr(self, name, tuple(float(x) for x in getattr(self, name)))
        self.contrast = {k: tuple(float(x) for x in v) for k, v in self.contrast.items()}
        self.validate()

    def validate(self) -> None:
        if self.n_subjects < 1:
            raise LDAEError("the cohort needs at least one subject (--subjects N with N ≥ 1)")
        slots = int(self.max_months // SCHEDULE_MONTHS)
        if not 1 <= self.visits_min <= self.visits_max:
            raise LDAEError(f"visits: need 1 ≤ --visits-min ≤ --visits-max, got {self.visits_min} and {self.visits_max}")
        if self.visits_max > slots + 1:
            raise LDAEError(f"--visits-max {self.visits_max} does not fit {self.max_months:g} months at one visit per {SCHEDULE_MONTHS:g} months (at most {slots + 1})")
        if not 0.0 <= self.disease_fraction <= 1.0:
            raise LDAEError(f"--disease-fraction must lie between 0 and 1, got {self.disease_fraction}")
        if not 0.5 <= self.spacing_mm <= 4.0:
            raise LDAEError(f"--spacing must lie between 0.5 and 4 mm, got {self.spacing_mm:g}: on coarser grids the hippocampus "
                            "spans too few voxels to simulate its atrophy (default 2 mm; resample the written scans for coarser models)")
        unknown = set(self.templates) - set(TEMPLATE_NAMES)
        if unknown or not self.templates:
            raise LDAEError(f"unknown templates {sorted(unknown)}; choose from {', '.join(TEMPLATE_NAMES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["atrophy"] = self.atrophy.to_dict()
        return json.loads(json.dumps(d))  # tuples → lists

    @classmethod
    def from_dict(cls, d: dict) -> "CohortConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise LDAEError(f"unknown cohort settings {sorted(unknown)}")
        return cls(**d)

@dataclass
class SubjectPlan:
    """Everything drawn for one subject (no arrays); JSON-able."""

    index: int
    subject: str
    template: str
    group: str
    baseline_age: float
    months: list[float]
    years_since_onset: float | None
    factors: dict
    identity: dict
    intensity: dict

    def ages(self) -> list[float]:
        return [self.baseline_age + m / 12.0 for m in self.months]

    def log_changes(self, model: AtrophyModel) -> list[np.ndarray]:
        """Designed log-volume changes (order of atrophy.COMPONENTS) at every visit."""
        out = []
        for age, m in zip(self.ages(), self.months):
            onset = None if self.years_since_onset is None else self.years_since_onset + m / 12.0
            out.append(model.log_change(age, onset, self.factors))
        return out


def subject_id(index: int) -> str:
    return f"sub-{index + 1:04d}"


def is_disease(index: int, fraction: float) -> bool:
    """Deterministic, evenly spread group assignment: exactly ⌊n·fraction⌋ of the first n subjects.

    With 0.5 the groups alternate (healthy, disease, …), and since templates go in pairs
    (:func:`template_for`), group and template are not confounded.
    """
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def template_for(index: int, templates: tuple[str, ...]) -> str:
    return templates[(index // 2) % len(templates)]


def rng_for(seed: int, index: int, *part: int) -> np.random.Generator:
    """The generator of one subject (``part`` = ()), its identity field (1,) or its visit v (2, v).

    Derived from (seed, subject index, part) only, so subjects and visits are independent streams.
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), *part)))


def plan_subject(config: CohortConfig, index: int) -> SubjectPlan:
    rng = rng_for(config.seed, index)
    disease = is_disease(index, config.disease_fraction)
    age = float(rng.uniform(*config.baseline_age))
    n_visits = int(rng.integers(config.visits_min, config.visits_max + 1))
    slots = np.arange(1, int(config.max_months // SCHEDULE_MONTHS) + 1) * SCHEDULE_MONTHS
    chosen = np.sort(rng.choice(slots, size=n_visits - 1, replace=False)) if n_visits > 1 else np.zeros(0)
    jitter = rng.uniform(-1.0, 1.0, size=chosen.size)
    months = [0.0] + [round(float(min(max(m + j, 1.0), config.max_months)), 1) for m, j in zip(chosen, jitter)]
    onset = float(rng.uniform(*config.onset_years))
    sd = config.rate_factor_sd
    factors = {
        "healthy": float(rng.lognormal(0.0, sd)),
        "disease": float(rng.lognormal(0.0, sd)),
        "hippocampus_l": float(rng.lognormal(0.0, 0.1)),
        "hippocampus_r": float(rng.lognormal(0.0, 0.1)),
        "lobes_healthy": {lobe: float(rng.lognormal(0.0, 0.15)) for lobe in LOBES},
        "lobes_disease": {lobe: float(rng.lognormal(0.0, 0.15)) for lobe in LOBES},
    }
    t = config.trait_sd
    trait_sd = [t["ventricles"], t["hippocampus"], t["hippocampus"], *[t["cortex"]] * len(LOBES)]
    factors["trait"] = [float(x) for x in rng.normal(0.0, trait_sd)]
    identity = {
        "warp_mm": float(rng.uniform(*config.warp_mm)),
        "scale": float(np.exp(rng.normal(0.0, config.scale_sd))),
        "anisotropy": [float(x) for x in np.exp(rng.normal(0.0, config.anisotropy_sd, 3))],
        "rotation_deg": [float(x) for x in rng.normal(0.0, config.rotation_deg, 3)],
        "translation_mm": [float(x) for x in rng.normal(0.0, config.translation_mm, 3)],
    }
    c = config.contrast
    intensity = {
        "csf": float(rng.uniform(*c["csf"])),
        "gm": float(rng.uniform(*c["gm"])),
        "wm": float(rng.uniform(*c["wm"])),
        "gain": float(rng.uniform(*config.gain)),
        "bias_rms": float(rng.uniform(*config.bias_rms)),
        "noise": float(rng.uniform(*config.noise)),
    }
    return SubjectPlan(
        index=index, subject=subject_id(index), template=template_for(index, config.templates),
        group=GROUPS[int(disease)], baseline_age=round(age, 2), months=months,
        years_since_onset=round(onset, 2) if disease else None, factors=factors, identity=identity, intensity=intensity,
    )

@dataclass
class Visit:
    """One generated visit. image: float32 (I, J, K); labels: uint8 (I, J, K) (see LABELS);
    volumes: mL per VOLUME_COLUMNS; affine: 4×4 voxel → MNI world (mm)."""

    visit: int
    months: float
    age: float
    image: np.ndarray
    labels: np.ndarray
    volumes: dict
    affine: np.ndarray

@functools.lru_cache(maxsize=None)
def template_on_grid(name: str, spacing_mm: float) -> TemplateOnGrid:
    """A template prepared for the MNI grid at ``spacing_mm`` (seconds; cached for the process)."""

    shape, affine = mni_grid(spacing_mm)
    return TemplateOnGrid(load_template(name), shape, affine)


def _affine_mm(rotation_deg, translation_mm, scale=1.0, anisotropy=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A global map (world mm → world mm) about the brain centre, as 4×4."""

    c = np.asarray(BRAIN_CENTRE_MM)
    lin = rotation_matrix(np.radians(np.asarray(rotation_deg))) @ np.diag(scale * np.asarray(anisotropy))
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = c - lin @ c + np.asarray(translation_mm)
    return m

@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch CPU threads (None: leave as is), restoring the count after."""

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def synthesize_subject(config: CohortConfig, index: int, cancel=None, threads: int | None = 1):
    """Generate every visit of subject ``index`` in memory → (SubjectPlan, [Visit, …]).

    ``cancel``: optional callable returning True to stop (raises Cancelled). ``threads``: torch CPU
    threads (default 1: the work is many small memory-bound steps, which more threads slow down
    on a busy machine).
    """
    with torch_threads(threads):
        return _synthesize_subject(config, index, cancel)


def _synthesize_subject(config: CohortConfig, index: int, cancel):
    plan = plan_subject(config, index)
    tog = template_on_grid(plan.template, float(config.spacing_mm))
    shape, affine = tog.shape, tog.affine
    spacing = float(config.spacing_mm)

    idn = plan.identity
    ctrl = config.warp_control_mm
    noise = smooth_noise(rng_for(config.seed, index, 1), 3, ctrl, 1.5)
    v_id = control_to_grid(noise, ctrl, shape, affine) * (idn["warp_mm"] / spacing)
    # World-mm velocity → voxel units of the LAS grid (its I axis runs towards −x).
    v_id = v_id * torch.tensor([float(np.sign(affine[a, a])) for a in range(3)]).view(3, 1, 1, 1)
    base = voxel_grid(shape)
    d_id = exp_velocity(v_id)
    inv_aff = np.linalg.inv(affine)
    subject_map = inv_aff @ _affine_mm(idn["rotation_deg"], idn["translation_mm"], idn["scale"], idn["anisotropy"]) @ affine

    ints = plan.intensity
    canon = [0.0, 0.25, 0.55, 0.80, 1.20]
    slope = (ints["wm"] - ints["gm"]) / 0.25
    target = [0.0, ints["csf"], ints["gm"], ints["wm"], ints["wm"] + 0.40 * slope]
    visits = []
    for v, (months, age, log_change) in enumerate(zip(plan.months, plan.ages(), plan.log_changes(config.atrophy))):
        if cancel is not None and cancel():
            raise Cancelled()
        rng = rng_for(config.seed, index, 2, v)
        # The visit's registration residue moves the whole head rigidly (output side), so it
        # changes no volume; then the subject's warp, its global map, and the atrophy.
        jitter = inv_aff @ _affine_mm(rng.normal(0.0, config.visit_jitter_deg, 3), rng.normal(0.0, config.visit_jitter_mm, 3)) @ affine
        p = apply_affine(jitter, base)
        r = apply_affine(subject_map, p + sample(d_id, p, padding="border"))
        d_atr = exp_velocity(tog.velocity(log_change))
        w = r + sample(d_atr, r, padding="border")
        src_coords = apply_affine(tog.out_to_source, w)
        ch = sample(tog.source, src_coords).numpy()
        m = {c: ch[i] for i, c in enumerate(CHANNELS)}
        measured = sample(tog.measure_source, src_coords).numpy()
        brain = m["gm"] + m["wm"] + m["csf"]
        inside = brain >= 0.5

        bias_ctrl = smooth_noise(rng, 1, 30.0, 1.0)
        bias = np.exp(ints["bias_rms"] * control_to_grid(bias_ctrl, 30.0, shape, affine)[0].numpy())
        gain = ints["gain"] * float(np.exp(rng.normal(0.0, 0.02)))
        img = np.interp(m["t1"], canon, target) * bias * gain
        sd = ints["noise"] * ints["wm"] * gain
        n1, n2 = rng.standard_normal((2, *shape))
        img = np.sqrt((img + sd * n1) ** 2 + (sd * n2) ** 2)
        img = np.where(inside, img, 0.0).astype(np.float32)

        visits.append(Visit(visit=v + 1, months=months, age=age, image=img, labels=_labels(m, inside),
                            volumes=_volumes(dict(zip(CHANNELS[1:], measured)), tog.voxel_ml), affine=affine.copy()))
    return plan, visits


def _labels(m: dict, inside: np.ndarray) -> np.ndarray:
    classes = np.stack([
        np.clip(m["csf"] - m["ventricles"], 0, None),
        np.clip(m["gm"] - m["hippocampus_l"] - m["hippocampus_r"], 0, None),
        m["wm"], m["ventricles"], m["hippocampus_l"], m["hippocampus_r"],
    ])
    return np.where(inside, np.argmax(classes, axis=0) + 1, 0).astype(np.uint8)


def _volumes(m: dict, voxel_ml: float) -> dict:
    s = {k: float(m[k].sum(dtype=np.float64)) * voxel_ml for k in ("ventricles", "hippocampus_l", "hippocampus_r", "gm", "wm", "csf")}
    return {
        "ventricles_ml": s["ventricles"], "hippocampus_l_ml": s["hippocampus_l"], "hippocampus_r_ml": s["hippocampus_r"],
        "grey_matter_ml": s["gm"], "white_matter_ml": s["wm"], "csf_ml": s["csf"], "whole_brain_ml": s["gm"] + s["wm"],
    }

# ---------------------------------------------------------------------------------------------
# Writing


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, description: str) -> bytes:
    """A gzipped NIfTI as bytes, byte-identical for identical input (gzip mtime fixed at 0)."""

    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code="mni")
    img.set_qform(affine, code="mni")
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode("ascii")[:79]
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def _round(x: float, nd: int) -> float:
    return float(f"{x:.{nd}f}")


def _write_subject(out: Path, config: CohortConfig, plan: SubjectPlan, visits: list[Visit]) -> dict:
    """Write one subject into a temporary folder and rename it into place (all or nothing)."""
    final = out / plan.subject
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{plan.subject}-", dir=out))
    try:
        rows = []
        for vis in visits:
            stem = f"{plan.subject}_visit-{vis.visit}"
            row = {"subject": plan.subject, "visit": vis.visit, "months": vis.months, "age": _round(vis.age, 2),
                   "group": plan.group, "path": f"{plan.subject}/{stem}_T1w.nii.gz"}
            (tmp / f"{stem}_T1w.nii.gz").write_bytes(_nifti_bytes(
                vis.image, vis.affine, f"LDAE synthetic {plan.subject} v{vis.visit} (not a scan)"))
            if config.labels:
                row["labels_path"] = f"{plan.subject}/{stem}_labels.nii.gz"
                (tmp / f"{stem}_labels.nii.gz").write_bytes(_nifti_bytes(vis.labels, vis.affine, f"LDAE synthetic labels {plan.subject} v{vis.visit}"))
            row["template"] = plan.template
            row.update({k: _round(vis.volumes[k], 3) for k in VOLUME_COLUMNS})
            rows.append(row)
        record = {"plan": asdict(plan), "rows": rows,
                  "designed_log_change": {c: [round(float(l[i]), 5) for l in plan.log_changes(config.atrophy)] for i, c in enumerate(COMPONENTS)}}
        (tmp / "subject.json").write_text(json.dumps(record, indent=1))
        _publishable(tmp, 0o777)
        for f in tmp.iterdir():
            _publishable(f, 0o666)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _publishable(path: Path, mode: int) -> None:
    """Temporary files and folders are private (0600/0700); give the outputs the usual umask mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _description(config: CohortConfig) -> dict:
    """cohort.json: everything but the subject count decides the files (checked when resuming)."""

    shape, affine = mni_grid(config.spacing_mm)
    files = {}
    for name in config.templates:
        for key, path in load_template(name).sources.items():
            files[f"{name}:{key}"] = {"path": path, "sha256": _sha256(path)}
    return {
        "generator": "LDAE for 3D Slicer: ldae cohort (LDAELib.cohort)",
        "note": "Synthetic images simulated from real templates; not acquired scans; groups and ages are simulated labels, not clinical ones.",
        "seed": config.seed,
        "config": config.to_dict(),
        "grid": {"space": "MNI152 (FSL box, LAS)", "shape": list(shape), "spacing_mm": config.spacing_mm, "affine": affine.tolist()},
        "labels": {str(k): v for k, v in LABELS.items()},
        "volumes": VOLUME_MEANING,
        "atrophy_components": list(COMPONENTS),
        "template_files": files,
        "random_streams": "numpy SeedSequence(seed, spawn_key=(subject index,)) for the subject's draws, (index, 1) for its identity field, (index, 2, visit) for each visit",
        "licence": "NOTICE.txt",
    }


def _notice() -> str:
    texts = notice_texts()
    parts = [
        "The images in this folder are synthetic: smooth deformations, intensity changes, bias fields and noise applied to",
        "real brain templates. They derive from:",
        "  * the ICBM 2009a nonlinear symmetric T1 template and its grey/white-matter maps (shipped inside nilearn);",
        "  * Colin27 (ch2bet) and the AAL labels (shipped by Debian's mricron-data).",
        "The notices of those files follow, copied from the installed packages.",
        "",
    ]
    headings = {
        "mni": "MNI / ICBM templates: McConnell Brain Imaging Centre notice (as quoted in nibabel's COPYING)",
        "nilearn": "nilearn licence (nilearn ships the ICBM152 2009a files)",
        "mricron-data": "Debian copyright of mricron-data (/usr/share/doc/mricron-data/copyright; ships Colin27 and AAL)",
    }
    for key, title in headings.items():
        parts += ["=" * 100, title, "=" * 100, texts.get(key, "(not found on this machine)").rstrip(), ""]
    return "\n".join(parts) + "\n"

@dataclass
class CohortResult:
    csv_path: Path
    generated: list[str]
    reused: list[str]
    seconds_per_subject: list[float]
    visits_per_subject: list[int]
    prepare_seconds: float = 0.0  # reading the templates and preparing them for the grid (once per process)


def _generate_subject(out: Path, config: CohortConfig, index: int, threads: int | None) -> tuple[dict, float, int]:
    """One subject, synthesised and written (a worker process's task): (record, seconds, visits)."""
    t0 = time.perf_counter()
    plan, visits = synthesize_subject(config, index, threads=threads)
    record = _write_subject(out, config, plan, visits)
    return record, time.perf_counter() - t0, len(visits)


def generate_cohort(output_dir, config: CohortConfig, progress=None, cancel=None, threads: int | None = 1,
                    workers: int = 1) -> CohortResult:
    """Write the cohort into ``output_dir``; resumes a folder made with the same settings.

    Subjects are written all-or-nothing (temporary folder, then rename); subjects already complete
    are kept, so an interrupted run continues where it stopped and a larger ``n_subjects`` extends
    the cohort. A non-empty folder that is not a cohort, or one made with other settings, is refused.
    ``cohort.csv``, ``cohort.json`` and ``NOTICE.txt`` are (re)written at the end.

    Args:
        progress: optional ``progress(done, total, stage)`` after each subject.
        cancel: optional callable returning True to stop between visits (raises Cancelled).
        threads: torch CPU threads while generating (default 1; None leaves torch's setting).
        workers: subjects generated at once, each in its own process (default 1: in this
            process). The files are the same whatever the number: every subject has its own
            random streams. With several workers, ``cancel`` is checked between subjects.
    """
    from ..inference.outputs import OutputSet, ensure_folder

    out = Path(output_dir)
    description = _description(config)
    meta_path = out / "cohort.json"
    if out.exists() and any(out.iterdir()):
        if not meta_path.is_file():
            raise LDAEError(f"{out} is not empty and holds no cohort.json; choose a new or empty folder")
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise LDAEError(f"{meta_path} is unreadable ({err}); choose a new folder") from None
        diff = _differences(old, description)
        if diff:
            raise LDAEError(f"{out} holds a cohort made with other settings ({'; '.join(diff[:4])}); "
                            "use the same settings to resume or extend it, or choose a new folder")
        for stale in out.glob(".tmp-sub-*"):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
    ensure_folder(out)
    with OutputSet() as outs:
        outs.add_json(meta_path, description | {"n_subjects": config.n_subjects, "complete": False})

    result = CohortResult(out / "cohort.csv", [], [], [], [])
    todo = [i for i in range(config.n_subjects) if not (out / subject_id(i) / "subject.json").is_file()]
    parallel = workers > 1 and len(todo) > 1
    t0 = time.perf_counter()
    if not parallel:  # (each worker process prepares the templates it needs)
        with torch_threads(threads):
            for name in sorted({template_for(i, config.templates) for i in todo}):
                template_on_grid(name, float(config.spacing_mm))
    result.prepare_seconds = time.perf_counter() - t0
    records = []
    if parallel:
        records = _generate_in_workers(out, config, todo, result, progress, cancel, threads, workers)
    else:
        for i in range(config.n_subjects):
            sid = subject_id(i)
            done = out / sid / "subject.json"
            if done.is_file():
                records.append(json.loads(done.read_text()))
                result.reused.append(sid)
            else:
                t0 = time.perf_counter()
                plan, visits = synthesize_subject(config, i, cancel=cancel, threads=threads)
                records.append(_write_subject(out, config, plan, visits))
                result.generated.append(sid)
                result.seconds_per_subject.append(time.perf_counter() - t0)
                result.visits_per_subject.append(len(visits))
            if progress is not None:
                progress(i + 1, config.n_subjects, sid)

    rows = [row for rec in records for row in rec["rows"]]
    columns = ["subject", "visit", "months", "age", "group", "path"] + (["labels_path"] if config.labels else []) + ["template", *VOLUME_COLUMNS]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with OutputSet() as outs:
        outs.add_file(result.csv_path, lambda tmp: Path(tmp).write_text(text.getvalue()))
        outs.add_file(out / "NOTICE.txt", lambda tmp: Path(tmp).write_text(_notice()))
        outs.add_json(meta_path, description | {"n_subjects": config.n_subjects, "complete": True})
    for name in ("cohort.csv", "cohort.json", "NOTICE.txt"):
        _publishable(out / name, 0o666)
    return result


def _generate_in_workers(out: Path, config: CohortConfig, todo: list[int], result: CohortResult, progress, cancel,
                         threads: int | None, workers: int) -> list[dict]:
    """The subjects in ``todo`` in a pool of spawned processes; the records of all subjects in order."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from ..errors import Cancelled

    by_index: dict[int, dict] = {}
    for i in range(config.n_subjects):
        if i not in todo:
            by_index[i] = json.loads((out / subject_id(i) / "subject.json").read_text())
            result.reused.append(subject_id(i))
    done_count = len(by_index)
    # spawn, not fork: the parent's torch may already hold OpenMP threads
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_generate_subject, out, config, i, threads): i for i in todo}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                if cancel is not None and cancel():
                    raise Cancelled("cohort generation cancelled; the subjects already written are kept")
                for fut in finished:
                    i = pending.pop(fut)
                    record, seconds, n_visits = fut.result()
                    by_index[i] = record
                    result.generated.append(subject_id(i))
                    result.seconds_per_subject.append(seconds)
                    result.visits_per_subject.append(n_visits)
                    done_count += 1
                    if progress is not None:
                        progress(done_count, config.n_subjects, subject_id(i))
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [by_index[i] for i in range(config.n_subjects)]


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    oc, nc = dict(old.get("config", {})), dict(new["config"])
    oc.pop("n_subjects", None), nc.pop("n_subjects", None)
    for k in sorted(set(oc) | set(nc)):
        if oc.get(k) != nc.get(k):
            diffs.append(f"{k}: {oc.get(k)} there, {nc.get(k)} now")
    for k in ("seed", "grid", "template_files"):
        if k != "template_files" and old.get(k) != new.get(k) and f"{k}:" not in " ".join(diffs):
            diffs.append(f"{k} differs")
    old_sha = {k: v.get("sha256") for k, v in old.get("template_files", {}).items()}
    new_sha = {k: v.get("sha256") for k, v in new["template_files"].items()}
    if old_sha != new_sha:
        diffs.append("the template files differ from the ones it was made from")
    return diffs
