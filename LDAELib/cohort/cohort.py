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
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..errors import Cancelled, LDAEError
from .atrophy import COMPONENTS, TemplateOnGrid
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
from .plan import CohortConfig, SubjectPlan, plan_subject, rng_for, subject_id, template_for  # noqa: F401  (CohortConfig: re-exported)
from .templates import CHANNELS, load_template, notice_texts

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
BRAIN_CENTRE_MM = (0.0, -18.0, 18.0)


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
