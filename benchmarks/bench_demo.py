"""The demo model in use: what a user waits for, per operation, on this machine.

Loads the shipped demo model (or ``--model``) the way ``ldae`` does (``LDAELib.pipeline.make_pipeline``
with the tuned allocator; float32 decoder by default, ``--decode-dtype auto`` for ``--fast-decode``), takes the shipped example visit in model space, and times with
``time.perf_counter`` after one warm-up call:

* ``cold edit``: encoder + semantic encoder + T inversion steps + T sampling steps + decode, on an
  empty cache;
* ``warm edit``: a new alpha on a cached encoding (T sampling steps + decode): the slider;
* ``interpolation`` of 5 frames between the two example visits, both encodings cached;
* ``load``: reading and verifying the bundle.

Medians of ``--repeats`` calls; peak RSS of the process. Run it on an otherwise idle machine.

    python benchmarks/bench_demo.py --out benchmarks/results/demo-amd-epyc-2c-cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LDAELib.resources import default_model_path, example_scans  # noqa: E402
from LDAELib.accel import cpu_name, tune_allocator  # noqa: E402
from LDAELib.pipeline import make_pipeline  # noqa: E402
from LDAELib.space import to_model_space  # noqa: E402
from LDAELib.weights import load_model  # noqa: E402


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the shipped demo model)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode-dtype", default="float32", help="float32 (ldae's default) or auto (--fast-decode)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tune_allocator()
    t0 = time.perf_counter()
    model = load_model(a.model or default_model_path())
    load_s = time.perf_counter() - t0
    pipe = make_pipeline(model, "cpu", "float32", a.decode_dtype)
    space = model.config.space
    xs = []
    for scan in example_scans():
        img = nib.load(str(scan.path))
        xs.append(to_model_space(np.asarray(img.dataobj, np.float32), img.affine, space)[0])
    direction = next(iter(model.directions.values()))
    res = {"machine": f"{cpu_name()}, {a.threads} threads", "torch": torch.__version__, "model": model.name,
           "decode_dtype": str(pipe.decode_dtype).replace("torch.", ""), "load_s": load_s, "direction": direction.name,
           "model_space": list(space.shape), "results": {}}
    for steps in a.steps:
        enc_a, enc_b = pipe.encode(xs[0], steps), pipe.encode(xs[1], steps)
        alphas = iter(np.linspace(-3, 3, 4 * a.repeats + 8))

        def cold():
            pipe.clear_cache()
            pipe.edit(xs[0], direction, [float(next(alphas))], steps)

        r = {"cold edit": timed(cold, max(1, a.repeats // 2))}
        enc_a, enc_b = pipe.encode(xs[0], steps), pipe.encode(xs[1], steps)
        r["warm edit"] = timed(lambda: pipe.edit(enc_a, direction, [float(next(alphas))], steps), a.repeats)
        r["interpolation, 5 frames"] = timed(lambda: pipe.interpolate(enc_a, enc_b, [0.0, 0.25, 0.5, 0.75, 1.0], steps),
                                             max(1, a.repeats // 2))
        res["results"][f"T={steps}"] = r
        print(f"T={steps}: " + ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in r.items()), flush=True)
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
