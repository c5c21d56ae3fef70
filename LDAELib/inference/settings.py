"""``RunSettings``: how an operation runs (steps, seeds, device, precision, input space), validated once.

The command line, ``ldae batch`` and the Slicer worker all build one of these and hand it to the
inference layer, so a bad setting gets the same one-line message from every front end, before any
model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..accel.precision import DTYPES
from ..errors import LDAEError
from .space import check_input_space

MAX_STEPS = 999
MAX_SEED = 2**63 - 1
DECODE_DTYPES = ("float32", "bfloat16", "float16", "auto")
WEIGHT_STORAGES = ("auto", "float32", "float16")

PRECISION_NOTES = {
    "float32": "float32 everywhere: reproduces the authors' numbers",
    "auto": "fast decode: bfloat16 decoder where the device computes it natively (≈3× faster decodes, within SSIM 0.999 of float32)",
    "bfloat16": "bfloat16 decoder: faster on CPUs with AVX-512 BF16 and on GPUs, within SSIM 0.999 of float32",
    "float16": "float16 decoder (GPUs): within SSIM 0.999 of float32",
}


def _whole(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise LDAEError(f"{name} must be a whole number, got {value!r}") from None
        if not f.is_integer():
            raise LDAEError(f"{name} must be a whole number, got {value!r}")
        value = int(f)
    if not lo <= value <= hi:
        raise LDAEError(f"{name} must lie between {lo} and {hi}, got {value}")
    return int(value)


def check_device_name(device: str) -> str:
    """Refuse a device name that cannot be meant (the device's presence is checked when it is used)."""
    d = str(device)
    if d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise LDAEError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N (N a GPU number)")


@dataclass(frozen=True)
class RunSettings:
    """How to run an operation.

    steps: DDIM steps each way (1–999; the paper uses 50–100, 10 is the default here).
    seed: seed of variations (default 0) and, with ``sample_latent``, of the sampled latent.
    sample_latent: the authors' stochastic latent μ+σ·ε (seeded) instead of the deterministic μ.
    device: "auto" (a GPU when torch sees one), "cpu", "cuda", "cuda:N".
    dtype: the networks' compute dtype; decode_dtype: the decoder's ("float32" reproduces the
    authors' numbers; "auto" is bfloat16 where native: ``PRECISION_NOTES``).
    weight_storage: "float16" stores the ShiftUNet's float32 weights in half the memory; "auto"
    does so when memory is short. threads: CPU threads for torch (None: torch's choice).
    input_space: "raw", "mni" or "model" (``inference.space``). cache_dir: keep encodings on disk.
    model_space_output: also write each result in model space. verify: check a bundle's hashes.
    """

    steps: int = 10
    seed: int | None = None
    sample_latent: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    decode_dtype: str = "float32"
    weight_storage: str = "auto"
    threads: int | None = None
    input_space: str = "raw"
    cache_dir: str | None = None
    model_space_output: bool = False
    verify: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _whole(self.steps, "steps", 1, MAX_STEPS))
        if self.seed is not None:
            object.__setattr__(self, "seed", _whole(self.seed, "the seed", 0, MAX_SEED))
        if self.threads is not None:
            object.__setattr__(self, "threads", _whole(self.threads, "threads", 1, 4096))
        check_device_name(self.device)
        if self.dtype not in DTYPES:
            raise LDAEError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.decode_dtype not in DECODE_DTYPES:
            raise LDAEError(f"unknown decode dtype {self.decode_dtype!r}; choose one of {', '.join(DECODE_DTYPES)}")
        if self.weight_storage not in WEIGHT_STORAGES:
            raise LDAEError(f"unknown weight storage {self.weight_storage!r}; choose one of {', '.join(WEIGHT_STORAGES)}")
        if "float16" in (self.dtype, self.decode_dtype) and self.device == "cpu":
            raise LDAEError("float16 runs on GPUs only; on the CPU use bfloat16 or float32")
        check_input_space(self.input_space)

    @property
    def latent_seed(self) -> int | None:
        """None = the deterministic μ; with ``sample_latent`` the seed of ε (default 0)."""
        if not self.sample_latent:
            return None
        return 0 if self.seed is None else self.seed

    @property
    def latent(self) -> str:
        """The latent mode as provenance records it: "mean" or "sampled(seed=N)"."""
        return "mean" if self.latent_seed is None else f"sampled(seed={self.latent_seed})"

    @property
    def variation_seed(self) -> int:
        return 0 if self.seed is None else self.seed

    def replace(self, **changes) -> "RunSettings":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_args(cls, args) -> "RunSettings":
        """From ``ldae``'s parsed options (argparse namespace)."""
        space = "model" if getattr(args, "model_space", False) else ("mni" if getattr(args, "registered", False) else "raw")
        return cls(steps=args.steps, seed=args.seed, sample_latent=bool(getattr(args, "sample_latent", False)),
                   device=str(args.device), dtype=args.dtype, decode_dtype=getattr(args, "decode_dtype", "float32"),
                   weight_storage=getattr(args, "weight_storage", "auto"), threads=args.threads, input_space=space,
                   cache_dir=getattr(args, "cache_dir", None), model_space_output=bool(getattr(args, "model_space_output", False)),
                   verify=not getattr(args, "no_verify", False))
