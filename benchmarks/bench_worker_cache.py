"""Measure, through the real worker process, what the encoding cache saves on a second edit.

    python benchmarks/bench_worker_cache.py [--model DIR] [--steps 10] [--threads 2]

Without --model a random-weight model of the demo model's size (``LDAELib.model.small_config``:
3 mm grid, 64×80×64, latent 3×16×20×16) is written to a temporary bundle. Prints the first edit
(encoders + inversion + sampling + decode), the inversion's own time (from the progress messages)
and the best of three cached edits (sampling + decode only).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import nibabel as nib

    from LDAELib.server.client import WorkerClient
    from LDAELib.testing import phantom_brain

    tmp = Path(tempfile.mkdtemp(prefix="ldae-measure-"))
    model = args.model
    if model is None:
        from LDAELib.model import small_config
        from LDAELib.weights import random_model
        from LDAELib.weights.bundle import save_bundle
        from LDAELib.directions import Direction
        import torch

        m = random_model(small_config(), seed=1)
        e = m.config.encoder.emb_dim
        m.directions["cn"] = Direction("cn", torch.randn(e), torch.zeros(e), torch.ones(e), positive="CN", negative="AD")
        model = save_bundle(m, tmp / "small", name="small random model (demo size)")
    data, affine = phantom_brain((91, 109, 91), 2.0, intensity=80.0)
    src = tmp / "scan.nii"
    nib.save(nib.Nifti1Image(data, affine), str(src))

    with WorkerClient(model, device="cpu", threads=args.threads) as client:
        def edit(alpha):
            msgs = []
            rid = client.submit({"op": "edit", "source": {"path": str(src), "key": "s"}, "direction": "cn", "alphas": [alpha],
                                 "steps": args.steps, "out_dir": str(tmp / f"o{alpha}")})
            final = client.wait(rid, on_message=lambda m: msgs.append(m) if m.get("type") == "progress" else None)
            assert final["type"] == "result", final
            return final, msgs

        first, prog = edit(1.0)
        inv = [m for m in prog if m["stage"] == "inversion"]
        start = next(m["elapsed"] for m in prog if m["done"] == inv[0]["done"] - 1)
        inversion = inv[-1]["elapsed"] - start
        cached = [edit(a)[0]["seconds"] for a in (2.0, -1.0, 3.0)]
        print(f"model: {client.info['model']['name']} ({client.info['model']['parameters_m']} M parameters), T={args.steps}, "
              f"{args.threads} threads, torch {client.info['diagnostics']['torch']}")
        print(f"first edit:  {first['seconds']:.2f} s  (of which inversion {inversion:.2f} s = {inversion / first['seconds']:.0%})")
        print(f"cached edit: {min(cached):.2f} s best, {statistics.median(cached):.2f} s median of 3  "
              f"-> {first['seconds'] / min(cached):.2f}x faster; saved {first['seconds'] - min(cached):.2f} s")


if __name__ == "__main__":
    main()
