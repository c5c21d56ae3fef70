"""Peak memory of a warm edit as ``ldae`` runs it, without any benchmark instrumentation.

``bench_engine.py`` measures each stage in a process that also counts FLOPs and samples the CPU
load; its peak RSS comes out ≈ 0.8 GiB above that of a plain process doing the same work. This
script is the plain process: it loads the official-size random weights that ``bench_engine.py``
prepared (``--workdir``), builds the pipeline with ``LDAELib.pipeline.make_pipeline`` (optionally
with ``--weight-storage float16``) and then tunes the allocator (what ``ldae`` and the Slicer worker
do), takes the float32 encoding that bench_engine's
cold edit saved (the loop of float32+bf16-decode is bit-identical to float32's), and runs the warm
edit (alpha 2, T=10) ``--edits`` times (default 2), printing the wall time and ``ru_maxrss`` after each.

    python benchmarks/bench_engine.py --workdir W --modes float32 --stages edit_cold --steps 10   # once
    python benchmarks/bench_peak_memory.py --workdir W
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engine as engine  # noqa: E402
from LDAELib.pipeline import Encoding  # noqa: E402
from LDAELib.accel import tune_allocator
from LDAELib.pipeline import make_pipeline  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/ldae-bench-work")
    p.add_argument("--decode-dtype", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-tune", action="store_true", help="leave glibc's allocator at its defaults")
    p.add_argument("--weight-storage", default="float32", choices=["auto", "float32", "float16"])
    p.add_argument("--edits", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = engine.model_config(False)
    model = engine.load_prepared(cfg, Path(a.workdir), torch.float32)
    pipe = make_pipeline(model, "cpu", "float32", a.decode_dtype, weight_storage=a.weight_storage)
    tuned = False if a.no_tune else tune_allocator()  # after the weights, as ldae and the worker do
    d = torch.load(Path(a.workdir) / "encoding-float32-T10.pt", weights_only=True)
    enc = Encoding(d["key"], d["z0"], d["y_sem"], {int(k): v for k, v in d["z_T"].items()})
    direction = engine.bench_direction(cfg.encoder.emb_dim)
    print(f"allocator tuned: {tuned}; decoder {pipe.decode_dtype}; weights {pipe.weight_storage}; loaded: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)
    for i in range(a.edits):
        t0 = time.perf_counter()
        pipe.edit(enc, direction, [2.0], 10)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"warm edit {i + 1}: {time.perf_counter() - t0:.1f} s, peak RSS {peak / 2**30:.2f} GiB ({peak / 1e9:.2f} GB)", flush=True)


if __name__ == "__main__":
    main()
