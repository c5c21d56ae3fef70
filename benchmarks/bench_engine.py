#!/usr/bin/env python
"""Time, peak memory, throughput and fidelity of each LDAE stage, per compute mode.

At the official size with random weights (``random_model(LDAEConfig(), seed=0)``: AEKL
1×128×160×128 → latent 3×16×20×16, ConvNeXt-S semantic encoder, ShiftUNet base 256, ~933 M
parameters) it measures, for each compute mode (``MODES``):

  gemm, conv_latent, conv_image   kernel probes: one large matmul, the ShiftUNet's and the
                                  autoencoder's first-level 3×3×3 convolution (machine ceiling)
  aekl_encode                     AutoencoderKL encoder, 1×1×128×160×128 → μ, σ
  aekl_decode                     ``pipeline.decode``, 1×3×16×20×16 → 1×1×128×160×128
  semantic                        ``pipeline.embed``, one volume → 1×768
  unet_step                       one ShiftUNet call (ε and g), batch 1
  edit_cold@T                     empty cache: AEKL encode + semantic + T inversion steps
                                  + T sampling steps + decode (``pipeline.edit`` on a volume)
  edit_warm@T                     from a cached ``Encoding``: T sampling steps + decode

Method. Every measurement runs in a fresh process (this script re-invoking itself with
``--one STAGE MODE``), so its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is that stage's,
with all three networks resident, and not the leftovers of another. The random weights are built
once (by a ``--one prepare`` process), cast to each dtype and saved; a worker builds the model on
the meta device and assigns that state dict, so its peak is that of inference, not of drawing
933 M random numbers in float32. Timing: ``time.perf_counter`` around one call (synchronised on
CUDA), one warm-up call first, then the median of n calls. The warm-up of an edit is the same
edit at T = 1 (it runs every network once on the same shapes at a fraction of the cost). FLOPs come
from ``torch.utils.flop_counter.FlopCounterMode`` on the warm-up call (conv/matmul/attention only,
2 FLOPs per MAC; never inside a timed call); an edit's FLOPs are the sum of its stages'. During each
timed call the script also records how many CPU cores *other* processes kept busy (/proc/stat minus
this process), because timings on a small shared machine are only as good as its quietness: each
timed call first waits (``--quiet-wait``) for the machine to be idle, and up to ``--max-extra``
further calls replace calls that other processes still disturbed; the median is over the n least
disturbed calls, and the table marks medians that still include a disturbed call with †.

Fidelity: the warm edit at T = 10 (alpha 2.0 along a random direction, on a smooth synthetic
brain-like volume) of each mode is compared with float32's by SSIM (``LDAELib.evaluation.similarity``) and
max|diff|; and, because random weights let the DDIM loop amplify rounding chaotically,
the same comparison is made with the reduced-size fixture model of the test suite (the authors'
code paths with seeded weights and realistically scaled latents; no trained weights are available).

Outputs: JSON (``--out``, default ``benchmarks/results/<machine>.json``; measurements are merged
in, so runs with different ``--modes`` accumulate with ``--resume``) and the generated part of a
markdown page (``--md``, default ``docs/benchmarks.md``, between the BEGIN/END GENERATED markers;
text outside them is kept).

Examples::

    python benchmarks/bench_engine.py                          # everything, CPU (~1 h on 2 cores)
    python benchmarks/bench_engine.py --modes float32 bfloat16-cl --steps 10
    python benchmarks/bench_engine.py --device cuda
    python benchmarks/bench_engine.py --small --quick --out /tmp/b.json --md /tmp/b.md  # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from LDAELib.evaluation import similarity as metrics  # noqa: E402
from LDAELib.directions import Direction  # noqa: E402
from LDAELib.model import LDAEConfig, LDAEModel, small_config  # noqa: E402
from LDAELib.pipeline import Encoding, LDAEPipeline  # noqa: E402

MODES: dict[str, tuple[torch.dtype, bool, torch.dtype]] = {
    "float32": (torch.float32, False, torch.float32),
    "float32-cl": (torch.float32, True, torch.float32),
    "float32+bf16-decode": (torch.float32, False, torch.bfloat16),
    "bfloat16": (torch.bfloat16, False, torch.bfloat16),
    "bfloat16-cl": (torch.bfloat16, True, torch.bfloat16),
}
"""mode name → (network dtype, channels_last, decoder dtype); a bfloat16 decoder always runs
channels-last. float32 is the reference every mode is compared with. ``float32+bf16-decode`` is
what ``LDAELib.pipeline.make_pipeline`` picks by default on CPUs with native bfloat16: the encoders
and the DDIM loop exactly as float32, the decoder in bfloat16 channels-last."""

TUNED_ALLOCATOR_MODES = {"float32+bf16-decode"}
"""Modes measured as ``ldae`` and the Slicer worker run: with ``LDAELib.accel.tune_allocator()``
(glibc keeps freed memory instead of unmapping it after every call). The other modes keep glibc's
defaults, so float32 vs float32+bf16-decode on ``unet_step`` (the same computation) shows the
allocator's share alone."""

KERNEL_STAGES = ("gemm", "conv_latent", "conv_image")
NETWORK_STAGES = ("aekl_encode", "aekl_decode", "semantic", "unet_step")
EDIT_STAGES = ("edit_cold", "edit_warm")
ALPHA = 2.0
FIDELITY_STEPS = 10
SSIM_BAR = 0.999
TARGET_WARM_S = 60.0
TARGET_PEAK_BYTES = 8e9  # "8 GB", taken as 8·10⁹ bytes (7.45 GiB): the stricter reading
AUTHORS_EDIT_T10_S, AUTHORS_PEAK = 143.0, "≈ 8–9 GB"  # /work/shared/spec/official/cost.md
FIXTURES = Path(os.environ.get("LDAE_FIXTURES", REPO.parent / "shared" / "spec" / "official" / "fixtures"))
BEGIN, END = "<!-- BEGIN GENERATED by benchmarks/bench_engine.py -->", "<!-- END GENERATED -->"
GIB = 2**30
CONTENDED = 0.15
"""A timed call during which other processes kept ≥ this many cores busy on average is 'contended'."""


# ---------------------------------------------------------------------------------------------
# Machine and process probes


def machine_info(device: str) -> dict:
    """CPU model, cores, RAM, bf16/AMX flags, torch version and (on CUDA) the GPU."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = m.group(1).strip() if m else cpu
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
    except OSError:
        pass
    ram = None
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        ram = int(m.group(1)) * 1024 if m else None
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": ram,
        "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")},
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None,
    }
    return info


def machine_slug(info: dict) -> str:
    """A file name for the results of this machine, e.g. ``amd-epyc-2c-cpu``."""
    name = info["gpu"] or info["cpu"]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-{info['cores']}c-{'cuda' if info['gpu'] else 'cpu'}"


def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def peak_rss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)  # bytes on macOS, KiB on Linux


class CpuLoad:
    """How many cores other processes kept busy between start() and stop() (Linux; else None)."""

    @staticmethod
    def _busy() -> float | None:
        try:
            f = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        return (sum(f[:8]) - f[3] - f[4]) / hz  # all but idle and iowait, seconds

    def start(self) -> None:
        self.b0, self.own0, self.t0 = self._busy(), sum(os.times()[:2]), time.perf_counter()

    def stop(self) -> float | None:
        b1, own1, t1 = self._busy(), sum(os.times()[:2]), time.perf_counter()
        if self.b0 is None or b1 is None:
            return None
        return max(0.0, ((b1 - self.b0) - (own1 - self.own0)) / max(t1 - self.t0, 1e-9))


def wait_until_quiet(max_s: float, threshold: float = 0.15, quiet_s: int = 2) -> float:
    """Sleep until other processes have used < ``threshold`` cores for ``quiet_s`` seconds in a row
    (at most ``max_s`` seconds); returns the seconds waited. On a 2-core machine one busy neighbour
    makes a 2-thread run several times slower (each parallel region waits for the descheduled
    thread), so the timed calls start, when possible, on a quiet machine."""
    t0, quiet, probe = time.perf_counter(), 0, CpuLoad()
    while quiet < quiet_s and time.perf_counter() - t0 < max_s:
        probe.start()
        time.sleep(1.0)
        load = probe.stop()
        if load is None:
            break
        quiet = quiet + 1 if load < threshold else 0
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Inputs


def phantom(shape: tuple[int, int, int]) -> torch.Tensor:
    """The test suite's brain phantom (``LDAELib.testing.phantom_brain``) in [0, 1], 1×1×A×B×S float32."""
    from LDAELib.testing import phantom_brain

    v, _ = phantom_brain(tuple(shape), 1.5)
    return torch.from_numpy(v / v.max())[None, None]


def bench_direction(dim: int) -> Direction:
    """A fixed random unit direction in a dim-d semantic space (identity normalisation)."""
    g = torch.Generator().manual_seed(0)
    return Direction("bench", torch.randn(dim, generator=g), torch.zeros(dim), torch.ones(dim))


def model_config(small: bool) -> LDAEConfig:
    return small_config() if small else LDAEConfig()


# ---------------------------------------------------------------------------------------------
# Worker: one measurement in this (fresh) process


def _weights_path(workdir: Path, dtype: torch.dtype) -> Path:
    return workdir / f"weights-{str(dtype).removeprefix('torch.')}.pt"


def prepare_weights(cfg: LDAEConfig, workdir: Path, dtypes: list[torch.dtype]) -> None:
    """Build ``random_model(cfg, seed=0)`` once and save its state dict cast to each dtype."""
    from LDAELib.weights import random_model

    dtypes = [d for d in dtypes if not _weights_path(workdir, d).exists()]
    if not dtypes:
        return
    sd = random_model(cfg, seed=0).state_dict()
    for dtype in dtypes:
        path = _weights_path(workdir, dtype)
        cast: dict[int, torch.Tensor] = {}  # keep tensors that the model shares shared
        out = {}
        for k, v in sd.items():
            if id(v) not in cast:
                cast[id(v)] = v.to(dtype) if v.is_floating_point() else v
            out[k] = cast[id(v)]
        torch.save(out, path)


def load_prepared(cfg: LDAEConfig, workdir: Path, dtype: torch.dtype) -> LDAEModel:
    """The prepared random weights in ``dtype``, without a float32 copy ever being resident."""
    with torch.device("meta"):
        model = LDAEModel(cfg, identity={"name": "random weights (seed 0)", "format": "random", "seed": 0})
    model.load_state_dict(torch.load(_weights_path(workdir, dtype), map_location="cpu", weights_only=True), assign=True)
    return model.eval()


def _encoding_path(workdir: Path, mode: str, steps: int) -> Path:
    return workdir / f"encoding-{mode}-T{steps}.pt"


def output_path(workdir: Path, mode: str, steps: int) -> Path:
    return workdir / f"edit-{mode}-T{steps}.pt"


def _kernel_calls(stage: str, cfg: LDAEConfig, dtype: torch.dtype, cl: bool, device: torch.device) -> tuple[Callable[[], object], str]:
    """A kernel probe sized like one of the model's hot spots, and what it computes."""
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    if stage == "gemm":
        n = 4096 if cfg.unet.base_channel >= 256 else 512
        a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
        return lambda: a @ b, f"matmul {n}×{n} @ {n}×{n}"
    if stage == "conv_latent":  # ShiftUNet level 0: base_channel → base_channel at the latent size
        c, shape, reps = cfg.unet.base_channel, cfg.latent_shape[1:], 10
    else:  # AEKL level 0: num_channels[0] → num_channels[0] at the image size
        c, shape, reps = cfg.autoencoder.num_channels[0], cfg.space.shape, 1
    conv = torch.nn.Conv3d(c, c, 3, padding=1).to(device, dtype).to(memory_format=fmt).eval()
    x = torch.randn(1, c, *shape, generator=g).to(device, dtype).contiguous(memory_format=fmt)

    def run():
        for _ in range(reps):
            y = conv(x)
        return y

    return run, f"Conv3d {c}→{c} 3×3×3 on 1×{c}×{'×'.join(map(str, shape))}" + (f", ×{reps}" if reps > 1 else "")


def run_one(args) -> dict:
    """Measure one (stage, mode) in this process and return its record."""
    from torch.utils.flop_counter import FlopCounterMode

    stage, mode = args.one
    steps = args.steps_one
    dtype, cl, dec = MODES[mode]
    if mode in TUNED_ALLOCATOR_MODES:
        from LDAELib.accel import tune_allocator

        tune_allocator()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    cfg = model_config(args.small)
    workdir = Path(args.workdir)
    rec: dict = {"stage": stage, "mode": mode, "steps": steps, "threads": torch.get_num_threads(),
                 "allocator": "tuned" if mode in TUNED_ALLOCATOR_MODES else "glibc default"}
    finish: Callable[[object], None] = lambda out: None

    if stage in KERNEL_STAGES:
        warm, rec["what"] = _kernel_calls(stage, cfg, dtype, cl, device)
        timed = warm
    else:
        t0 = time.perf_counter()
        pipe = LDAEPipeline(load_prepared(cfg, workdir, dtype), device, dtype, channels_last=cl, decode_dtype=dec, decoder_channels_last=cl or dec == torch.bfloat16)
        rec["load_s"] = time.perf_counter() - t0
        rec["rss_loaded_bytes"] = (_status_kib("VmRSS") or 0) * 1024
        x = phantom(cfg.space.shape).to(device)
        direction = bench_direction(cfg.encoder.emb_dim)
        g = torch.Generator().manual_seed(1)
        z = torch.randn(1, *cfg.latent_shape, generator=g).to(device)
        y = torch.randn(1, cfg.encoder.emb_dim, generator=g).to(device)
        t = torch.full((1,), cfg.num_timesteps // 2, dtype=torch.long, device=device)
        if stage == "aekl_encode":
            warm = timed = lambda: pipe.model.autoencoder.encode(pipe._net_in(x))
        elif stage == "aekl_decode":
            warm = timed = lambda: pipe.decode(z)
        elif stage == "semantic":
            warm = timed = lambda: pipe.embed(x)
        elif stage == "unet_step":
            warm = timed = lambda: pipe._unet(z, t, y)
        elif stage == "edit_cold":
            keep: dict = {}

            def warm():
                pipe.clear_cache()
                out = pipe.edit(x, direction, [ALPHA], 1)
                keep["z_T1"] = pipe.encode(x, 1).z_T[1]  # a cache hit: costs nothing
                return out

            def timed():
                pipe.clear_cache()
                return pipe.edit(x, direction, [ALPHA], steps)

            def finish(out):  # hand this encoding to the edit_warm worker
                enc = pipe.encode(x, steps)  # cached by the last timed call
                z_t = {"1": keep["z_T1"].cpu(), str(steps): enc.z_T[steps].cpu()}
                torch.save({"key": enc.key, "z0": enc.z0.cpu(), "y_sem": enc.y_sem.cpu(), "z_T": z_t}, _encoding_path(workdir, mode, steps))

        elif stage == "edit_warm":
            path = _encoding_path(workdir, mode, steps)
            if path.exists():
                d = torch.load(path, weights_only=True)
                enc = Encoding(d["key"], d["z0"].to(device), d["y_sem"].to(device), {int(k): v.to(device) for k, v in d["z_T"].items()})
                rec["encoding"] = "from the edit_cold worker"
            else:  # not timed, but it does count in this process's peak memory
                enc = pipe.encode(x, steps)
                rec["encoding"] = "computed in this process (counts in its peak memory)"
            warm = lambda: pipe.edit(enc, direction, [ALPHA], 1)
            timed = lambda: pipe.edit(enc, direction, [ALPHA], steps)
            finish = lambda out: torch.save(out.cpu(), output_path(workdir, mode, steps))
        else:
            raise SystemExit(f"unknown stage {stage}")

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            warm()
        sync()
        rec["warmup_s"] = time.perf_counter() - t0
        rec["warmup_flops"] = int(counter.get_total_flops())
        runs, out = [], None
        load = CpuLoad()

        def quiet_runs():
            return sum(1 for r in runs if r["others_load"] is not None and r["others_load"] < CONTENDED)

        while len(runs) < args.repeats or (quiet_runs() < args.repeats and len(runs) < args.repeats + args.max_extra):
            out = None
            waited = wait_until_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
            sync()
            load.start()
            t0 = time.perf_counter()
            out = timed()
            sync()
            runs.append({"time_s": time.perf_counter() - t0, "others_load": load.stop(), "quiet_wait_s": waited})
            print(f"    {stage}{'@T' + str(steps) if steps else ''} {mode}: run {len(runs)} {runs[-1]['time_s']:.2f} s, "
                  f"others' load {runs[-1]['others_load'] or 0:.2f} cores", flush=True)
        finish(out)
    # the n quietest calls (all of them quiet when the extra calls allowed it): the median is theirs
    chosen = sorted(runs, key=lambda r: r["others_load"] or 0.0)[: args.repeats]
    rec.update(times_s=[r["time_s"] for r in chosen], others_load=[r["others_load"] for r in chosen], all_runs=runs,
               contended_runs=sum(1 for r in chosen if (r["others_load"] or 0.0) >= CONTENDED), peak_rss_bytes=peak_rss_bytes())
    if stage in KERNEL_STAGES or stage in NETWORK_STAGES:
        rec["flops"] = rec["warmup_flops"]
    if cuda:
        rec["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return rec


def fixture_fidelity(args) -> dict:
    """Every mode against float32 on the reduced-size fixture model (loaded as the test suite does).

    End to end (an edit at T = 10) and, to say where the error comes from, each network alone on
    the same float32 inputs.
    """
    from LDAELib.weights import load_model

    names = {  # fixture file → the authors' file name that load_model expects
        "aekl_state_dict.pt": "autoencoderkl.pth",
        "semantic_encoder_state_dict.pt": "encoder.pth",
        "shift_unet_state_dict_fp16.pt": "decoder.pth",
    }
    src = FIXTURES / "pipeline_autoencode_ddim3.pt"
    if not all((FIXTURES / n).exists() for n in [*names, src.name]):
        return {"skipped": f"fixtures not found at {FIXTURES} (set LDAE_FIXTURES)"}
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ldae-fixture-") as tmp:
        for a, b in names.items():
            shutil.copy(FIXTURES / a, Path(tmp) / b)
        (Path(tmp) / "ldae_config.json").write_text(json.dumps({"vae_args": {"norm_num_groups": 8}}))
        x = torch.load(src, map_location="cpu", weights_only=True)["x_image"]
        outs, nets = {}, {}
        for mode in args.modes_list:
            dtype, cl, dec = MODES[mode]
            model = load_model(tmp)  # a fresh copy: the pipeline converts its model in place
            pipe = LDAEPipeline(model, args.device, dtype, channels_last=cl, decode_dtype=dec, decoder_channels_last=cl or dec == torch.bfloat16)
            direction = bench_direction(model.config.encoder.emb_dim)
            outs[mode] = pipe.edit(x, direction, [ALPHA], FIDELITY_STEPS).cpu()
            if mode == "float32":  # the networks' inputs for the per-network comparison
                enc = pipe.encode(x, FIDELITY_STEPS)
                z0, y = enc.z0, enc.y_sem
                t = torch.full((1,), model.config.num_timesteps // 2, dtype=torch.long)
            with torch.inference_mode():
                nets[mode] = {
                    "aekl_encode (mu)": pipe.model.autoencoder.encode(pipe._net_in(x))[0].float().cpu(),
                    "semantic (y_sem)": pipe.embed(x).cpu(),
                    "unet_step (eps)": pipe._unet(z0, t, y)[0].cpu(),
                    "unet_step (g)": pipe._unet(z0, t, y)[1].cpu(),
                    "aekl_decode": pipe.decode(z0).cpu(),
                }
    res = {"input": f"{src.name}['x_image'] {tuple(x.shape)}", "steps": FIDELITY_STEPS, "alpha": ALPHA, "modes": {}}
    if "float32" in outs:
        for mode, out in outs.items():
            if mode != "float32":
                res["modes"][mode] = compare(out, outs["float32"])
                res["modes"][mode]["per_network_rel_err"] = {
                    k: float((v - nets["float32"][k]).abs().max() / nets["float32"][k].abs().max()) for k, v in nets[mode].items()
                }
    return res


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """SSIM, PSNR and max|diff| of an output against the float32 reference."""
    ref_range = float(ref.max() - ref.min())
    diff = float((out.float() - ref.float()).abs().max())
    return {
        "ssim": metrics.ssim(out, ref),
        "psnr_db": metrics.psnr(out, ref),
        "max_abs_diff": diff,
        "max_abs_diff_rel_range": diff / ref_range if ref_range > 0 else None,
        "ref_range": ref_range,
    }


# ---------------------------------------------------------------------------------------------
# Orchestration


def key(stage: str, mode: str, steps: int | None) -> str:
    return f"{stage}@T{steps}|{mode}" if steps else f"{stage}|{mode}"


def plan(args) -> list[tuple[str, str, int | None, int]]:
    """(stage, mode, steps, repeats) in order: probes and stages per mode, then edits by T."""
    items = []
    for mode in args.modes_list:
        for stage in (*KERNEL_STAGES, *NETWORK_STAGES):
            if stage == "gemm" and MODES[mode][1]:
                continue  # a matmul has no memory format
            if args.stages is None or stage in args.stages:
                items.append((stage, mode, None, args.repeats))
    steps_list = sorted(args.steps)
    for steps in steps_list:
        for mode in args.modes_list:
            if steps != steps_list[0] and args.long_modes is not None and mode not in args.long_modes:
                continue
            for stage in EDIT_STAGES:
                if args.stages is None or stage in args.stages:
                    fast = stage == "edit_warm" and steps <= FIDELITY_STEPS
                    items.append((stage, mode, steps, args.edit_repeats if fast else args.slow_repeats))
    return items


def run_worker(args, stage: str, mode: str, steps: int | None, repeats: int, workdir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", stage, mode, "--repeats", str(repeats),
           "--device", args.device, "--threads", str(args.threads), "--workdir", str(workdir), "--quiet-wait", str(args.quiet_wait),
           "--max-extra", str(args.max_extra)]
    cmd += ["--steps-one", str(steps)] if steps else []
    cmd += ["--small"] if args.small else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"stage": stage, "mode": mode, "steps": steps, "error": (proc.stderr or proc.stdout)[-2000:], "process_s": wall}
    rec = json.loads(lines[-1][len("RESULT "):])
    rec["process_s"] = wall
    return rec


def summarise(rec: dict) -> None:
    t = rec.get("times_s") or []
    if t:
        rec.update(n=len(t), median_s=statistics.median(t), min_s=min(t), max_s=max(t))
        loads = [v for v in rec.get("others_load", []) if v is not None]
        rec["others_load_mean"] = sum(loads) / len(loads) if loads else None


def edit_flops(results: dict, stage: str, steps: int) -> int | None:
    """FLOPs of an edit from its counted stages: cold = enc + sem + 2T·unet + dec, warm = T·unet + dec."""
    def f(s):
        vals = [r["flops"] for r in results.values() if r.get("stage") == s and r.get("flops")]
        return vals[0] if vals else None

    enc, sem, unet, dec = f("aekl_encode"), f("semantic"), f("unet_step"), f("aekl_decode")
    if stage == "edit_warm" and None not in (unet, dec):
        return steps * unet + dec
    if stage == "edit_cold" and None not in (enc, sem, unet, dec):
        return enc + sem + 2 * steps * unet + dec
    return None


def official_fidelity(workdir: Path, modes: list[str]) -> dict:
    ref_path = output_path(workdir, "float32", FIDELITY_STEPS)
    if not ref_path.exists():
        return {}
    ref = torch.load(ref_path, weights_only=True)
    res = {}
    for mode in modes:
        p = output_path(workdir, mode, FIDELITY_STEPS)
        if mode != "float32" and p.exists():
            res[mode] = compare(torch.load(p, weights_only=True), ref)
    return res


def orchestrate(args) -> dict:
    info = machine_info(args.device)
    out_path = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"{machine_slug(info)}{'-small' if args.small else ''}.json"
    data = {"schema": 1, "results": {}, "fidelity": {}, "runs": []}
    if args.resume and out_path.exists():
        data = json.loads(out_path.read_text())
    data["machine"], data["config"] = info, ("small_config()" if args.small else "LDAEConfig() (official size)")
    data["device"], data["threads"] = args.device, args.threads
    cfg = model_config(args.small)
    started, t_run = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ldae-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"LDAE benchmark: {info['cpu']} ({info['cores']} cores), {args.device}, {args.threads} threads, "
          f"torch {info['torch']}; {data['config']}; work folder {workdir}", flush=True)

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(data, indent=1))
        write_markdown(data, Path(args.md))

    try:
        def done(it) -> bool:
            r = data["results"].get(key(*it[:3]), {})
            return args.resume and "median_s" in r and not (args.redo_contended and _dagger(r))

        todo = [it for it in plan(args) if not done(it)]
        need_weights = any(st not in KERNEL_STAGES for st, *_ in todo)
        if need_weights:
            t0 = time.perf_counter()
            dtypes = sorted({MODES[m][0] for m in args.modes_list}, key=str)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", "prepare", "float32", "--workdir", str(workdir),
                            "--dtypes", *[str(d).removeprefix("torch.") for d in dtypes], *(["--small"] if args.small else [])], check=True)
            print(f"  random weights (seed 0) prepared in {time.perf_counter() - t0:.0f} s", flush=True)
        have = data["fidelity"].get("fixture", {}).get("modes", {})
        if not args.no_fixture and not (args.resume and all(m in have for m in MODES if m != "float32")):
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", "fixture", "float32", "--device", args.device,
                                   "--threads", str(args.threads), "--workdir", str(workdir), "--modes", *MODES],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            fx = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-2000:]}
            data["fidelity"].setdefault("fixture", {"modes": {}}).update({k: v for k, v in fx.items() if k != "modes"})
            data["fidelity"]["fixture"]["modes"].update(fx.get("modes", {}))
            print(f"  fixture fidelity: {json.dumps(fx.get('modes', fx))}", flush=True)
            save()
        for stage, mode, steps, repeats in todo:
            print(f"  {key(stage, mode, steps)} (warm-up + {repeats}) …", flush=True)
            rec = run_worker(args, stage, mode, steps, repeats, workdir)
            summarise(rec)
            if stage in EDIT_STAGES and "median_s" in rec:
                rec["flops"] = edit_flops(data["results"], stage, steps)
            rec["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
            data["results"][key(stage, mode, steps)] = rec
            if "error" in rec:
                print(f"    FAILED: {rec['error'][-500:]}", flush=True)
            else:
                print(f"    median {rec['median_s']:.2f} s (n={rec['n']}), peak RSS {rec['peak_rss_bytes'] / GIB:.2f} GiB, "
                      f"others' load {rec['others_load_mean'] if rec['others_load_mean'] is not None else float('nan'):.2f} cores, "
                      f"process {rec['process_s']:.0f} s", flush=True)
            if stage == "edit_warm" and steps == FIDELITY_STEPS:
                data["fidelity"].setdefault("official_random", {}).update(official_fidelity(workdir, list(MODES)))
            save()
    finally:
        data["runs"].append({"started": started, "wall_s": time.perf_counter() - t_run, "argv": sys.argv[1:]})
        save()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"done in {time.perf_counter() - t_run:.0f} s → {out_path}, {args.md}", flush=True)
    return data


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt_s(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}")


def _gib(v) -> str:
    return "–" if not v else f"{v / GIB:.2f}"


STAGE_LABEL = {
    "gemm": "probe: matmul", "conv_latent": "probe: ShiftUNet level-0 conv", "conv_image": "probe: AEKL level-0 conv",
    "aekl_encode": "AEKL encode", "aekl_decode": "AEKL decode", "semantic": "semantic encoder", "unet_step": "ShiftUNet step",
    "edit_cold": "cold edit", "edit_warm": "warm edit",
}


def _stage_name(r: dict) -> str:
    return STAGE_LABEL.get(r["stage"], r["stage"]) + (f" T={r['steps']}" if r.get("steps") else "")


def _dagger(r: dict) -> str:
    """† when the median still includes a call disturbed by other processes."""
    loads = [v for v in r.get("others_load", []) if v is not None]
    return " †" if any(v >= CONTENDED for v in loads) else ""


def _fmt_gflop(v) -> str:
    return "–" if not v else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _order(r: dict) -> tuple:
    stages = (*KERNEL_STAGES, *NETWORK_STAGES)
    s = r["stage"]
    return (r.get("steps") or 0, stages.index(s) if s in stages else len(stages) + EDIT_STAGES.index(s), list(MODES).index(r["mode"]))


def stage_sum(res: dict, mode: str, stage: str, steps: int) -> float | None:
    """An edit's time added up from the single-stage medians of the same mode (None if one is missing)."""
    t = {s: res.get(key(s, mode, None), {}).get("median_s") for s in NETWORK_STAGES}
    if stage == "edit_warm" and None not in (t["unet_step"], t["aekl_decode"]):
        return steps * t["unet_step"] + t["aekl_decode"]
    if stage == "edit_cold" and None not in t.values():
        return t["aekl_encode"] + t["semantic"] + 2 * steps * t["unet_step"] + t["aekl_decode"]
    return None


def best_estimate(res: dict, mode: str, stage: str, steps: int) -> tuple[float | None, str]:
    """The measured median when undisturbed, else the sum of the stages."""
    r = res.get(key(stage, mode, steps), {})
    if "median_s" in r and not _dagger(r):
        return r["median_s"], "measured"
    s = stage_sum(res, mode, stage, steps)
    if s is not None:
        return s, "sum"
    return (r.get("median_s"), "measured †") if "median_s" in r else (None, "–")


def markdown_tables(data: dict) -> str:
    m, res = data["machine"], data["results"]
    flags = ", ".join(f for f, on in m["flags"].items() if on) or "none of the listed"
    lines = [
        f"Machine: **{m['cpu']}**, {m['cores']} cores, {(m['ram_bytes'] or 0) / GIB:.1f} GiB RAM; CPU flags: {flags} "
        f"(amx_bf16: {'yes' if m['flags'].get('amx_bf16') else 'no'}); torch {m['torch']} (oneDNN {'on' if m['mkldnn'] else 'off'}), "
        f"Python {m['python']}; device **{data['device']}**{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, "
        f"{data['threads']} threads; model {data['config']}, random weights (seed 0).",
        "",
        "Runs: " + "; ".join(f"{r['started']} ({r['wall_s'] / 60:.0f} min, `{' '.join(r['argv']) or '(defaults)'}`)" for r in data["runs"]) + ".",
        "",
    ]
    ok = [r for r in res.values() if "median_s" in r]
    modes = [md for md in MODES if any(r["mode"] == md for r in ok)]
    rows = sorted({(r["stage"], r.get("steps")) for r in ok}, key=lambda s: _order({"stage": s[0], "steps": s[1], "mode": "float32"}))
    lines += ["### Median time (s) per stage and mode", "", "| stage | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for stage, steps in rows:
        cells = []
        for md in modes:
            r = res.get(key(stage, md, steps), {})
            cells.append(f"{_fmt_s(r['median_s'])}{_dagger(r)} (n={r['n']})" if "median_s" in r else "–")
        lines.append(f"| {_stage_name({'stage': stage, 'steps': steps})} | " + " | ".join(cells) + " |")
    cuda = any("cuda_peak_bytes" in r for r in ok)
    lines += [
        "",
        "### Every measurement",
        "",
        "min–max over the n timed calls; peak RSS = `ru_maxrss` of the measuring process (all three networks resident; "
        "'loaded' = RSS right after loading them); GFLOP counted by `FlopCounterMode` (edits: sum of their stages); "
        f"'others' = cores kept busy by other processes during the timed calls (0 = quiet machine); † = the median includes a call "
        f"during which others used ≥ {CONTENDED} cores (slower than on a quiet machine); 'n of m' = the n least disturbed of m calls."
        + (" CUDA peak = `torch.cuda.max_memory_allocated`." if cuda else ""),
        "",
        "| stage | mode | median s | n | min–max s | warm-up s | peak RSS GiB | loaded GiB |" + (" CUDA peak GiB |" if cuda else "")
        + " GFLOP | GFLOP/s | others |",
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "") + "---:|---:|---:|",
    ]
    for r in sorted(ok, key=_order):
        gf = r.get("flops")
        cells = [
            _stage_name(r), r["mode"], _fmt_s(r["median_s"]) + _dagger(r),
            f"{r['n']}" + (f" of {len(r['all_runs'])}" if len(r.get("all_runs", [])) > r["n"] else ""),
            f"{_fmt_s(r['min_s'])}–{_fmt_s(r['max_s'])}",
            _fmt_s(r.get("warmup_s")), _gib(r.get("peak_rss_bytes")), _gib(r.get("rss_loaded_bytes")),
            *([_gib(r.get("cuda_peak_bytes"))] if cuda else []),
            _fmt_gflop(gf / 1e9 if gf else None), _fmt_gflop(gf / 1e9 / r["median_s"] if gf else None),
            "–" if r.get("others_load_mean") is None else f"{r['others_load_mean']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    probes = {r["stage"]: r["what"] for r in ok if r.get("what")}
    if probes:
        lines += ["", "Probes: " + "; ".join(f"{STAGE_LABEL[k]} = {v}" for k, v in probes.items()) + "."]
    failed = [r for r in res.values() if "error" in r]
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{_stage_name(r)} {r['mode']}" for r in failed) + " (see the JSON)."]

    fid = data.get("fidelity", {})
    off, fx = fid.get("official_random", {}), fid.get("fixture", {})
    steps_all = sorted({r["steps"] for r in ok if r.get("steps")} | {FIDELITY_STEPS, 50})
    lines += [
        "",
        "### Edits: measured, and the sum of their stages",
        "",
        "'sum' = the same edit added up from the single-stage medians above (cold = AEKL encode + semantic + 2T·ShiftUNet step "
        "+ AEKL decode; warm = T·step + decode; DDIM arithmetic is negligible); where the measured edit is marked †, other processes "
        "slowed it and the sum is the better estimate of this machine when quiet.",
        "",
        "| mode | T | cold edit measured s | cold edit sum s | warm edit measured s | warm edit sum s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for md in modes:
        for steps in steps_all:
            c, w = res.get(key("edit_cold", md, steps), {}), res.get(key("edit_warm", md, steps), {})
            cs, ws = stage_sum(res, md, "edit_cold", steps), stage_sum(res, md, "edit_warm", steps)
            if "median_s" not in c and "median_s" not in w and cs is None:
                continue
            meas = lambda r: f"{_fmt_s(r['median_s'])}{_dagger(r)} (n={r['n']})" if "median_s" in r else "not measured"
            lines.append(f"| {md} | {steps} | {meas(c)} | {_fmt_s(cs)} | {meas(w)} | {_fmt_s(ws)} |")
    lines += [
        "",
        f"### Targets ({'official size' if data['config'].startswith('LDAEConfig') else 'NOT the official size: ' + data['config']}, this machine): warm edit "
        f"T={FIDELITY_STEPS} ≤ {TARGET_WARM_S:.0f} s, peak memory ≤ 8 GB (read as 8·10⁹ B = {TARGET_PEAK_BYTES / GIB:.2f} GiB), "
        f"fidelity SSIM ≥ {SSIM_BAR} against float32",
        "",
        f"Authors' code on this machine (cost.md): {AUTHORS_EDIT_T10_S:.0f} s per edit at T=10 (cold), peak {AUTHORS_PEAK}. "
        "Time verdicts use the measured median when no other process disturbed it, else the sum of the stages (marked 'sum').",
        "",
        f"| mode | warm edit T={FIDELITY_STEPS} s | ≤ {TARGET_WARM_S:.0f} s | cold edit T={FIDELITY_STEPS} s | vs authors' {AUTHORS_EDIT_T10_S:.0f} s "
        "| peak RSS GiB (cold / warm edit) | ≤ 8 GB | SSIM vs fp32 (official size / fixture) | ≥ 0.999 |",
        "|---|---:|:-:|---:|---:|---:|:-:|---:|:-:|",
    ]
    for md in modes:
        w, c = res.get(key("edit_warm", md, FIDELITY_STEPS), {}), res.get(key("edit_cold", md, FIDELITY_STEPS), {})
        if "median_s" not in w and "median_s" not in c:
            continue
        wt, wsrc = best_estimate(res, md, "edit_warm", FIDELITY_STEPS)
        ct, csrc = best_estimate(res, md, "edit_cold", FIDELITY_STEPS)
        peaks = [r["peak_rss_bytes"] for r in (c, w) if "peak_rss_bytes" in r]
        s_off, s_fx = off.get(md, {}).get("ssim"), fx.get("modes", {}).get(md, {}).get("ssim")
        if md == "float32":
            fid_cells, fid_ok = "reference", "–"
        else:
            fid_cells = f"{'–' if s_off is None else f'{s_off:.4f}'} / {'–' if s_fx is None else f'{s_fx:.4f}'}"
            judged = s_fx if s_fx is not None else s_off
            fid_ok = "–" if judged is None else ("yes" if judged >= SSIM_BAR else "no")
        if not ct:
            speedup = "–"
        else:
            speedup = f"×{AUTHORS_EDIT_T10_S / ct:.1f} faster" if ct <= AUTHORS_EDIT_T10_S else f"×{ct / AUTHORS_EDIT_T10_S:.2f} slower"
        lines.append(
            f"| {md} | {_fmt_s(wt)} ({wsrc}) | {'–' if wt is None else 'yes' if wt <= TARGET_WARM_S else 'no'} | "
            f"{_fmt_s(ct)} ({csrc}) | {speedup} | {_gib(c.get('peak_rss_bytes'))} / {_gib(w.get('peak_rss_bytes'))} | "
            f"{'–' if not peaks else 'yes' if max(peaks) <= TARGET_PEAK_BYTES else 'no'} | {fid_cells} | {fid_ok} |"
        )
    lines += [
        "",
        "'≥ 0.999' judges the fixture model where measured (its latents have a realistic scale), else the official-size "
        "figure. Both have random (seeded) weights: trained weights may amplify rounding less or more.",
        "",
        f"### Fidelity against float32 (edit, alpha {ALPHA}, T={FIDELITY_STEPS})",
        "",
        "| model | mode | SSIM | PSNR dB | max\\|diff\\| | max\\|diff\\| / range of fp32 output |",
        "|---|---|---:|---:|---:|---:|",
    ]
    tables = (
        ("official size, random weights, synthetic volume", off),
        (f"reduced-size fixture model (seeded weights), {fx.get('input', '')}", fx.get("modes", {})),
    )
    for label, table in tables:
        for md, f in table.items():
            rel = f.get("max_abs_diff_rel_range")
            lines.append(f"| {label} | {md} | {f['ssim']:.5f} | {f['psnr_db']:.1f} | {f['max_abs_diff']:.3g} | {'–' if rel is None else f'{rel:.3g}'} |")
    if fx.get("skipped"):
        lines.append(f"| fixture model | – | skipped: {fx['skipped']} | | | |")
    per = {md: f["per_network_rel_err"] for md, f in fx.get("modes", {}).items() if "per_network_rel_err" in f}
    if per:
        names = list(next(iter(per.values())))
        lines += ["", "Fixture model, each network alone on the same float32 inputs: max|out − out_fp32| / max|out_fp32|", "",
                  "| mode | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {md} | " + " | ".join(f"{e[n]:.2e}" for n in names) + " |" for md, e in per.items()]
    return "\n".join(lines)


def write_markdown(data: dict, path: Path) -> None:
    """Replace the generated block of ``path`` (create the page if needed); keep the rest."""
    block = f"{BEGIN}\n{markdown_tables(data)}\n{END}"
    text = path.read_text() if path.exists() else f"# LDAE engine benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + block + tail)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda also reports torch.cuda.max_memory_allocated)")
    p.add_argument("--threads", type=int, default=cores, help=f"torch.set_num_threads (default: the {cores} usable cores)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="compute modes (default: all)")
    p.add_argument("--steps", nargs="+", type=int, default=[10, 50], help="DDIM steps T of the edits (default: 10 50)")
    p.add_argument("--stages", nargs="+", choices=[*KERNEL_STAGES, *NETWORK_STAGES, *EDIT_STAGES], help="only these stages")
    p.add_argument("--long-modes", nargs="+", choices=list(MODES), help="modes that also run the edits at T > min(--steps) (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per single stage (default 3)")
    p.add_argument("--edit-repeats", type=int, default=3, help=f"timed calls of warm edits at T ≤ {FIDELITY_STEPS} (default 3)")
    p.add_argument("--slow-repeats", type=int, default=1, help="timed calls of cold edits and of edits at larger T (default 1)")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each timed call wait up to this many seconds for other processes to leave the CPU idle (default 60; 0 = never)")
    p.add_argument("--max-extra", type=int, default=2,
                   help=f"extra timed calls allowed to replace contended ones (other processes ≥ {CONTENDED} cores); default 2")
    p.add_argument("--quick", action="store_true", help="smoke test: T=10 only and 1 timed call everywhere")
    p.add_argument("--small", action="store_true", help="LDAELib.model.small_config() instead of the official size (seconds)")
    p.add_argument("--no-fixture", action="store_true", help="skip the fidelity check (all modes) on the reduced-size fixture model")
    p.add_argument("--out", help="results JSON (default benchmarks/results/<machine>.json)")
    p.add_argument("--md", default=str(REPO / "docs" / "benchmarks.md"), help="markdown page whose generated block is rewritten")
    p.add_argument("--resume", action="store_true", help="keep the measurements already in --out and skip them")
    p.add_argument("--render", action="store_true", help="only rewrite --md from the results in --out (no measurement)")
    p.add_argument("--redo-contended", action="store_true", help="with --resume: measure again what other processes disturbed (†)")
    p.add_argument("--workdir", help="folder for weights, encodings and outputs (default: a temporary one, removed at the end)")
    # internal: one measurement in a fresh process
    p.add_argument("--one", nargs=2, metavar=("STAGE", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--steps-one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtypes", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.repeats, a.edit_repeats, a.slow_repeats, a.quiet_wait, a.max_extra = [FIDELITY_STEPS], 1, 1, 1, 0.0, 0
    a.modes_list = ["float32"] + [m for m in a.modes if m != "float32"] if "float32" in a.modes else list(a.modes)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        if not args.out:
            raise SystemExit("--render needs --out (the results JSON)")
        write_markdown(json.loads(Path(args.out).read_text()), Path(args.md))
        return 0
    if args.one is None:
        orchestrate(args)
        return 0
    stage, _ = args.one
    if stage == "prepare":
        prepare_weights(model_config(args.small), Path(args.workdir), [getattr(torch, d) for d in args.dtypes])
        return 0
    rec = fixture_fidelity(args) if stage == "fixture" else run_one(args)
    print("RESULT " + json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
