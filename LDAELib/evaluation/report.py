"""``ldae evaluate``: a trained model judged on the held-out test subjects of its work folder.

``evaluate`` runs the measurements (``sections``), checks the targets (``targets``) and writes the
output folder: ``report.md`` (rendered here), ``metrics.json`` (every number of the report, and
per-subject values) and PNG figures (``figures``). The folder is written into a temporary folder
beside the destination and renamed into place at the end, so a failure or Ctrl-C leaves nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import LDAEError
from ..pipeline import LDAEPipeline
from ..weights import load_model
from . import figures, sections
from .sections import EvalSettings, Loader, jsonable, read_inputs, select_subjects
from .targets import DEFAULT_ALPHAS, DEFAULT_STEPS, SEMANTIC_ONLY_FLOOR, targets
from .volumes import REGIONS, RegionMeasure

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_STEPS", "EvalSettings", "SEMANTIC_ONLY_FLOOR", "evaluate", "fmt", "semantic_only_note"]


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


def _guidance(model: dict) -> str:
    """', code guidance 8' for a model that samples with code guidance (docs/training.md), else ''."""
    w = model.get("code_guidance", 1.0)
    if w == 1.0:
        return ""
    return f", code guidance {w:g}" + (", mean-free" if model.get("code_guidance_mean_free") else "")

def _report(m: dict, figs: dict) -> str:
    st = m["settings"]
    L = ["# LDAE evaluation on held-out subjects", "",
         f"Model: **{m['model']['name']}** (`{m['model']['path']}`{_guidance(m['model'])}), work folder `{m['data']['workdir']}`, cohort `{m['data']['cohort_csv']}`.",
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
    for k, title, nd in (("ssim", "SSIM", 4), ("ssim_brain", "SSIM inside the brain", 4), ("psnr", "PSNR (dB)", 2), ("mse", "MSE", 6)):
        L += [f"**{title}**", "", "| method | " + " | ".join(f"T = {T}" for T in r["steps"]) + " |", "|---|" + "---|" * len(r["steps"])]
        for meth in r["methods"]:
            L.append(f"| {meth} | " + " | ".join(_ms(r["table"][meth][str(T)][k], nd) for T in r["steps"]) + " |")
        L.append("")
    if r.get("brain"):
        L += [f"{r['brain']}.", ""]
    var = r.get("variation_vs_reconstruction")
    if var:
        L += ["**Variations** (a semantic-only sample, what `ldae vary` and the panel make, against the scan's own reconstruction at the "
              "same T; SSIM):", "", "| | " + " | ".join(f"T = {T}" for T in r["steps"]) + " |", "|---|" + "---|" * len(r["steps"]),
              "| mean ± SD | " + " | ".join(_ms(var[str(T)]) for T in r["steps"]) + " |",
              "| lowest subject | " + " | ".join(fmt(var[str(T)]["min"]) for T in r["steps"]) + " |", ""]
    sem_note = semantic_only_note(m)
    if sem_note:
        L += [sem_note, ""]
    if r.get("volume_measure_on_decoded"):
        blur = r.get("blur_reference_ssim") or {}
        blur_txt = (f" The blurred input (SSIM {blur['mean']:.3f} against the input) shows how far softness alone moves the measure, "
                    "which counts dark voxels: a softer image reads as smaller ventricles." if blur.get("n") else "")
        L += ["The volume measure on decoded images (each subject's first visit: the raw input, its autoencoder reconstruction and "
              "its LDAE reconstruction), measured − true in mL: if decoding moved the measure, the bias would show here." + blur_txt, "",
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
            if d.get("years_per_alpha"):
                L += [f"One unit of alpha, as the direction states it: {d['direction'].split('1 alpha ≈ ')[-1]}.", ""]
            ra = d.get("rendered_ageing")
            if ra and "years_per_alpha" in ra:
                L += [f"What one unit renders on these test subjects: {fmt(ra['ventricles_ml_per_alpha']['median'], 2)} mL of ventricles "
                      f"(median subject), {fmt(ra['years_per_alpha']['median'], 2)} years of the cohort's ageing "
                      f"({fmt(ra['cohort_ventricles_ml_per_year'], 2)} mL a year within subjects, {ra['group']}).", ""]
            L += ["| region | expected sign | pooled ρ (Δ vs alpha) | per-subject ρ: median (lowest, highest) | mL per alpha | "
                  "V(+2) − V(−2), share of V(0) |", "|---|---|---|---|---|---|"]
            for region, sp in d["spearman"].items():
                ch = sp.get("change_pm2_fraction")
                L.append(f"| {region} | {'+' if sp['expected_sign'] > 0 else '−'} | {fmt(sp['pooled'], 3)} | {fmt(sp['median_per_subject'], 3)} "
                         f"({fmt(sp.get('min_per_subject'), 2)}, {fmt(sp.get('max_per_subject'), 2)}) | {_ms(sp['ml_per_alpha'], 3)} | "
                         f"{_ms(ch, 3) if ch else 'n/a'} |")
            L += ["", "Per subject ρ (ventricles / hippocampus): " + "; ".join(
                f"{s}: {fmt(d['spearman']['ventricles']['per_subject'][s], 2)} / {fmt(d['spearman']['hippocampus']['per_subject'][s], 2)}"
                for s in d["spearman"]["ventricles"]["per_subject"]) + ".", ""]
        g = d.get("global_change")
        if g and g["per_subject"]:
            bm = [v["brain_mean"] for v in g["per_subject"].values()]
            L += [f"Global change from alpha {g['alphas'][0]:g} to {g['alphas'][1]:g} (intensities in [0, 1]): mean over the brain, median "
                  f"{fmt(g['median']['brain_mean'], 4)} ({fmt(min(bm), 4)} to {fmt(max(bm), 4)}; darker on {sum(v < 0 for v in bm)} of {len(bm)} "
                  f"subjects); grey-matter level, median {fmt(g['median']['grey_matter_level'], 4)}. {g['how'][0].upper() + g['how'][1:]}.", ""]
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
    if p.get("cross_validated_over_training_subjects"):
        c = p["cross_validated_over_training_subjects"]
        L.append(f"* Across the training subjects ({c['folds']} folds of whole subjects, each probe fitted on the others): AUC = {fmt(c['disease_auc'], 3)} "
                 f"(folds: {', '.join(fmt(a, 2) for a in c['disease_auc_folds'])}), age MAE = {fmt(c['age_mae_years'], 2)} years. "
                 f"{c['subjects']} subjects give a steadier estimate than the {p['n_subjects']} test subjects.")
    if p.get("validation_subjects_from_training"):
        L.append(f"* For reference, the training run's probe metrics on its validation subjects: `{json.dumps(p['validation_subjects_from_training'])}`.")
    rh = m.get("real_heads")
    if rh is not None:
        L += ["", "## 5. Real heads with skull, through the raw path", "", f"T = {rh['steps']}; {rh['how']}. They are not synthetic: three "
              "real people (Colin27 is also one of the cohort's two template identities, so it is the less independent check).", ""]
        if not rh["heads"]:
            L.append("None of the real heads is installed on this machine (see docs/training.md).")
        else:
            L += ["| head | stage A | similarity to template | autoencoder SSIM (volume / brain) | LDAE SSIM (volume / brain) | variation vs reconstruction |",
                  "|---|---|---|---|---|---|"]
            for h in rh["heads"]:
                if "error" in h:
                    L.append(f"| {h['name']} | failed: {h['error']} | | | | |")
                    continue
                L.append(f"| {h['name']} | {fmt(h['stage_a_s'], 1)} s | {fmt(h['quality'].get('similarity'), 3)} | "
                         f"{fmt(h['autoencoder']['ssim'])} / {fmt(h['autoencoder']['ssim_brain'])} | {fmt(h['reconstruction']['ssim'])} / "
                         f"{fmt(h['reconstruction']['ssim_brain'])} | {fmt(h['variation_vs_reconstruction'])} |")
        if "real" in figs:
            L += ["", f"![real heads]({figs['real']})"]
    tm = m["timing"]
    L += ["", "## Run", "", f"{fmt(tm['total_s'], 1)} s in all (" + ", ".join(f"{k[:-2]} {fmt(v, 1)} s" for k, v in tm.items() if k != "total_s")
          + f"); torch threads: {st['threads'] or torch.get_num_threads()}. Command: `{st.get('command', '')}`.", ""]
    return "\n".join(L)


# ------------------------------------------------------------------------------------------ main
def evaluate(settings: EvalSettings, command: str = "") -> dict:
    """Run the evaluation and write ``settings.output``; returns the metrics dict."""
    s = settings
    t_start = time.perf_counter()
    out = s.output
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LDAEError(f"{out} exists and is not empty; choose a new folder for the report")
    figures.require_matplotlib()
    inp = read_inputs(s)
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
    load = Loader(inp.rows, space, s.workdir)
    selected = select_subjects(inp.test_rows, s.subjects, s.seed)
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
        measure, measure_info = sections.measure_section(s, inp, load, space, rng, tests, timing)
        m = {
            "settings": {**{k: v for k, v in asdict(s).items() if k not in ("progress",)}, "command": command},
            "model": {"name": model.name, "path": str(Path(inp.model_path).resolve()), "id": model.identity.get("id"),
                      "space": space.to_dict(), "directions": sorted(model.directions), "code_guidance": model.config.code_guidance,
                      "code_guidance_mean_free": model.config.code_guidance_mean_free},
            "data": {"workdir": str(s.workdir.resolve()), "cohort_csv": str(inp.cohort_csv.resolve()), "n_test_subjects": len(inp.test_rows), "n_test_visits": len(tests),
                     "test_subjects": sorted(inp.test_rows), "selected_subjects": selected,
                     "train_subjects": len(inp.split["subjects"]["train"]), "val_subjects": len(inp.split["subjects"].get("val", [])),
                     "held_out_check": "test subjects are disjoint from train and val in split.json"},
            "volume_measure": measure_info,
        }
        m["reconstruction"] = sections.reconstruction_section(s, pipe, selected, inp, load, measure, keep, timing)
        m["interpolation"] = sections.interpolation_section(s, pipe, selected, inp, load, measure, keep, timing)
        m["edits"] = sections.edits_section(s, pipe, model, selected, inp, load, measure, keep, timing)
        m["probes"] = sections.probe_section(s, pipe, model, inp, load, timing)
        m["real_heads"] = sections.real_heads_section(s, model, pipe, keep, timing)
        m["targets"] = targets(m)
        t_fig = time.perf_counter()
        figs = _figures(tmp, keep, m, measure, space)
        timing["figures_s"] = time.perf_counter() - t_fig
        timing["total_s"] = time.perf_counter() - t_start
        m["timing"] = timing
        m["figures"] = figs
        m = jsonable(m)
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
    if keep.get("real"):
        rows = []
        for name, x, ae, rec, var in keep["real"][:3]:
            rows += [(f"{name[:18]}: input", x), ("autoencoder", ae), ("LDAE", rec), ("variation", var)]
        figures.strip_figure(folder / "real_heads.png", rows, figures.roi_centre(None, space.shape), "real heads through the raw path (model space)")
        out["real"] = "real_heads.png"
    if keep.get("edit"):
        subj, alphas, imgs = keep["edit"]
        i0 = alphas.index(0.0)
        figures.strip_figure(folder / "edit_disease.png", [(f"α={a:+g}", imgs[i]) for i, a in enumerate(alphas)], centre,
                             f"{subj}: edits along disease (second row: − α=0)", diff_to=i0)
        out["edit"] = "edit_disease.png"
    return out
