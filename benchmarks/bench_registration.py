"""Stage A (LDAELib.registration) per scan: wall time and quality on a 1 mm 256³ head.

The scans are Colin27 (``ch2.nii.gz``, with skull; Debian package mricron-data) moved off MNI by
random affine motions (rotations ≤ 15°, shifts ≤ 20 mm, scaling ±8 %) and stored as 256³ 1 mm
volumes in scanner-like orientations (axial, sagittal, coronal; some tilted). Per scan: seconds for
the whole of stage A (no cache), the steps' seconds, brain-mask Dice against ``ch2bet`` moved the
same way, the mean landmark error (116 AAL region centres mapped to MNI, against where the same
engine puts them for the unmoved head), and the native → model space → native correlation. Each scan
is run twice: the head with skull, and the skull-stripped head (``ch2bet`` moved the same way).

``--ants`` also runs the authors' engine, ANTsPy (``pip install antspyx``), on the same scans:
``n4_bias_field_correction`` then ``registration(type_of_transform="SyN")`` of the scan to the same
template with the same brain-plus-margin mask (antspynet's extraction network cannot be downloaded
here, so the brain mask is the template's, carried back as in LDAELib), once on the head with skull
and once on the skull-stripped head (``ch2bet``, the authors' situation after antspynet).

    python benchmarks/bench_registration.py --scans 3 --out benchmarks/results/registration.json
    python benchmarks/bench_registration.py --scans 1 --ants --out benchmarks/results/registration_ants.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLIN = Path(os.environ.get("LDAE_COLIN27_DIR", "/usr/share/mricron/templates"))
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
# (voxel axes as world axes, their signs, tilt about x in degrees): axial RAS, sagittal PIL-like, coronal LSA-like
ORIENTATIONS = [((0, 1, 2), (1, 1, 1), 0.0), ((1, 2, 0), (-1, -1, 1), 10.0), ((0, 2, 1), (-1, -1, 1), -12.0)]


def machine() -> str:
    from LDAELib.accel import cpu_name

    cpu = cpu_name()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GB RAM, Python {platform.python_version()}"


def load(name):
    img = nib.load(str(COLIN / name))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine.astype(np.float64)


def motion(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-15, 15, 3), degrees=True).as_matrix() @ np.diag(rng.uniform(0.92, 1.08, 3))
    m[:3, 3] = rng.uniform(-20, 20, 3)
    return m


def scan_grid(m, src_shape, src_affine, orientation, size=256):
    """A size³ 1 mm grid in ``orientation`` centred on the moved head."""
    axes, signs, tilt = orientation
    lin = Rotation.from_euler("x", tilt, degrees=True).as_matrix() @ (np.eye(3)[:, list(axes)] * np.asarray(signs, float))
    centre = (m @ src_affine @ np.r_[(np.asarray(src_shape) - 1) / 2.0, 1.0])[:3]
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = centre - lin @ np.full(3, (size - 1) / 2.0)
    return (size, size, size), affine


def move(data, src_affine, m, shape, affine, order=1):
    t = np.linalg.inv(src_affine) @ np.linalg.inv(m) @ affine
    return ndimage.affine_transform(data, t[:3, :3], t[:3, 3], output_shape=shape, order=order, mode="constant", cval=0.0)


def dice(a, b) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def corr(a, b, where) -> float:
    return float(np.corrcoef(a[where], b[where])[0, 1])


def ldae_points(registration, pts):
    tx = registration.native_to_mni
    return np.array([np.array(tx.TransformPoint((p * RAS_TO_LPS).tolist())) * RAS_TO_LPS for p in pts])


def run_ldae(case, reference, threads, skull_stripped=False):
    from LDAELib.registration import MNI_AFFINE, NativeContext, StageASettings, from_model_space_native, register_to_mni
    from LDAELib.space import to_model_space

    data = case["stripped"] if skull_stripped else case["data"]
    t0 = time.perf_counter()
    res = register_to_mni(data, case["affine"], StageASettings(threads=threads))
    seconds = time.perf_counter() - t0
    x, sctx = to_model_space(res.brain_mni, MNI_AFFINE)
    back = from_model_space_native(x, NativeContext(sctx, res.registration))
    err = np.linalg.norm(ldae_points(res.registration, case["landmarks"]) - reference, axis=1)
    return {
        "seconds": round(seconds, 1), "steps": res.seconds, "quality": res.quality,
        "dice": round(dice(res.brain_mask > 0, case["brain"]), 4),
        "landmark_mm": round(float(err.mean()), 2), "landmark_max_mm": round(float(err.max()), 2),
        "roundtrip_corr_mask": round(corr(back, data, res.brain_mask > 0), 4),
        "roundtrip_corr_interior": round(corr(back, data, case["interior"]), 4),
        "roundtrip_corr_truth": round(corr(back, data, case["brain"]), 4),
    }


def run_ants(case, reference, threads, skull_stripped: bool):
    """The authors' engine on the same scan: ANTs N4 + SyN (defaults) to the same template.
    ``reference``: where ANTs puts the landmarks for the unmoved head (None: return them)."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants
    import pandas as pd

    from LDAELib.registration.template import load_template

    def to_ants(data, affine):
        lps = np.diag(RAS_TO_LPS) @ affine[:3, :3]
        sp = np.linalg.norm(lps, axis=0)
        return ants.from_numpy(np.asarray(data, np.float32), origin=(RAS_TO_LPS * affine[:3, 3]).tolist(), spacing=sp.tolist(), direction=lps / sp)

    t = load_template()
    tmpl, tmask = to_ants(t.t1, t.affine), to_ants(t.mask.astype(np.float32), t.affine)
    data = case["stripped"] if skull_stripped else case["data"]
    t0 = time.perf_counter()
    img = to_ants(data, case["affine"])
    n4 = ants.n4_bias_field_correction(img, mask=ants.get_mask(img), shrink_factor=4)
    t_n4 = time.perf_counter() - t0
    reg = ants.registration(fixed=tmpl, moving=n4, type_of_transform="SyN", mask=ants.morphology(tmask, "dilate", 4))
    mask = ants.apply_transforms(fixed=img, moving=tmask, transformlist=reg["invtransforms"], whichtoinvert=[True, False], interpolator="linear")
    seconds = time.perf_counter() - t0
    pts = pd.DataFrame(case["landmarks"] * RAS_TO_LPS, columns=["x", "y", "z"])
    found = ants.apply_transforms_to_points(3, pts, reg["invtransforms"], whichtoinvert=[True, False]).values[:, :3] * RAS_TO_LPS
    if reference is None:
        return found
    err = np.linalg.norm(found - reference, axis=1)
    return {"seconds": round(seconds, 1), "n4_seconds": round(t_n4, 1), "dice": round(dice(mask.numpy() > 0.5, case["brain"]), 4),
            "landmark_mm": round(float(err.mean()), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=3, help="number of moved scans (default 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ants", action="store_true", help="also run ANTsPy (antspyx) N4 + SyN on the same scans")
    ap.add_argument("--out", type=Path, default=None, help="JSON results")
    args = ap.parse_args()

    from LDAELib.registration import StageASettings, register_to_mni

    head, src_affine = load("ch2.nii.gz")
    bet, _ = load("ch2bet.nii.gz")
    aal, _ = load("aal.nii.gz")
    labels = np.unique(aal[aal > 0])
    centres = np.array(ndimage.center_of_mass(np.ones_like(aal), aal, labels)) @ src_affine[:3, :3].T + src_affine[:3, 3]

    print(f"machine: {machine()}", flush=True)
    ref_res = register_to_mni(head, src_affine, StageASettings(threads=args.threads))
    reference = ldae_points(ref_res.registration, centres)
    print(f"reference (Colin27 as distributed): {sum(ref_res.seconds.values()):.1f} s, quality {ref_res.quality}", flush=True)
    reference_stripped = ldae_points(register_to_mni(bet, src_affine, StageASettings(threads=args.threads)).registration, centres)
    if args.ants:
        unmoved = {"data": head, "stripped": bet, "affine": src_affine, "brain": bet > 0, "landmarks": centres}
        ants_reference = {stripped: run_ants(unmoved, None, args.threads, stripped) for stripped in (False, True)}

    rows = []
    for k in range(args.scans):
        seed = 100 + k
        m = motion(seed)
        shape, affine = scan_grid(m, head.shape, src_affine, ORIENTATIONS[k % len(ORIENTATIONS)])
        brain = move((bet > 0).astype(np.float32), src_affine, m, shape, affine) > 0.5
        case = {
            "data": move(head, src_affine, m, shape, affine), "affine": affine, "brain": brain,
            "interior": ndimage.binary_erosion(brain, iterations=2),
            "landmarks": centres @ m[:3, :3].T + m[:3, 3],
            "stripped": move(bet, src_affine, m, shape, affine),
        }
        row = {"seed": seed, "orientation": ORIENTATIONS[k % len(ORIENTATIONS)], "ldae": run_ldae(case, reference, args.threads),
               "ldae_skull_stripped": run_ldae(case, reference_stripped, args.threads, skull_stripped=True)}
        print(json.dumps(row), flush=True)
        if args.ants:
            for stripped in (False, True):
                key = "ants_skull_stripped" if stripped else "ants_with_skull"
                row[key] = run_ants(case, ants_reference[stripped], args.threads, stripped)
                print(key, json.dumps(row[key]), flush=True)
        rows.append(row)

    summary = {
        "machine": machine(), "threads": args.threads, "scans": len(rows), "shape": [256, 256, 256], "spacing_mm": 1.0,
        "median_seconds": statistics.median(r["ldae"]["seconds"] for r in rows),
        "median_dice": statistics.median(r["ldae"]["dice"] for r in rows),
        "median_landmark_mm": statistics.median(r["ldae"]["landmark_mm"] for r in rows),
        "median_roundtrip_corr_mask": statistics.median(r["ldae"]["roundtrip_corr_mask"] for r in rows),
        "median_roundtrip_corr_interior": statistics.median(r["ldae"]["roundtrip_corr_interior"] for r in rows),
    }
    for key in ("ldae_skull_stripped", "ants_with_skull", "ants_skull_stripped"):
        if rows and key in rows[0]:
            summary[key] = {m: statistics.median(r[key][m] for r in rows) for m in ("seconds", "dice", "landmark_mm")}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "reference": {"quality": ref_res.quality, "steps": ref_res.seconds}, "scans": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
