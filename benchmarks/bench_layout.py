"""float32 in the standard (NCDHW) or the channels-last (NDHWC) layout, on this CPU.

``pipeline.make_pipeline`` keeps float32 networks in the standard layout. On the CPU the project's
benchmarks were first taken on (AVX-512 BF16) both layouts ran float32 at the same speed; oneDNN's
AVX2 kernels may prefer channels-last. This script measures, in float32 and in one process:

* ``shift_unet``: one ShiftUNet call (ε and g), batch 1, at the model's latent size;
* ``decode``: ``pipeline.decode`` of one latent (post_quant_conv + decoder);
* ``warm edit``: T sampling steps + decode on a cached encoding (demo model only, where the result
  is an image and the fidelity of one layout against the other means something);

each as the median of ``--repeats`` calls after one warm-up call (``time.perf_counter``), for
the standard layout and for channels-last, and the warm edit's SSIM and max|diff| of
channels-last against the standard layout. ``--official`` uses the official size with random
weights (LDAEConfig(), seed 0; about 4 GB) for the two network stages.

    python benchmarks/bench_layout.py --out benchmarks/results/layout-<machine>.json
    python benchmarks/bench_layout.py --official --repeats 3 --out ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LDAELib.evaluation.similarity import ssim  # noqa: E402
from LDAELib.pipeline import LDAEPipeline  # noqa: E402
from LDAELib.resources import default_model_path, example_scans  # noqa: E402
from LDAELib.accel import cpu_name, tune_allocator  # noqa: E402
from LDAELib.space import to_model_space  # noqa: E402
from bench_demo import timed  # noqa: E402  (beside this script)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", action="store_true", help="official size, random weights (network stages only)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of the warm edit (demo model)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stages", nargs="+", choices=["shift_unet", "decode", "warm edit"], default=["shift_unet", "decode", "warm edit"])
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.official:
        from LDAELib.model import LDAEConfig
        from LDAELib.weights import random_model

        model = random_model(LDAEConfig(), seed=0)
    else:
        from LDAELib.weights import load_model

        model = load_model(default_model_path())
    tune_allocator()
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    z = torch.randn((1, *cfg.latent_shape), generator=g)
    t = torch.tensor([500])
    y = torch.randn((1, cfg.encoder.emb_dim), generator=g)
    res = {"machine": f"{cpu_name()}, {a.threads} threads", "torch": torch.__version__, "model": model.name,
           "latent": list(cfg.latent_shape), "dtype": "float32", "results": {}}
    outputs = {}
    xs = None
    if not a.official:
        xs = []
        for scan in example_scans()[:1]:
            img = nib.load(str(scan.path))
            xs.append(to_model_space(np.asarray(img.dataobj, np.float32), img.affine, cfg.space)[0])
    for layout, cl in (("standard", False), ("channels-last", True)):
        pipe = LDAEPipeline(model, device="cpu", dtype=torch.float32, channels_last=cl, decoder_channels_last=cl)
        r = {}
        with torch.inference_mode():
            if "shift_unet" in a.stages:
                r["shift_unet"] = timed(lambda: pipe._unet(z, t, y), a.repeats)
            if "decode" in a.stages:
                r["decode"] = timed(lambda: pipe.decode(z), max(1, a.repeats // 2) if a.official else a.repeats)
        if xs is not None and "warm edit" in a.stages:
            direction = next(iter(model.directions.values()))
            enc = pipe.encode(xs[0], a.steps)
            r["warm edit"] = timed(lambda: pipe.edit(enc, direction, [2.0], a.steps), a.repeats)
            outputs[layout] = pipe.edit(enc, direction, [2.0], a.steps)[0, 0].numpy()
        res["results"][layout] = r
        print(f"{layout}: " + ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in r.items()), flush=True)
        # the model's modules were switched to this layout in place; back to the standard one
        model.to(memory_format=torch.contiguous_format)
    if outputs:
        ref, cl_out = outputs["standard"], outputs["channels-last"]
        res["fidelity"] = {"what": f"warm edit, alpha 2 along {next(iter(model.directions))}, T={a.steps}, channels-last vs standard",
                           "ssim": ssim(cl_out, ref, 1.0), "max_abs_diff": float(np.abs(cl_out - ref).max())}
        print(res["fidelity"], flush=True)
    s, c = res["results"]["standard"], res["results"]["channels-last"]
    res["speed-up"] = {k: s[k]["median_s"] / c[k]["median_s"] for k in s}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
