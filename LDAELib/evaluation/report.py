"""``ldae evaluate``: a trained model judged on the held-out test subjects of its work folder.

Everything is computed in model space (stage B of the raw cohort scans, ``space.to_model_space``),
against the model-space input, with SSIM/PSNR at data_range 1 (model space is [0, 1]). The output
folder holds ``report.md``, ``metrics.json`` (every number of the report, and per-subject values) and
PNG figures; it is written into a temporary folder beside the destination and renamed into place at
the end, so a failure or Ctrl-C leaves nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LDAEError
from .volumes import REGIONS, RegionMeasure, agreement, build_measure, has_volume_truth, label_values, spearman, truth_of

EXPECTED_SIGN = {("disease", "ventricles"): +1, ("disease", "hippocampus"): -1, ("age", "ventricles"): +1, ("age", "hippocampus"): -1}
"""+alpha disease / older → larger ventricles, smaller hippocampi (the cohort's simulated atrophy)."""

DEFAULT_ALPHAS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
DEFAULT_STEPS = (10, 20, 50)
SSIM_TARGET, SSIM_TARGET_T = 0.95, 20
RHO_TARGET = 0.9


@dataclass
class EvalSettings:
    workdir: Path
    output: Path
    model: Path | None = None
    cohort: Path | None = None
    steps: tuple[int, ...] = DEFAULT_STEPS
    main_steps: int | None = None  # interpolation and edits; default 20 if listed, else the listed value nearest 20
    subjects: int | None = None
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    reverse_alpha: float = 2.0
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    atlas_subjects: int = 16
    verify: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.workdir, self.output = Path(self.workdir), Path(self.output)
        self.model = Path(self.model) if self.model else None
        self.cohort = Path(self.cohort) if self.cohort else None
        self.steps = tuple(sorted({int(s) for s in self.steps}))
        if not self.steps or min(self.steps) < 1:
            raise LDAEError("--steps must list DDIM step counts of at least 1")
        if self.main_steps is None:
            self.main_steps = SSIM_TARGET_T if SSIM_TARGET_T in self.steps else min(self.steps, key=lambda s: (abs(s - SSIM_TARGET_T), s))
        if self.main_steps < 1:
            raise LDAEError("--edit-steps must be at least 1")
        al = sorted({float(a) for a in self.alphas} | {0.0})
        if len(al) < 3:
            raise LDAEError("--alphas needs at least two non-zero values (alpha 0 is always added)")
        self.alphas = tuple(al)
        if self.subjects is not None and self.subjects < 1:
            raise LDAEError("--subjects must be at least 1")
        if self.reverse_alpha == 0:
            raise LDAEError("--reverse-alpha must not be 0")


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class _Inputs:
    split: dict
    cohort_csv: Path
    rows: list
    test_rows: dict[str, list]       # subject → visits sorted by time
    train_rows: list
    model_path: Path


def _read_inputs(s: EvalSettings) -> _Inputs:
    from ..training.data import _visit_order, cohort_csv, read_cohort

    if not s.workdir.is_dir():
        raise LDAEError(f"work folder not found: {s.workdir} (give the --workdir of 'ldae train')")
    split_path = s.workdir / "split.json"
    if not split_path.is_file():
        raise LDAEError(f"{split_path} is missing: {s.workdir} is not a training work folder (run 'ldae train' first; it writes split.json)")
    try:
        split = json.loads(split_path.read_text())
        subjects = split["subjects"]
        test = [str(x) for x in subjects["test"]]
        train = [str(x) for x in subjects["train"]]
        others = {str(x) for k in ("train", "val") for x in subjects.get(k, [])}
    except (ValueError, KeyError, TypeError):
        raise LDAEError(f"{split_path} is not a split written by 'ldae train' (it needs subjects.train/val/test)") from None
    if not test:
        raise LDAEError(f"{split_path} has no test subjects (test_fraction was 0): nothing is held out to evaluate on")
    leak = sorted(set(test) & others)
    if leak:
        raise LDAEError(f"{split_path} lists test subjects also in train/val ({', '.join(leak[:5])}); they would not be held out")
    model_path = s.model or (s.workdir / "bundle")
    if not model_path.exists():
        raise LDAEError(f"no model at {model_path}: finish training ('ldae train all …' writes {s.workdir / 'bundle'}) or pass --model")
    cohort = s.cohort or split.get("settings", {}).get("cohort_csv")
    if not cohort:
        raise LDAEError(f"{split_path} does not say which cohort was used; pass --cohort")
    csv_path = cohort_csv(cohort)
    rows = read_cohort(csv_path)
    for r in rows:
        r.fields["_cohort_root"] = str(csv_path.parent)
    by_subject: dict[str, list] = {}
    for r in rows:
        by_subject.setdefault(r.subject, []).append(r)
    missing = [t for t in test if t not in by_subject]
    if missing:
        raise LDAEError(f"test subjects of {split_path} are not in {csv_path} ({', '.join(missing[:5])}); pass the --cohort the model was trained on")

    def order(r):
        try:
            return (float(r.get("months")), _visit_order(r))
        except (TypeError, ValueError):
            return (_visit_order(r), 0.0)

    test_rows = {t: sorted(by_subject[t], key=order) for t in sorted(test)}
    train_rows = [r for t in sorted(train) for r in sorted(by_subject.get(t, []), key=order)]
    return _Inputs(split, csv_path, rows, test_rows, train_rows, model_path)


class _Loader:
    """Model-space volumes of cohort rows: from the work folder's cache when it has them (read only), else stage B."""

    def __init__(self, rows, space, workdir: Path) -> None:
        from ..training.data import VolumeStore

        self._ro = VolumeStore(rows, space, workdir / "cache", memory=False)
        self._mem = VolumeStore(rows, space, None, memory=True)
        self._index = {id(r): i for i, r in enumerate(rows)}
        self.space = space

    def __call__(self, row) -> np.ndarray:
        i = self._index[id(row)]
        if i in self._mem._mem:
            return self._mem._mem[i]
        f = self._ro._cache_file(i)
        if f is not None and f.is_file():
            try:
                x = np.load(f, allow_pickle=False)
                if x.shape == tuple(self.space.shape) and x.dtype == np.float32:
                    self._mem._mem[i] = x
                    return x
            except (OSError, ValueError):
                pass
        return self._mem[i]


def _select_subjects(test_rows: dict, n: int | None, seed: int) -> list[str]:
    """All test subjects, or ``n`` of them: a seeded shuffle within each group, groups taken in turn."""
    subs = sorted(test_rows)
    if n is None or n >= len(subs):
        return subs
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for sname in subs:
        groups.setdefault(str(test_rows[sname][0].get("group", "")), []).append(sname)
    queues = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(groups.items())]
    out = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out)


# ------------------------------------------------------------------------------------------ helpers
def _t(x) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    while t.ndim < 5:
        t = t[None]
    return t


def _np(x) -> np.ndarray:
    """A float32 3-D numpy volume from a tensor or array with leading singleton axes."""
    from .figures import as_volume  # matplotlib is imported only when a figure is drawn

    return as_volume(x)


def _sim(a, ref) -> dict:
    from .similarity import mse, psnr, ssim

    return {"ssim": ssim(a, ref, data_range=1.0), "psnr": psnr(a, ref, data_range=1.0), "mse": mse(a, ref)}


SEMANTIC_ONLY_FLOOR = 0.3
"""Below this SSIM against the input, semantic-only samples are not the scan's brain (a model that
generates from noise scores well above it; the first demo models scored 0.07)."""


def semantic_only_note(m: dict) -> str:
    """The report's warning when semantic-only samples fail (SSIM below ``SEMANTIC_ONLY_FLOOR`` at
    the main T, or the largest T evaluated); "" otherwise."""
    r = m["reconstruction"]
    table = r["table"].get("semantic only", {})
    T = next((t for t in (m["settings"]["main_steps"], *sorted(r["steps"], reverse=True)) if str(t) in table), None)
    if T is None:
        return ""
    sem = table[str(T)]["ssim"]["mean"]
    if not (np.isfinite(sem) and sem < SEMANTIC_ONLY_FLOOR):
        return ""
    return (f"**Semantic-only samples fail:** SSIM {sem:.3f} against the input at T = {T}, below {SEMANTIC_ONLY_FLOOR}. From new noise "
            "this model does not make the scan's brain (see the figure), and `ldae vary` and the Slicer panel's variations start from "
            "such noise. Before sharing the model, say so in its bundle: `annotate_bundle(BUNDLE, limitations={\"vary\": \"…\"})` "
            "(docs/training.md, \"Limitations on the card\"); `ldae` and the panel then show the note where it matters.")


def _summary(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def _bar(settings: EvalSettings, total: int, desc: str, unit: str = "subject"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not settings.progress)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


# ------------------------------------------------------------------------------------------ sections
def _measure_section(s, inp, load, space, rng, tests: list, timing: dict):
    """Build the image-based volume measure on training subjects; validate it on all test visits."""
    t0 = time.perf_counter()
    out: dict = {"available": False}
    if not (inp.train_rows and has_volume_truth(inp.train_rows) and has_volume_truth(tests)
            and all(r.get("labels_path") for r in inp.train_rows)):
        out["reason"] = ("the cohort table has no labels_path and ventricles_ml/hippocampus_*_ml columns (write the cohort with "
                         "'ldae cohort --labels'); regional volumes are not measured")
        timing["volume_measure_s"] = time.perf_counter() - t0
        return None, out
    values = label_values(inp.cohort_csv.parent / "cohort.json")
    bar = _bar(s, 1, "volume measure (training labels)", "visit")
    bar.total = 0

    def prog(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    measure = build_measure(inp.train_rows, space, load, values, max_subjects=s.atlas_subjects, rng=rng, progress=prog)
    bar.close()
    raws = [measure.raw(load(r)) for r in tests]
    out.update(available=True, **measure.describe())
    out["validation"] = {}
    for region in REGIONS:
        meas = [measure.calibrate(region, d[region]) for d in raws]
        truth = [truth_of(r, region) for r in tests]
        a = agreement(meas, truth, [r.subject for r in tests])
        a["raw_pearson_r"] = agreement([d[region] for d in raws], truth, [r.subject for r in tests])["pearson_r"]
        out["validation"][region] = a
    out["validation_visits"] = [{"subject": r.subject, "visit": r.get("visit"), "truth_ml": {k: truth_of(r, k) for k in REGIONS},
                                 "measured_ml": {k: measure.calibrate(k, d[k]) for k in REGIONS}} for r, d in zip(tests, raws)]
    timing["volume_measure_s"] = time.perf_counter() - t0
    return measure, out


def _reconstruction_section(s, pipe, selected, inp, load, measure, keep, timing):
    t0 = time.perf_counter()
    methods = ["autoencoder", "encoded z_T", "semantic only"]
    per = {m: {str(T): {k: [] for k in ("ssim", "psnr", "mse")} for T in s.steps} for m in methods}
    per_subject = []
    bar = _bar(s, len(selected), "reconstruction")
    for si, subj in enumerate(selected):
        row = inp.test_rows[subj][0]
        x = _t(load(row))
        enc = pipe.encode(x, None)
        ae = pipe.decode(enc.z0)
        m_ae = _sim(ae, x)
        rec_s = {"subject": subj, "visit": row.get("visit"), "autoencoder": m_ae}
        for T in s.steps:
            rec = pipe.reconstruct(enc, T)
            g = torch.Generator().manual_seed(int(s.seed) * 1_000_003 + si)
            noise = torch.randn(tuple(enc.z0.shape), generator=g, dtype=torch.float32)
            sem = pipe.sample(enc.y_sem, noise, T)
            for name, img in (("autoencoder", ae), ("encoded z_T", rec), ("semantic only", sem)):
                m = m_ae if name == "autoencoder" else _sim(img, x)
                for k in m:
                    per[name][str(T)][k].append(m[k])
                if name != "autoencoder":
                    rec_s.setdefault(name, {})[str(T)] = m
            if T == s.main_steps:
                keep.setdefault("recon", {})[subj] = (x, ae, rec, sem)
        if s.main_steps not in s.steps:
            keep.setdefault("recon", {})[subj] = (x, ae, pipe.reconstruct(enc, s.main_steps), None)
        if measure is not None:  # does decoding move the volume measure? (raw input, AE, LDAE at the main T)
            imgs = {"input": x, "autoencoder": ae, f"LDAE T={s.main_steps}": keep["recon"][subj][2]}
            rec_s["volumes_ml"] = {region: {"truth": truth_of(row, region), **{k: measure.measure(v)[region] for k, v in imgs.items()}}
                                   for region in REGIONS}
        per_subject.append(rec_s)
        bar.update(1)
    bar.close()
    table = {m: {T: {k: _summary(v) for k, v in d.items()} for T, d in per[m].items()} for m in methods}
    decoded = None
    if measure is not None and per_subject:
        decoded = {region: {k: {"bias_ml": _summary([p["volumes_ml"][region][k] - p["volumes_ml"][region]["truth"] for p in per_subject]),
                                "abs_error_ml": _summary([abs(p["volumes_ml"][region][k] - p["volumes_ml"][region]["truth"]) for p in per_subject])}
                            for k in per_subject[0]["volumes_ml"][region] if k != "truth"}
                   for region in REGIONS}
    timing["reconstruction_s"] = time.perf_counter() - t0
    return {"volume_measure_on_decoded": decoded, "methods": methods, "steps": list(s.steps), "table": table, "per_subject": per_subject,
            "reference": "the model-space input (stage B of the raw test visit, its first visit); SSIM/PSNR with data_range 1",
            "semantic_only": f"z_T ~ N(0, I) from a generator seeded with seed·1000003 + subject index (seed {s.seed}), the scan's y_sem"}


def _interpolation_section(s, pipe, selected, inp, load, measure, keep, timing):
    t0 = time.perf_counter()
    T = s.main_steps
    methods = ["LDAE", "nearest visit", "voxel blend", "AE-latent blend"]
    refs = ["raw middle", "AE of middle"]
    per_subject, skipped = [], []
    eligible = [x for x in selected if len(inp.test_rows[x]) >= 3]
    skipped = [x for x in selected if len(inp.test_rows[x]) < 3]
    bar = _bar(s, len(eligible), "interpolation")
    for subj in eligible:
        visits = inp.test_rows[subj]
        months = []
        for i, r in enumerate(visits):
            try:
                months.append(float(r.get("months")))
            except (TypeError, ValueError):  # no months column: equally spaced visits
                months.append(float(i))
        mid_t = (months[0] + months[-1]) / 2
        m = min(range(1, len(visits) - 1), key=lambda i: (abs(months[i] - mid_t), i))
        a, b = m - 1, m + 1
        span = months[b] - months[a]
        f = (months[m] - months[a]) / span if span > 0 else 0.5
        xa, xm, xb = (_t(load(visits[i])) for i in (a, m, b))
        ea, eb, em = pipe.encode(xa, T), pipe.encode(xb, T), pipe.encode(xm, None)
        ldae = pipe.interpolate(ea, eb, [f], T)
        ae_mid = pipe.decode(em.z0)
        imgs = {
            "LDAE": ldae,
            "nearest visit": xa if f <= 0.5 else xb,
            "voxel blend": (1 - f) * xa + f * xb,
            "AE-latent blend": pipe.decode((1 - f) * ea.z0 + f * eb.z0),
        }
        rec = {"subject": subj, "visits": [visits[i].get("visit") for i in (a, m, b)], "months": [months[i] for i in (a, m, b)],
               "fraction": f, "nearest": "first" if f <= 0.5 else "last", "metrics": {}}
        for name, img in imgs.items():
            rec["metrics"][name] = {ref: {k: v for k, v in _sim(img, r).items() if k in ("ssim", "mse")}
                                    for ref, r in (("raw middle", xm), ("AE of middle", ae_mid))}
        if measure is not None:
            truth = truth_of(visits[m], "ventricles")
            vols = {name: measure.measure(img)["ventricles"] for name, img in imgs.items()}
            vols["raw middle (measure floor)"] = measure.measure(xm)["ventricles"]
            rec["ventricles_ml"] = {"truth": truth, "measured": vols, "abs_error": {k: abs(v - truth) for k, v in vols.items()}}
        if "interp" not in keep:
            keep["interp"] = (subj, f, xa, imgs, xm, xb)
        per_subject.append(rec)
        bar.update(1)
    bar.close()
    table = {name: {ref: {k: _summary([p["metrics"][name][ref][k] for p in per_subject]) for k in ("ssim", "mse")} for ref in refs}
             for name in methods}
    vol = None
    if measure is not None and per_subject:
        keys = list(per_subject[0]["ventricles_ml"]["abs_error"])
        vol = {k: _summary([p["ventricles_ml"]["abs_error"][k] for p in per_subject]) for k in keys}
    timing["interpolation_s"] = time.perf_counter() - t0
    return {"steps": T, "methods": methods, "references": refs, "table": table, "ventricle_abs_error_ml": vol,
            "per_subject": per_subject, "skipped_fewer_than_3_visits": skipped,
            "design": "middle visit = the interior visit nearest the midpoint of the follow-up; endpoints = its neighbouring visits "
                      "(the visits just before and after); fraction = (months_mid − months_before) / (months_after − months_before)"}


def _edits_section(s, pipe, model, selected, inp, load, measure, keep, timing):
    t0 = time.perf_counter()
    T = s.main_steps
    alphas = list(s.alphas)
    i0 = alphas.index(0.0)
    out: dict = {}
    names = [d for d in ("disease", "age") if d in model.directions]
    total = len(selected) * max(1, len(names))
    bar = _bar(s, total, "edits")
    for dname in names:
        d = model.directions[dname]
        vols: dict[str, dict[str, list[float]]] = {}
        comp, rev = [], []
        for subj in selected:
            x = _t(load(inp.test_rows[subj][0]))
            enc = pipe.encode(x, T)
            imgs = pipe.edit(enc, d, alphas, T)
            recon = keep["recon"][subj][2] if subj in keep.get("recon", {}) else pipe.reconstruct(enc, T)
            comp.append(float((imgs[i0] - recon[0]).abs().max()))
            ra = float(s.reverse_alpha)
            fwd = imgs[alphas.index(ra)][None] if ra in alphas else pipe.edit(enc, d, [ra], T)
            back = pipe.edit(fwd, d, [-ra], T)
            rev.append({"subject": subj, "vs input": _sim(back, x), "vs reconstruction": _sim(back, recon),
                        "edited vs input": _sim(fwd, x)})
            if measure is not None:
                ms = [measure.measure(img) for img in imgs]
                vols[subj] = {r: [m[r] for m in ms] for r in REGIONS}
            if dname == "disease" and "edit" not in keep:
                keep["edit"] = (subj, alphas, imgs)
            bar.update(1)
        res = {"alphas": alphas, "alpha0_index": i0, "steps": T, "direction": d.describe(),
               "composition_max_abs_diff": {"per_subject": dict(zip(selected, comp)), "max": max(comp) if comp else float("nan")},
               "reversibility": {"alpha": float(s.reverse_alpha), "per_subject": rev,
                                 "summary": {ref: {k: _summary([r[ref][k] for r in rev]) for k in ("ssim", "mse")}
                                             for ref in ("vs input", "vs reconstruction", "edited vs input")}}}
        if measure is not None:
            res["volumes_ml"] = vols
            sp: dict = {}
            for region in REGIONS:
                per_s = {subj: spearman(alphas, v[region]) for subj, v in vols.items()}
                da = [a for subj in vols for a in alphas]
                dv = [vv - v[region][i0] for subj, v in vols.items() for vv in v[region]]
                slope = [float(np.polyfit(alphas, v[region], 1)[0]) for v in vols.values()]
                sp[region] = {"per_subject": per_s, "pooled": spearman(da, dv), "median_per_subject": float(np.nanmedian(list(per_s.values())))
                              if any(np.isfinite(list(per_s.values()))) else float("nan"),
                              "expected_sign": EXPECTED_SIGN.get((dname, region), 0), "ml_per_alpha": _summary(slope)}
            res["spearman"] = sp
        out[dname] = res
    bar.close()
    timing["edits_s"] = time.perf_counter() - t0
    return {"directions": out, "missing": [d for d in ("disease", "age") if d not in model.directions]}


def _probe_section(s, pipe, model, inp, load, timing):
    from ..training.probes import auc, predicted_age

    t0 = time.perf_counter()
    rows = [r for subj in inp.test_rows for r in inp.test_rows[subj]]
    out: dict = {"n_visits": len(rows), "n_subjects": len(inp.test_rows)}
    bar = _bar(s, len(rows), "probes (semantic codes)", "visit")
    codes = []
    for r in rows:
        codes.append(pipe.embed(_t(load(r))).cpu())
        bar.update(1)
    bar.close()
    codes = torch.cat(codes)
    if "disease" in model.directions:
        d = model.directions["disease"]
        score = d.score(codes).numpy()
        labels = np.array([str(r.get("group", "")) == "disease" for r in rows])
        out["disease"] = {"auc": auc(score, labels), "n_disease": int(labels.sum()), "n_other": int((~labels).sum()),
                          "how": "score = w·(y_sem − μ)/σ + b of the disease direction (its logit); AUC of the score for group == disease, one point per visit"}
    if "age" in model.directions:
        a = model.directions["age"]
        try:
            ages = np.array([r.number("age") for r in rows])
        except LDAEError:
            ages = None
        if ages is not None and "target_mean" in a.meta:
            pred = predicted_age(a, codes).numpy()
            out["age"] = {"mae_years": float(np.mean(np.abs(pred - ages))),
                          "mae_predict_training_mean_years": float(np.mean(np.abs(a.meta["target_mean"] - ages))),
                          "pearson_r": float(np.corrcoef(pred, ages)[0, 1]) if np.std(pred) > 0 and np.std(ages) > 0 else float("nan"),
                          "how": "age = target_mean + target_std · (w·(y_sem − μ)/σ + b) with the age direction's meta (ridge on the standardised age)"}
        else:
            out["age"] = {"mae_years": float("nan"), "how": "the age direction has no target_mean/target_std (not trained by 'ldae train'), or the cohort has no age column"}
    val = _read_probes_json(s.workdir)
    if val:
        out["validation_subjects_from_training"] = val
    timing["probes_s"] = time.perf_counter() - t0
    return out


def _read_probes_json(workdir: Path):
    p = workdir / "probes" / "probes.json"
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d.get("metrics", d).get("val") if isinstance(d.get("metrics", d), dict) else None


# ------------------------------------------------------------------------------------------ targets & report
def _targets(m: dict) -> list[dict]:
    out = []
    rec = m["reconstruction"]["table"]["encoded z_T"]
    if str(SSIM_TARGET_T) in rec:
        v = rec[str(SSIM_TARGET_T)]["ssim"]["mean"]
        out.append({"name": f"reconstruction SSIM from encoded z_T at T={SSIM_TARGET_T}", "target": f"≥ {SSIM_TARGET}", "value": v,
                    "met": bool(v is not None and v >= SSIM_TARGET)})
    else:
        out.append({"name": f"reconstruction SSIM from encoded z_T at T={SSIM_TARGET_T}", "target": f"≥ {SSIM_TARGET}", "value": None,
                    "met": None, "note": f"T={SSIM_TARGET_T} not in --steps"})
    it = m["interpolation"]
    if it["per_subject"]:
        t = it["table"]
        l = t["LDAE"]["AE of middle"]["ssim"]["mean"]
        for base in ("nearest visit", "AE-latent blend"):
            b = t[base]["AE of middle"]["ssim"]["mean"]
            out.append({"name": f"interpolation SSIM vs the middle visit's AE reconstruction: LDAE > {base}", "target": f"> {base}",
                        "value": l, "baseline": b, "met": bool(l > b)})
        if it["ventricle_abs_error_ml"]:
            e = it["ventricle_abs_error_ml"]
            out.append({"name": "interpolation ventricle-volume error: LDAE ≤ voxel blend", "target": "≤ voxel blend (mL)",
                        "value": e["LDAE"]["mean"], "baseline": e["voxel blend"]["mean"], "met": bool(e["LDAE"]["mean"] <= e["voxel blend"]["mean"])})
    d = m["edits"]["directions"].get("disease")
    if d and "spearman" in d:
        rho = d["spearman"]["ventricles"]["pooled"]
        out.append({"name": "edits along disease: Spearman ρ of ventricle volume vs alpha (pooled Δ), sign +", "target": f"≥ {RHO_TARGET}",
                    "value": rho, "met": bool(rho is not None and np.isfinite(rho) and rho >= RHO_TARGET)})
    elif d:
        out.append({"name": "edits along disease: Spearman ρ of ventricle volume vs alpha", "target": f"≥ {RHO_TARGET}", "value": None,
                    "met": None, "note": "no volume measure (cohort without labels)"})
    return out


def fmt(v, nd: int = 4) -> str:
    """How the report prints a number (the tests read the report back with the same rule)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.3e}"
    return f"{v:.{nd}f}"


def _ms(d: dict, nd: int = 4) -> str:
    return f"{fmt(d['mean'], nd)} ± {fmt(d['sd'], nd)}" if d["n"] > 1 else fmt(d["mean"], nd)


def _report(m: dict, figs: dict) -> str:
    st = m["settings"]
    L = [f"# LDAE evaluation on held-out subjects", "",
         f"Model: **{m['model']['name']}** (`{m['model']['path']}`), work folder `{m['data']['workdir']}`, cohort `{m['data']['cohort_csv']}`.",
         f"Test subjects (never seen in training, from `split.json`): {m['data']['n_test_subjects']} with {m['data']['n_test_visits']} visits; "
         f"evaluated in sections 1–3: {len(m['data']['selected_subjects'])} ({', '.join(m['data']['selected_subjects'])}). "
         f"Everything in model space ({'×'.join(map(str, m['model']['space']['shape']))} voxels at {m['model']['space']['spacing_mm'][0]:g} mm, "
         f"intensities in [0, 1]) against the model-space input; SSIM and PSNR with data_range 1. Seed {st['seed']}, device {st['device']}. "
         f"Numbers are mean ± SD over subjects; every number is in `metrics.json`.", "",
         "Research software, not for clinical use: the scans are synthetic (`ldae cohort`) and so are their labels.", "",
         "## Targets", "", "| target | goal | value | baseline | met |", "|---|---|---|---|---|"]
    for t in m["targets"]:
        L.append(f"| {t['name']} | {t['target']} | {fmt(t['value'])} | {fmt(t.get('baseline'))} | "
                 f"{'n/a' if t['met'] is None else ('**yes**' if t['met'] else '**no**')}{' (' + t['note'] + ')' if t.get('note') else ''} |")
    # measure
    ms = m["volume_measure"]
    L += ["", "## 0. The image-based volume measure, and how far to trust it", ""]
    if not ms["available"]:
        L.append(f"Not available: {ms['reason']}.")
    else:
        L += ["Generated scans have no label maps, so regional volumes are measured from the image: " + ms["method"] + ". "
              f"ROIs from {ms['atlas_subjects']} training subjects ({ms['atlas_visits']} visits); the scan's own label map is never used. "
              "Validation on the raw test visits (model space) against the cohort table's ground truth:", "",
              "| region | visits | Pearson r | slope (measure on truth) | intercept mL | MAE mL | mean truth mL | within-subject r | raw r |",
              "|---|---|---|---|---|---|---|---|---|"]
        for region, v in ms["validation"].items():
            L.append(f"| {region} | {v['n']} | {fmt(v['pearson_r'], 3)} | {fmt(v['slope'], 3)} | {fmt(v['intercept_ml'], 2)} | {fmt(v['mae_ml'], 2)} | "
                     f"{fmt(v['truth_mean_ml'], 2)} | {fmt(v['within_subject_r'], 3)} | {fmt(v['raw_pearson_r'], 3)} |")
        verdicts = []
        for region, v in ms["validation"].items():
            r_ = v["pearson_r"]
            if r_ is not None and r_ >= 0.9:
                verdicts.append(f"the {region} measure follows the truth closely (r = {fmt(r_, 3)})")
            elif r_ is not None and r_ >= 0.7:
                verdicts.append(f"the {region} measure follows it only moderately (r = {fmt(r_, 3)}): read its numbers below as indicative")
            else:
                verdicts.append(f"the {region} measure does **not** track the truth (r = {fmt(r_, 3)}): its numbers below say little")
        n_sub = len({v["subject"] for v in ms["validation_visits"]})
        if n_sub < 5:
            verdicts.append(f"with only {n_sub} test subjects these correlations are mostly between-subject noise")
        L += ["", "Verdict: " + "; ".join(verdicts) + ". "
              + "Within-subject r is the correlation of visit-to-visit changes (each subject's mean removed), which is what edits and "
                "interpolation need; those changes are small in this cohort, so it is lower than the between-subject r."]
    # reconstruction
    r = m["reconstruction"]
    L += ["", "## 1. Reconstruction", "", f"Reference: {r['reference']}. Semantic only: {r['semantic_only']}. "
          "The autoencoder alone (decode(encode(x)), no diffusion) is the ceiling and does not depend on T.", ""]
    for k, title, nd in (("ssim", "SSIM", 4), ("psnr", "PSNR (dB)", 2), ("mse", "MSE", 6)):
        L += [f"**{title}**", "", "| method | " + " | ".join(f"T = {T}" for T in r["steps"]) + " |", "|---|" + "---|" * len(r["steps"])]
        for meth in r["methods"]:
            L.append(f"| {meth} | " + " | ".join(_ms(r["table"][meth][str(T)][k], nd) for T in r["steps"]) + " |")
        L.append("")
    sem_note = semantic_only_note(m)
    if sem_note:
        L += [sem_note, ""]
    if r.get("volume_measure_on_decoded"):
        L += ["The volume measure on decoded images (each subject's first visit: the raw input, its autoencoder reconstruction and "
              "its LDAE reconstruction), measured − true in mL: if decoding moved the measure, the bias would show here.", "",
              "| region | image | bias mL | mean abs error mL |", "|---|---|---|---|"]
        for region, d in r["volume_measure_on_decoded"].items():
            for k, v in d.items():
                L.append(f"| {region} | {k} | {_ms(v['bias_ml'], 2)} | {_ms(v['abs_error_ml'], 2)} |")
        L.append("")
    if "recon" in figs:
        L += [f"![reconstruction]({figs['recon']})", ""]
    # interpolation
    it = m["interpolation"]
    L += ["## 2. Interpolation of a left-out middle visit", "", f"T = {it['steps']}. {it['design']}. Nearest visit: the endpoint nearer in time. "
          "Voxel blend: (1−f)·before + f·after. AE-latent blend: decode((1−f)·z0_before + f·z0_after).", ""]
    if not it["per_subject"]:
        L.append("No evaluated test subject has 3 or more visits.")
    else:
        L += ["| method | SSIM vs raw middle | MSE vs raw middle | SSIM vs AE of middle | MSE vs AE of middle |", "|---|---|---|---|---|"]
        for meth in it["methods"]:
            t = it["table"][meth]
            L.append(f"| {meth} | {_ms(t['raw middle']['ssim'])} | {_ms(t['raw middle']['mse'], 6)} | {_ms(t['AE of middle']['ssim'])} | "
                     f"{_ms(t['AE of middle']['mse'], 6)} |")
        if it["ventricle_abs_error_ml"]:
            L += ["", "Ventricle volume, |measured − true| of the middle visit (mL; the image measure on each image, the truth from the cohort table; "
                  "'raw middle' is the measure's own error on the real middle visit):", "", "| image | mean abs error (mL) |", "|---|---|"]
            for k, v in it["ventricle_abs_error_ml"].items():
                L.append(f"| {k} | {_ms(v, 3)} |")
        if it["skipped_fewer_than_3_visits"]:
            L.append(f"\nSkipped (fewer than 3 visits): {', '.join(it['skipped_fewer_than_3_visits'])}.")
    if "interp" in figs:
        L += ["", f"![interpolation]({figs['interp']})"]
    # edits
    e = m["edits"]
    L += ["", "## 3. Edits along the directions", ""]
    if e["missing"]:
        L.append(f"The model has no direction(s) {', '.join(e['missing'])}; not evaluated.\n")
    for dname, d in e["directions"].items():
        L += [f"### {dname}: {d['direction']}", "", f"T = {d['steps']}, alphas {', '.join(f'{a:g}' for a in d['alphas'])}, on each subject's first visit.", ""]
        if "spearman" in d:
            L += ["| region | expected sign | pooled ρ (Δ vs alpha) | median per-subject ρ | mL per alpha |", "|---|---|---|---|---|"]
            for region, sp in d["spearman"].items():
                L.append(f"| {region} | {'+' if sp['expected_sign'] > 0 else '−'} | {fmt(sp['pooled'], 3)} | {fmt(sp['median_per_subject'], 3)} | "
                         f"{_ms(sp['ml_per_alpha'], 3)} |")
            L += ["", "Per subject ρ (ventricles / hippocampus): " + "; ".join(
                f"{s}: {fmt(d['spearman']['ventricles']['per_subject'][s], 2)} / {fmt(d['spearman']['hippocampus']['per_subject'][s], 2)}"
                for s in d["spearman"]["ventricles"]["per_subject"]) + ".", ""]
        c = d["composition_max_abs_diff"]
        L.append(f"Composition: max |edit(alpha 0) − reconstruction| = {fmt(c['max'])} (largest over subjects; 0 means identical).")
        rv = d["reversibility"]
        L += ["", f"Reversibility: edit by {rv['alpha']:+g}, then edit the result by {-rv['alpha']:+g} (re-encoded):", "",
              "| comparison | SSIM | MSE |", "|---|---|---|"]
        for ref in ("vs input", "vs reconstruction", "edited vs input"):
            lab = {"vs input": "round trip vs input", "vs reconstruction": "round trip vs reconstruction",
                   "edited vs input": f"one-way edit ({rv['alpha']:+g}) vs input"}[ref]
            L.append(f"| {lab} | {_ms(rv['summary'][ref]['ssim'])} | {_ms(rv['summary'][ref]['mse'], 6)} |")
        L.append("")
    for k in ("volume_alpha", "edit"):
        if k in figs:
            L += [f"![{k}]({figs[k]})", ""]
    # probes
    p = m["probes"]
    L += ["## 4. Probes on the test subjects' visits", "", f"{p['n_visits']} visits of {p['n_subjects']} test subjects (all of them, not only those of sections 1–3); "
          "the semantic code y_sem of each model-space visit.", ""]
    if "disease" in p:
        L.append(f"* Group: AUC = {fmt(p['disease']['auc'], 3)} ({p['disease']['n_disease']} disease, {p['disease']['n_other']} other visits). {p['disease']['how']}.")
    if "age" in p:
        a = p["age"]
        L.append(f"* Age: MAE = {fmt(a['mae_years'], 2)} years (predicting the training mean age: {fmt(a.get('mae_predict_training_mean_years'), 2)} years; "
                 f"r = {fmt(a.get('pearson_r'), 3)}). {a['how']}.")
    if p.get("validation_subjects_from_training"):
        L.append(f"* For reference, the training run's probe metrics on its validation subjects: `{json.dumps(p['validation_subjects_from_training'])}`.")
    tm = m["timing"]
    L += ["", "## Run", "", f"{fmt(tm['total_s'], 1)} s in all (" + ", ".join(f"{k[:-2]} {fmt(v, 1)} s" for k, v in tm.items() if k != "total_s")
          + f"); torch threads: {st['threads'] or torch.get_num_threads()}. Command: `{st.get('command', '')}`.", ""]
    return "\n".join(L)


# ------------------------------------------------------------------------------------------ main
def evaluate(settings: EvalSettings, command: str = "") -> dict:
    """Run the evaluation and write ``settings.output``; returns the metrics dict."""
    from ..pipeline import LDAEPipeline
    from ..weights import load_model
    from . import figures

    s = settings
    t_start = time.perf_counter()
    out = s.output
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LDAEError(f"{out} exists and is not empty; choose a new folder for the report")
    figures.require_matplotlib()
    inp = _read_inputs(s)
    if s.threads:
        torch.set_num_threads(int(s.threads))
    dev = str(s.device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise LDAEError(f"--device {dev} was asked for but this torch has no CUDA device; use --device cpu")
    model = load_model(inp.model_path, verify=s.verify)
    space = model.config.space
    torch.manual_seed(int(s.seed))
    rng = np.random.default_rng(int(s.seed))
    pipe = LDAEPipeline(model, device=dev, cache_size=512, batch_size=4)
    load = _Loader(inp.rows, space, s.workdir)
    selected = _select_subjects(inp.test_rows, s.subjects, s.seed)
    tests = [r for subj in inp.test_rows for r in inp.test_rows[subj]]

    try:
        parent = out.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as err:
        raise LDAEError(f"cannot write the report into {out.parent}: {err.strerror}") from None
    try:
        timing: dict = {}
        keep: dict = {}
        measure, measure_info = _measure_section(s, inp, load, space, rng, tests, timing)
        m = {
            "settings": {**{k: v for k, v in asdict(s).items() if k not in ("progress",)}, "command": command},
            "model": {"name": model.name, "path": str(Path(inp.model_path).resolve()), "id": model.identity.get("id"),
                      "space": space.to_dict(), "directions": sorted(model.directions)},
            "data": {"workdir": str(s.workdir.resolve()), "cohort_csv": str(inp.cohort_csv.resolve()), "n_test_subjects": len(inp.test_rows), "n_test_visits": len(tests),
                     "test_subjects": sorted(inp.test_rows), "selected_subjects": selected,
                     "train_subjects": len(inp.split["subjects"]["train"]), "val_subjects": len(inp.split["subjects"].get("val", [])),
                     "held_out_check": "test subjects are disjoint from train and val in split.json"},
            "volume_measure": measure_info,
        }
        m["reconstruction"] = _reconstruction_section(s, pipe, selected, inp, load, measure, keep, timing)
        m["interpolation"] = _interpolation_section(s, pipe, selected, inp, load, measure, keep, timing)
        m["edits"] = _edits_section(s, pipe, model, selected, inp, load, measure, keep, timing)
        m["probes"] = _probe_section(s, pipe, model, inp, load, timing)
        m["targets"] = _targets(m)
        t_fig = time.perf_counter()
        figs = _figures(tmp, keep, m, measure, space)
        timing["figures_s"] = time.perf_counter() - t_fig
        timing["total_s"] = time.perf_counter() - t_start
        m["timing"] = timing
        m["figures"] = figs
        m = _jsonable(m)
        (tmp / "metrics.json").write_text(json.dumps(m, indent=1, ensure_ascii=False) + "\n")
        (tmp / "report.md").write_text(_report(m, figs))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return m


def _figures(folder: Path, keep: dict, m: dict, measure: RegionMeasure | None, space) -> dict:
    from . import figures

    vroi = measure.rois.get("ventricles") if measure is not None else None
    centre = figures.roi_centre(vroi, space.shape)
    out = {}
    if keep.get("recon"):
        subj, (x, ae, rec, sem) = next(iter(keep["recon"].items()))
        T = m["settings"]["main_steps"]
        rows = [("input", x), ("autoencoder", ae), (f"LDAE T={T}", rec)] + ([(f"semantic only T={T}", sem)] if sem is not None else [])
        figures.reconstruction_figure(folder / "reconstruction.png", rows, x, centre, f"{subj}: reconstruction (model space)")
        out["recon"] = "reconstruction.png"
    if keep.get("interp"):
        subj, f, xa, imgs, xm, xb = keep["interp"]
        strip = [("before", xa), (f"LDAE f={f:.2f}", imgs["LDAE"]), ("true middle", xm), ("voxel blend", imgs["voxel blend"]),
                 ("AE-latent blend", imgs["AE-latent blend"]), ("after", xb)]
        figures.strip_figure(folder / "interpolation.png", strip, centre, f"{subj}: interpolated middle visit", diff_to=2)
        out["interp"] = "interpolation.png"
    if any("volumes_ml" in d for d in m["edits"]["directions"].values()):
        figures.volume_alpha_figure(folder / "volume_vs_alpha.png", {k: d for k, d in m["edits"]["directions"].items() if "volumes_ml" in d}, list(REGIONS))
        out["volume_alpha"] = "volume_vs_alpha.png"
    if keep.get("edit"):
        subj, alphas, imgs = keep["edit"]
        i0 = alphas.index(0.0)
        figures.strip_figure(folder / "edit_disease.png", [(f"α={a:+g}", imgs[i]) for i, a in enumerate(alphas)], centre,
                             f"{subj}: edits along disease (second row: − α=0)", diff_to=i0)
        out["edit"] = "edit_disease.png"
    return out
