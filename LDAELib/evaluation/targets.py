"""What ``ldae evaluate`` holds a model to: the targets, their thresholds, and which are met."""

from __future__ import annotations

import numpy as np

EXPECTED_SIGN = {("disease", "ventricles"): +1, ("disease", "hippocampus"): -1, ("age", "ventricles"): +1, ("age", "hippocampus"): -1}
"""+alpha disease / older → larger ventricles, smaller hippocampi (the cohort's simulated atrophy)."""

DEFAULT_ALPHAS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
DEFAULT_STEPS = (10, 20, 50)
SSIM_TARGET, SSIM_TARGET_T = 0.95, 20
RHO_TARGET = 0.9


SEMANTIC_ONLY_FLOOR = 0.3
"""Below this SSIM against the input, semantic-only samples are not the scan's brain (a model that
generates from noise scores well above it; the first demo models scored 0.07)."""


def targets(m: dict) -> list[dict]:
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


