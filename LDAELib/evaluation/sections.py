"""The measurements of ``ldae evaluate``, section by section: the numbers, without their rendering.

Everything is computed in model space (stage B of the raw cohort scans, ``space.to_model_space``),
against the model-space input, with SSIM/PSNR at data_range 1 (model space is [0, 1]):

* ``measure_section``: the image-based regional volume measure, built on training subjects and
  validated on the test visits against the cohort's ground truth;
* ``reconstruction_section``: the DDIM round trip, semantic-only samples, the autoencoder alone;
* ``interpolation_section``: a left-out middle visit against baselines;
* ``edits_section``: volumes along each direction's alpha;
* ``probe_section``: the probes' AUC and MAE on the test subjects.

``report.evaluate`` runs them and renders ``report.md`` (``report``) and the figures.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LDAEError
from ..training.data import VolumeStore, cohort_csv, read_cohort, visit_order
from ..training.probes import auc, predicted_age
from .similarity import BRAIN_DILATION, BRAIN_THRESHOLD, brain_mask, mse, psnr, ssim
from .targets import BLUR_REFERENCE, BLUR_REFERENCE_SIGMA, DEFAULT_ALPHAS, DEFAULT_STEPS, EXPECTED_SIGN, SSIM_TARGET_T
from .volumes import REGIONS, agreement, build_measure, has_volume_truth, label_values, spearman, tissue_levels, truth_of, within_subject_rate


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
    real_heads: tuple[str, ...] | None = None  # raw scans with skull (section 5); None: the ones installed here (REAL_HEADS)

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


def read_inputs(s: EvalSettings) -> _Inputs:
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
            return (float(r.get("months")), visit_order(r))
        except (TypeError, ValueError):
            return (visit_order(r), 0.0)

    test_rows = {t: sorted(by_subject[t], key=order) for t in sorted(test)}
    train_rows = [r for t in sorted(train) for r in sorted(by_subject.get(t, []), key=order)]
    return _Inputs(split, csv_path, rows, test_rows, train_rows, model_path)


class Loader:
    """Model-space volumes of cohort rows: from the work folder's cache when it has them (read only), else stage B."""

    def __init__(self, rows, space, workdir: Path) -> None:
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


def select_subjects(test_rows: dict, n: int | None, seed: int) -> list[str]:
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


def blurred_reference(x) -> np.ndarray:
    from scipy import ndimage as ndi

    v = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return ndi.gaussian_filter(np.asarray(v, dtype=np.float32).squeeze(), BLUR_REFERENCE_SIGMA)


def _sim(a, ref) -> dict:
    return {"ssim": ssim(a, ref, data_range=1.0), "ssim_brain": ssim(a, ref, data_range=1.0, mask=brain_mask(ref)),
            "psnr": psnr(a, ref, data_range=1.0), "mse": mse(a, ref)}


def _summary(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def _bar(settings: EvalSettings, total: int, desc: str, unit: str = "subject"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not settings.progress)


def jsonable(o):
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
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
def measure_section(s, inp, load, space, rng, tests: list, timing: dict):
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


def reconstruction_section(s, pipe, selected, inp, load, measure, keep, timing):
    t0 = time.perf_counter()
    methods = ["autoencoder", "encoded z_T", "semantic only"]
    per = {m: {str(T): {k: [] for k in ("ssim", "ssim_brain", "psnr", "mse")} for T in s.steps} for m in methods}
    variation = {str(T): [] for T in s.steps}  # a semantic-only sample (what ``vary`` makes) against the scan's reconstruction
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
            v = ssim(sem, rec, data_range=1.0)
            variation[str(T)].append(v)
            rec_s.setdefault("variation vs reconstruction", {})[str(T)] = v
            if T == s.main_steps:
                keep.setdefault("recon", {})[subj] = (x, ae, rec, sem)
        if s.main_steps not in s.steps:
            keep.setdefault("recon", {})[subj] = (x, ae, pipe.reconstruct(enc, s.main_steps), None)
        if measure is not None:  # does decoding move the volume measure? (raw input, AE, LDAE at the main T)
            xb = _t(blurred_reference(x))
            rec_s["blur_reference_ssim"] = ssim(xb, x, data_range=1.0)
            imgs = {"input": x, BLUR_REFERENCE: xb, "autoencoder": ae, f"LDAE T={s.main_steps}": keep["recon"][subj][2]}
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
    blur = _summary([p["blur_reference_ssim"] for p in per_subject if "blur_reference_ssim" in p])
    timing["reconstruction_s"] = time.perf_counter() - t0
    var_table = {T: {**_summary(v), "min": float(min(v)) if v else float("nan")} for T, v in variation.items()}
    return {"volume_measure_on_decoded": decoded, "blur_reference_ssim": blur, "methods": methods, "steps": list(s.steps), "table": table, "per_subject": per_subject,
            "variation_vs_reconstruction": var_table,
            "brain": f"SSIM inside the brain: the SSIM map averaged over the input's voxels above {BRAIN_THRESHOLD}, dilated by {BRAIN_DILATION}",
            "reference": "the model-space input (stage B of the raw test visit, its first visit); SSIM/PSNR with data_range 1",
            "semantic_only": f"z_T ~ N(0, I) from a generator seeded with seed·1000003 + subject index (seed {s.seed}), the scan's y_sem"}


def interpolation_section(s, pipe, selected, inp, load, measure, keep, timing):
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


GLOBAL_CHANGE_HOW = ("the edit at the largest alpha minus the edit at the smallest, averaged over the input's brain (voxels above "
                     f"{BRAIN_THRESHOLD:g}), and the change of the grey-matter level (3-class k-means of the brain's intensities). In "
                     "an `ldae cohort` cohort ageing and disease change anatomy, not tissue intensity, so there this is the model's own, and it moves any "
                     "image-based volume measure")


def global_change(x, lo, hi) -> dict:
    """How much an edit changes the whole brain rather than its anatomy: the mean of ``hi − lo``
    over the input ``x``'s brain, and the change of the grey-matter k-means level (model-space
    intensities, [0, 1])."""
    x, lo, hi = (np.asarray(torch.as_tensor(v, dtype=torch.float32).cpu()).squeeze() for v in (x, lo, hi))
    brain = x > BRAIN_THRESHOLD
    return {"brain_mean": float((hi - lo)[brain].mean()), "grey_matter_level": float(tissue_levels(hi)[1] - tissue_levels(lo)[1])}


def edits_section(s, pipe, model, selected, inp, load, measure, keep, timing):
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
        comp, rev, glob = [], [], {}
        lo, hi = alphas.index(min(alphas)), alphas.index(max(alphas))
        for subj in selected:
            x = _t(load(inp.test_rows[subj][0]))
            enc = pipe.encode(x, T)
            imgs = pipe.edit(enc, d, alphas, T)
            glob[subj] = global_change(x, imgs[lo], imgs[hi])
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
        res = {"alphas": alphas, "alpha0_index": i0, "steps": T, "direction": d.describe(), "years_per_alpha": d.meta.get("years_per_alpha"),
               "composition_max_abs_diff": {"per_subject": dict(zip(selected, comp)), "max": max(comp) if comp else float("nan")},
               "reversibility": {"alpha": float(s.reverse_alpha), "per_subject": rev,
                                 "summary": {ref: {k: _summary([r[ref][k] for r in rev]) for k in ("ssim", "mse")}
                                             for ref in ("vs input", "vs reconstruction", "edited vs input")}},
               "global_change": {"alphas": [alphas[lo], alphas[hi]], "per_subject": glob,
                                 "median": {k: float(np.median([g[k] for g in glob.values()])) if glob else float("nan")
                                            for k in ("brain_mean", "grey_matter_level")},
                                 "how": GLOBAL_CHANGE_HOW}}
        if measure is not None:
            res["volumes_ml"] = vols
            sp: dict = {}
            for region in REGIONS:
                per_s = {subj: spearman(alphas, v[region]) for subj, v in vols.items()}
                da = [a for subj in vols for a in alphas]
                dv = [vv - v[region][i0] for subj, v in vols.items() for vv in v[region]]
                slope = [float(np.polyfit(alphas, v[region], 1)[0]) for v in vols.values()]
                finite = [v for v in per_s.values() if np.isfinite(v)]
                sp[region] = {"per_subject": per_s, "pooled": spearman(da, dv),
                              "median_per_subject": float(np.median(finite)) if finite else float("nan"),
                              "min_per_subject": float(min(finite)) if finite else float("nan"),
                              "max_per_subject": float(max(finite)) if finite else float("nan"),
                              "expected_sign": EXPECTED_SIGN.get((dname, region), 0), "ml_per_alpha": _summary(slope)}
                if 2.0 in alphas and -2.0 in alphas:  # V(+2) − V(−2) as a share of the reconstruction's volume
                    sp[region]["change_pm2_fraction"] = _summary([(v[region][alphas.index(2.0)] - v[region][alphas.index(-2.0)]) / v[region][i0]
                                                                  for v in vols.values() if v[region][i0]])
            res["spearman"] = sp
            if dname == "age":
                res["rendered_ageing"] = rendered_ageing(d, inp.train_rows, sp["ventricles"]["ml_per_alpha"]["mean"],
                                                         float(np.median([float(np.polyfit(alphas, v["ventricles"], 1)[0]) for v in vols.values()])))
        out[dname] = res
    bar.close()
    timing["edits_s"] = time.perf_counter() - t0
    return {"directions": out, "missing": [d for d in ("disease", "age") if d not in model.directions]}


def rendered_ageing(direction, train_rows, mean_ml_per_alpha: float, median_ml_per_alpha: float) -> dict:
    """How many years of the cohort's own ageing one unit of the age direction renders on the test
    subjects: their ventricles' change per unit of alpha over the within-subject ventricle growth
    per year of the training subjects' truth columns (of the group the direction names, if any)."""
    meta = direction.meta
    group = meta.get("age_axis_group") or (meta.get("rendered") or {}).get("ageing_group") or ""
    rows = [r for r in train_rows if not group or str(r.get("group", "")) == group]
    rate = within_subject_rate(rows, "ventricles_ml")
    out = {"group": group or "all training subjects", "cohort_ventricles_ml_per_year": rate,
           "ventricles_ml_per_alpha": {"mean": mean_ml_per_alpha, "median": median_ml_per_alpha}}
    if rate and rate > 0:
        out["years_per_alpha"] = {"mean": mean_ml_per_alpha / rate, "median": median_ml_per_alpha / rate}
    return out


def probe_section(s, pipe, model, inp, load, timing):
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
                          "how": "age = target_mean + target_std · (w·(y_sem − μ)/σ + b) with the age direction's meta ("
                                 + {"longitudinal": "a regression of the standardised age on the position along the within-subject axis",
                                    "contrast": "a regression of the standardised age on the position along the age contrast axis"}.get(
                                        a.meta.get("kind"), "ridge on the standardised age") + ")"}
        else:
            out["age"] = {"mae_years": float("nan"), "how": "the age direction has no target_mean/target_std (not trained by 'ldae train'), or the cohort has no age column"}
    metrics = _read_probes_json(s.workdir)
    if metrics.get("val"):
        out["validation_subjects_from_training"] = metrics["val"]
    if metrics.get("train_cv"):
        out["cross_validated_over_training_subjects"] = metrics["train_cv"]
    timing["probes_s"] = time.perf_counter() - t0
    return out


REAL_HEADS = {
    "Colin27 (mricron-data)": "/usr/share/mricron/templates/ch2.nii.gz",
    "ITK example subject (insighttoolkit5-examples)": "/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
}
"""Real heads with skull that Debian's packages install (docs/training.md: where they come from)."""


def real_heads_section(s, model, pipe, keep, timing):
    """Raw scans with skull through the default raw path (stage A, then stage B), reconstructed at
    the main T and scored in model space against the preprocessed input (volume and brain SSIM),
    beside the autoencoder alone; a variation scored against the reconstruction."""
    from ..inference.image import read_image
    from ..inference.space import to_model
    from ..registration import StageACache

    t0 = time.perf_counter()
    T = s.main_steps
    heads = {Path(p).name: p for p in s.real_heads} if s.real_heads is not None else {k: p for k, p in REAL_HEADS.items() if Path(p).is_file()}
    out, cache = [], StageACache()
    bar = _bar(s, len(heads), "real heads", "scan")
    for name, path in heads.items():
        rec: dict = {"name": name, "path": str(path)}
        try:
            t_a = time.perf_counter()
            prep = to_model(read_image(path), "raw", model.config.space, cache=cache)
            rec["stage_a_s"] = time.perf_counter() - t_a
        except LDAEError as err:
            rec["error"] = str(err)
            out.append(rec)
            bar.update(1)
            continue
        x = _t(prep.x)
        enc = pipe.encode(x, T)
        ae = pipe.decode(enc.z0)
        recon = pipe.reconstruct(enc, T)
        g = torch.Generator().manual_seed(int(s.seed))
        var = pipe.sample(enc.y_sem, torch.randn(tuple(enc.z0.shape), generator=g, dtype=torch.float32), T)
        rec.update(quality=prep.quality, autoencoder=_sim(ae, x), reconstruction=_sim(recon, x),
                   variation_vs_reconstruction=ssim(var, recon, data_range=1.0))
        keep.setdefault("real", []).append((name, x, ae, recon, var))
        out.append(rec)
        bar.update(1)
    bar.close()
    timing["real_heads_s"] = time.perf_counter() - t0
    return {"steps": T, "heads": out,
            "how": "each raw head through stage A (N4, brain extraction, registration to MNI) and stage B, as `ldae` runs a raw scan; "
                   "SSIM in model space against that preprocessed input"}


def _read_probes_json(workdir: Path) -> dict:
    """The probe metrics 'ldae train' recorded ({"val": …, "train_cv": …}); {} when there are none."""
    p = workdir / "probes" / "probes.json"
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    m = d.get("metrics", d) if isinstance(d, dict) else None
    return m if isinstance(m, dict) else {}


