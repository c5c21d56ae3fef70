"""The slider's preview of the slices on screen: its time and its fidelity.

What the Slicer worker does while the user drags the alpha slider with "Slices on screen only":
DDIM sampling at the preview's step count from the scan's cached inversion, then a slab decode of
the model slices under the axial view (``pipeline.preview.preview_slabs``; GroupNorm statistics of the
decode of the scan's DDIM reconstruction at the preview's step count, recorded once per scan; the
coarsest decoder level computed on the whole volume). Measured per model, with the pipeline that ``ldae`` and the worker build
(``pipeline.make_pipeline``: float32 loop, bfloat16 decoder where the CPU computes it natively,
tuned allocator):

* ``warm preview``: a new alpha on a cached encoding (preview steps + slab decode), median of
  ``--repeats`` after one warm-up call, for each preview step count and sampling precision
  (float32, or bfloat16 autocast: ``preview_dtype`` in the worker protocol);
* the costs paid once per scan before that (the worker's "prepare the slider" encode): the
  inversion at the preview's step count and the reconstruction + full decode whose GroupNorm
  statistics the slab decode uses;
* ``slab vs full decode``: the previewed slice against the full decode of the *same* latent
  (SSIM, PSNR, max|diff|): the issue's fidelity bar (SSIM ≥ 0.98); for each ``--stats`` (the first
  is the one timed and the worker's: "reconstruction"; "source" = the decode of the scan's latent);
* ``preview vs result``: the previewed slice against the full-quality result that replaces it
  (float32, T = ``--steps``, whole decode): how representative the quick look is.

Models: ``official`` (official size, the random weights that ``bench_engine.py`` prepared in
``--workdir``, the phantom volume) and ``demo`` (the shipped demo model, the shipped example
visit). Peak RSS of the process is reported. Run it on an otherwise idle machine.

    python benchmarks/bench_engine.py --workdir W --modes float32 --stages edit_cold --steps 10   # once: weights, encoding
    python benchmarks/bench_preview.py --workdir W --out benchmarks/results/preview-amd-epyc-2c-cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engine as engine  # noqa: E402
from LDAELib.evaluation.similarity import slice_ssim  # noqa: E402
from LDAELib.inference.operations import visible_slab  # noqa: E402
from LDAELib.pipeline import Encoding, Progress  # noqa: E402
from LDAELib.pipeline.preview import preview_slabs  # noqa: E402
from LDAELib.accel import tune_allocator
from LDAELib.pipeline import make_pipeline  # noqa: E402


def _timed(fn, repeats: int) -> tuple[dict, object]:
    out = fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": repeats}, out


def _once(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """2-D slice ``a`` against the reference ``b``: SSIM over the reference's range, PSNR, max|diff|."""
    a, b = a.double(), b.double()
    rng = float(b.max() - b.min()) or 1.0
    mse = float(((a - b) ** 2).mean())
    return {"ssim": slice_ssim(a, b, rng), "psnr_db": 10 * np.log10(rng**2 / mse) if mse > 0 else float("inf"),
            "max_abs_diff": float((a - b).abs().max()), "max_abs_diff_rel": float((a - b).abs().max()) / rng}


def _official(workdir: Path):
    cfg = engine.model_config(False)
    model = engine.load_prepared(cfg, workdir, torch.float32)
    d = torch.load(workdir / "encoding-float32-T10.pt", weights_only=True)
    enc = Encoding(d["key"], d["z0"], d["y_sem"], {int(k): v for k, v in d["z_T"].items()})
    return model, enc, engine.bench_direction(cfg.encoder.emb_dim), "official size, random weights (seed 0), phantom"


def _demo(pipe_factory):
    from LDAELib.resources import default_model_path, example_scans
    from LDAELib.space import to_model_space
    from LDAELib.inference.image import read_image as read_volume
    from LDAELib.weights import load_model

    model = load_model(default_model_path())
    pipe = pipe_factory(model)
    scan = example_scans()[0]
    vol = read_volume(scan.path)
    x, _ = to_model_space(vol.data, vol.affine, model.config.space)
    enc = pipe.encode(x, 10)
    return model, pipe, enc, model.directions["disease"], f"shipped demo model, example scan {scan.path.name}"


def bench_model(name: str, pipe, enc, direction, what: str, args) -> dict:
    alpha = 2.0
    n_s = enc.z0.shape[-1] * pipe.model.config.autoencoder.downsampling
    centre = n_s // 2
    shape = tuple(int(s) * pipe.model.config.autoencoder.downsampling for s in enc.z0.shape[2:])
    eye = np.eye(4)
    slab = visible_slab("axial", [0.0, 0.0, float(centre)], shape, eye, lambda p: np.asarray(p), shape)
    rec = {"model": what, "alpha": alpha, "axial_slice": centre, "slab": list(slab), "decode_dtype": str(pipe.decode_dtype),
           "once_per_scan": {}, "previews": []}
    print(f"[{name}] {what}: slab {slab} of {shape}", flush=True)
    # The result the preview stands for: full quality, float32 loop, whole decode.
    if args.steps not in enc.z_T:
        rec["once_per_scan"][f"inversion_T{args.steps}_s"], _ = _once(lambda: pipe.ensure(enc, args.steps, Progress(args.steps)))
    t_full, full = _once(lambda: pipe.edit(enc, direction, [alpha], args.steps))
    rec["full_edit_warm_s"] = t_full
    full_slice = full[0, 0, :, :, centre]
    for steps in args.preview_steps:
        if steps not in enc.z_T:
            t_inv, _ = _once(lambda: pipe.ensure(enc, steps, Progress(steps)))
            rec["once_per_scan"][f"inversion_T{steps}_s"] = t_inv
        for stats in args.stats:
            t_stats, _ = _once(lambda: pipe.source_stats(enc, steps if stats == "reconstruction" else None))
            rec["once_per_scan"][f"groupnorm_stats_{stats}_T{steps}_s"] = t_stats
        for dtype in args.sampling:
            autocast = torch.bfloat16 if dtype == "bfloat16" else None
            timing, (pv,) = _timed(lambda: preview_slabs(pipe, enc, direction, alpha, steps, [slab], stats=args.stats[0],
                                                             autocast=autocast), args.repeats)
            st0 = pipe.source_stats(enc, steps if args.stats[0] == "reconstruction" else None)
            decode_timing, _ = _timed(lambda: pipe.decode_slab(pv.z0, 2, slab[1:], st0, exact_levels=1), args.repeats)
            same_latent_full = pipe.decode(pv.z0)[0, 0, :, :, centre]
            entry = {"steps": steps, "sampling_dtype": dtype, "stats": args.stats[0], "warm_preview": timing, "slab_decode": decode_timing,
                     "preview_vs_result": _compare(pv.slice(centre), full_slice), "slab_vs_full_decode": {}}
            for stats in args.stats:
                st = pipe.source_stats(enc, steps if stats == "reconstruction" else None)
                got = pipe.decode_slab(pv.z0, 2, slab[1:], st, exact_levels=1)[0, 0, :, :, centre - slab[1]]
                entry["slab_vs_full_decode"][stats] = _compare(got, same_latent_full)
            rec["previews"].append(entry)
            fid = ", ".join(f"{k} {v['ssim']:.4f}" for k, v in entry["slab_vs_full_decode"].items())
            print(f"  T={steps} {dtype}: warm preview {timing['median_s']:.2f} s (slab decode {decode_timing['median_s']:.2f} s); "
                  f"slab vs full decode SSIM: {fid}; vs the T={args.steps} result SSIM {entry['preview_vs_result']['ssim']:.4f}", flush=True)
    rec["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/ldae-bench-work", help="bench_engine.py's folder (official-size weights, encoding)")
    p.add_argument("--models", nargs="+", default=["demo", "official"], choices=["demo", "official"])
    p.add_argument("--preview-steps", type=int, nargs="+", default=[2, 3])
    p.add_argument("--sampling", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=10, help="steps of the full-quality result")
    p.add_argument("--stats", nargs="+", default=["reconstruction", "source"], choices=["reconstruction", "source"],
                   help="GroupNorm statistics to measure the fidelity with (the first is timed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tuned = tune_allocator()
    info = engine.machine_info("cpu")
    result = {"machine": info, "allocator_tuned": tuned, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv[1:]),
              "models": {}}
    with torch.inference_mode():
        for name in a.models:  # demo first: the official model's peak RSS then includes the demo's small footprint only
            if name == "demo":
                model, pipe, enc, direction, what = _demo(lambda m: make_pipeline(m, "cpu", "float32", "auto"))
            else:
                model, enc, direction, what = _official(Path(a.workdir))
                pipe = make_pipeline(model, "cpu", "float32", "auto")
            result["models"][name] = bench_model(name, pipe, enc, direction, what, a)
            del model, pipe, enc
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
