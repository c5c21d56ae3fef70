"""Encode once, then edit, interpolate, vary or reconstruct (SPEC §6), with a cache, progress and cancel.

Volumes here are model-space tensors B×1×A×B×S in [0,1] (official 1×1×128×160×128, axis order as
the NIfTI stores it after stage B). Mapping files to and from model space is ``space``'s job.

An ``Encoding`` keeps what is expensive to compute for one scan: the scaled latent z0, the semantic
code y_sem and, per DDIM step count, the inverted noise z_T. The pipeline caches encodings by the
content of the input, so a second edit or interpolation of the same scan repeats neither the
encoders nor the inversion. With ``cache_dir`` the encodings are also kept on disk (opt-in: they are
data derived from the scans), so a new process, or a new Slicer session, starts warm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .diffusion.ddim import ddim_invert, ddim_sample
from .diffusion.schedule import ddim_schedule
from .directions import Direction
from .errors import Cancelled, LDAEError
from .model import LDAEModel
from .nets.semantic_encoder import slice_stack

ProgressCallback = Callable[[int, int, str], None]
"""progress(done, total, stage): done/total count network calls of the whole operation."""
CancelCallback = Callable[[], bool]

DEFAULT_STEPS = 10


@dataclass
class Encoding:
    """What one scan costs to encode. Tensors live on the pipeline's device.

    z0: 1×C×d×h×w scaled latent (μ·scale by default; μ+σ·ε·scale with ``latent_seed``).
    y_sem: 1×E semantic code. z_T: {steps: 1×C×d×h×w inverted noise}.
    key: content hash of the input volume and the latent mode.
    """

    key: str
    z0: torch.Tensor
    y_sem: torch.Tensor
    z_T: dict[int, torch.Tensor] = field(default_factory=dict)
    latent: str = "mean"


class EncodingStore:
    """Encodings on disk: one safetensors file per scan (z0, y_sem and each z_T; a few hundred kB at
    the official size), named by a hash of everything the numbers depend on (model fingerprint, scan
    content and latent mode, compute dtype, device type). A file that does not load or does not fit
    is ignored and rewritten; writes are atomic. ``max_files`` bounds the folder (oldest used first
    out)."""

    FORMAT = "ldae-encoding/1"

    def __init__(self, folder: str | Path, max_files: int = 2000) -> None:
        self.folder = Path(folder).expanduser()
        self.max_files = max_files
        self.hits = self.writes = 0

    def path(self, pipeline: "LDAEPipeline", key: str) -> Path:
        h = hashlib.sha256("|".join((pipeline.model.fingerprint(), key, pipeline.device.type, pipeline.weight_storage,
                                     *(() if pipeline.conv_backend == "torch" else (pipeline.conv_backend,)))).encode()).hexdigest()
        return self.folder / f"{h[:40]}.safetensors"

    def load(self, pipeline: "LDAEPipeline", key: str) -> "Encoding | None":
        from safetensors import safe_open

        path = self.path(pipeline, key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != self.FORMAT or meta.get("key") != key or meta.get("model") != pipeline.model.fingerprint():
                    raise ValueError("written for another scan or model")
                z0, y = f.get_tensor("z0"), f.get_tensor("y_sem")
                z_t = {int(n[4:]): f.get_tensor(n) for n in f.keys() if n.startswith("z_T/")}
            cfg = pipeline.model.config
            if z0.ndim != 5 or z0.shape[:2] != (1, cfg.autoencoder.latent_channels) or tuple(y.shape) != (1, cfg.encoder.emb_dim) \
                    or any(v.shape != z0.shape for v in z_t.values()):
                raise ValueError("its tensors have the wrong shapes")
            if not all(torch.isfinite(v).all() for v in (z0, y, *z_t.values())):
                raise ValueError("it holds NaN or infinite values")
        except Exception as err:  # noqa: BLE001 - any unreadable file is only a cache miss
            logging.getLogger("LDAE").warning("ignoring the cached encoding %s (%s); it will be recomputed", path.name, err)
            return None
        os.utime(path)
        self.hits += 1
        dev = pipeline.device
        return Encoding(key=key, z0=z0.to(dev), y_sem=y.to(dev), z_T={k: v.to(dev) for k, v in z_t.items()}, latent=meta.get("latent", "mean"))

    def save(self, pipeline: "LDAEPipeline", enc: "Encoding") -> None:
        from safetensors.torch import save_file

        path = self.path(pipeline, enc.key)
        tensors = {"z0": enc.z0, "y_sem": enc.y_sem, **{f"z_T/{k}": v for k, v in enc.z_T.items()}}
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        meta = {"format": self.FORMAT, "key": enc.key, "model": pipeline.model.fingerprint(), "model_name": pipeline.model.name,
                "latent": enc.latent, "steps": json.dumps(sorted(enc.z_T)), "dtype": str(pipeline.dtype).replace("torch.", "")}
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # derived from patients' scans: the user's only
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, path)
            self.writes += 1
            self._prune()
        except OSError as err:  # a full or read-only disk costs speed, not the result
            logging.getLogger("LDAE").warning("could not keep the encoding on disk in %s: %s", self.folder, err)

    def _prune(self) -> None:
        files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.max_files)]:
            try:
                old.unlink()
            except OSError:
                pass


class _Progress:
    def __init__(self, total: int, callback: ProgressCallback | None, cancel: CancelCallback | None) -> None:
        self.total, self.done, self.callback, self.cancel = total, 0, callback, cancel

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")

    def advance(self, stage: str, n: int = 1) -> None:
        self.done += n
        if self.callback:
            self.callback(min(self.done, self.total), self.total, stage)

    def stage(self, name: str) -> Callable[[int, int], None]:
        """A per-step callback for the DDIM loops that counts into this progress."""
        return lambda _i, _n: self.advance(name)


def content_key(x: torch.Tensor) -> str:
    """SHA-256 of a volume's float32 values and shape (the cache key of its encoding)."""
    a = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    h = hashlib.sha256(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation with the angle taken over the whole flattened tensors (authors' form)."""
    af, bf = a.reshape(-1).float(), b.reshape(-1).float()
    cos = torch.dot(af, bf) / (af.norm() * bf.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    s = torch.sin(theta)
    if float(s) < 1e-6:  # (anti)parallel: the formula is 0/0; fall back to a straight line
        return (1 - t) * a + t * b
    return (a * torch.sin((1 - t) * theta) / s + b * torch.sin(t * theta) / s).to(a.dtype)


class LDAEPipeline:
    """Runs an ``LDAEModel`` on a chosen device and dtype.

    Args:
        model: the networks and directions.
        device: "cpu", "cuda", … (explicit; nothing is chosen behind the caller's back).
        dtype: compute dtype of the networks' weights and activations (float32 reproduces the
            authors' numbers; bfloat16 halves memory). DDIM arithmetic, cached latents and codes
            stay float32 whatever this is, because 1/√(1/ᾱ−1) amplifies rounding (SPEC §5.5).
        decode_dtype: dtype of the autoencoder's decoder (default: ``dtype``). The decoder runs once,
            after the DDIM loop, so its rounding is not amplified: bfloat16 here keeps the result
            within SSIM 0.999 of float32 while the loop stays float32 (``LDAELib.runtime``).
        channels_last: run the 3-D convolutions in channels-last layout (faster on some CPUs).
        decoder_channels_last: the same for the decoder alone (default: ``channels_last``); with
            bfloat16 the decoder is 1.5× faster in it on CPUs, while float32 networks gain nothing.
        cache_size: how many scans' encodings are kept (LRU).
        batch_size: how many latents go through the ShiftUNet at once (edits at several alphas,
            interpolation frames, variations).
        cache_dir: also keep encodings in this folder (``EncodingStore``), keyed by the model's
            fingerprint, the scan's content, the latent mode, the dtype and the device type; off by
            default, because the files are derived from the scans.
    """

    def __init__(
        self,
        model: LDAEModel,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_size: int = 16,
        batch_size: int = 4,
        channels_last: bool = False,
        decode_dtype: torch.dtype | None = None,
        decoder_channels_last: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.decode_dtype = decode_dtype or dtype
        self.weight_storage = str(dtype).replace("torch.", "")  # runtime.compact_weights may make it float16
        self.conv_backend = "torch"  # runtime.onednn_convolutions makes it "onednn"
        if self.decode_dtype != dtype:
            self.model.autoencoder.post_quant_conv.to(self.decode_dtype)
            self.model.autoencoder.decoder.to(self.decode_dtype)
        self.channels_last = channels_last
        self.decoder_channels_last = channels_last if decoder_channels_last is None else decoder_channels_last
        ae = self.model.autoencoder
        if channels_last:
            for part in (ae.encoder, ae.quant_conv_mu, ae.quant_conv_log_sigma, self.model.shift_unet):
                part.to(memory_format=torch.channels_last_3d)
        if self.decoder_channels_last:
            ae.post_quant_conv.to(memory_format=torch.channels_last_3d)
            ae.decoder.to(memory_format=torch.channels_last_3d)
        self.cache_size, self.batch_size = cache_size, max(1, batch_size)
        self._cache: OrderedDict[str, Encoding] = OrderedDict()
        self.calls = {"autoencoder_encode": 0, "semantic_encode": 0, "inversion": 0, "sampling": 0, "decode": 0}
        self.store = EncodingStore(cache_dir) if cache_dir else None

    # ------------------------------------------------------------------ inputs
    def _as_input(self, x) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if t.ndim == 3:
            t = t[None, None]
        elif t.ndim == 4:
            t = t[None]
        if t.ndim != 5 or t.shape[1] != 1:
            raise LDAEError(f"expected a single-channel 3-D volume, got an array of shape {tuple(t.shape)}")
        f = self.model.config.autoencoder.downsampling
        if any(s % f for s in t.shape[2:]):
            raise LDAEError(f"model-space volumes must have sizes divisible by {f}; got {tuple(t.shape[2:])}")
        if not torch.isfinite(t).all():
            raise LDAEError("the volume contains NaN or infinite values")
        return t.to(self.device, torch.float32)

    # ------------------------------------------------------------------ stages
    def _net_in(self, x: torch.Tensor, dtype: torch.dtype | None = None, channels_last: bool | None = None) -> torch.Tensor:
        x = x.to(self.device, dtype or self.dtype)
        cl = self.channels_last if channels_last is None else channels_last
        return x.contiguous(memory_format=torch.channels_last_3d) if cl and x.ndim == 5 else x

    def _unet(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        """The ShiftUNet in the compute dtype; DDIM states and outputs stay float32."""
        eps, g = self.model.shift_unet(self._net_in(x), t, y.to(self.device, self.dtype))
        return eps.float().contiguous(), g.float().contiguous()

    def _semantic_input(self, x: torch.Tensor) -> torch.Tensor:
        """B×1×A×B×S → B×1×S×A×B: the slice stack of the model's slicing plane."""
        return slice_stack(x, self.model.config.slicing_plane)

    @torch.inference_mode()
    def embed(self, x) -> torch.Tensor:
        """Semantic code y_sem (B×E) of model-space volume(s)."""
        x = self._as_input(x)
        self.calls["semantic_encode"] += 1
        return self.model.semantic_encoder(self._semantic_input(x).to(self.dtype)).float()

    @torch.inference_mode()
    def decode(self, z0: torch.Tensor, progress: _Progress | None = None) -> torch.Tensor:
        """Scaled latents (B×C×d×h×w) → images (B×1×A×B×S), one at a time (the decoder's activations dominate memory)."""
        out = []
        for i in range(z0.shape[0]):
            if progress:
                progress.check()
            z = self.model.unscale_latent(z0[i : i + 1])
            try:
                out.append(self.model.autoencoder.decode(self._net_in(z, self.decode_dtype, self.decoder_channels_last)).float().contiguous())
            except (MemoryError, RuntimeError) as err:
                from .runtime import _is_cpu_oom, out_of_memory_error

                if _is_cpu_oom(err):
                    raise out_of_memory_error(self, "decode") from err
                raise
            self.calls["decode"] += 1
            if progress:
                progress.advance("decode")
        return torch.cat(out)

    @torch.inference_mode()
    def encode(
        self,
        x,
        steps: int | None = DEFAULT_STEPS,
        *,
        latent_seed: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        _p: _Progress | None = None,
    ) -> Encoding:
        """Encode one model-space volume (1×1×A×B×S) and invert it with ``steps`` DDIM steps.

        Deterministic by default (z0 = μ·scale). ``latent_seed`` draws the authors' sampled latent
        μ+σ·ε with ε from a generator seeded with it. ``steps=None`` skips the inversion.
        Results are cached: the same input again costs nothing.
        """
        xt = self._as_input(x)
        if xt.shape[0] != 1:
            raise LDAEError("encode takes one volume at a time")
        mode = "mean" if latent_seed is None else f"sampled(seed={latent_seed})"
        key = hashlib.sha256((content_key(xt) + mode + str(self.dtype)).encode()).hexdigest()
        enc = self._cache.get(key)
        if enc is None and self.store is not None:
            enc = self.store.load(self, key)
        need_enc = enc is None
        need_inv = steps is not None and (enc is None or steps not in enc.z_T)
        p = _p or _Progress(int(need_enc) * 2 + (steps or 0) * int(need_inv), progress, cancel)
        if need_enc:
            p.check()
            mu, sigma = self.model.autoencoder.encode(self._net_in(xt))
            mu, sigma = mu.float().contiguous(), sigma.float().contiguous()
            self.calls["autoencoder_encode"] += 1
            z = mu
            if latent_seed is not None:
                g = torch.Generator(device="cpu").manual_seed(int(latent_seed))
                z = mu + torch.randn(sigma.shape, generator=g, dtype=torch.float32).to(sigma.device) * sigma
            z0 = self.model.scale_latent(z)
            p.advance("autoencoder")
            p.check()
            y = self.embed(xt)
            p.advance("semantic encoder")
            enc = Encoding(key=key, z0=z0, y_sem=y, latent=mode)
        if need_inv:
            enc.z_T[steps] = ddim_invert(self._unet, enc.z0, enc.y_sem, ddim_schedule(steps), progress=p.stage("inversion"), cancel=p.cancel)
            self.calls["inversion"] += 1
        self._remember(enc)
        if self.store is not None and (need_enc or need_inv):
            self.store.save(self, enc)
        return enc

    def _remember(self, enc: Encoding) -> None:
        self._cache[enc.key] = enc
        self._cache.move_to_end(enc.key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _ensure(self, enc_or_x, steps: int, p: _Progress, latent_seed: int | None = None) -> Encoding:
        if isinstance(enc_or_x, Encoding):
            if steps not in enc_or_x.z_T:
                enc_or_x.z_T[steps] = ddim_invert(self._unet, enc_or_x.z0, enc_or_x.y_sem, ddim_schedule(steps), progress=p.stage("inversion"), cancel=p.cancel)
                self.calls["inversion"] += 1
                if self.store is not None:
                    self.store.save(self, enc_or_x)
            return enc_or_x
        return self.encode(enc_or_x, steps, latent_seed=latent_seed, _p=p)

    def _cost(self, enc_or_x, steps: int) -> int:
        """Network calls still needed to have an encoding with z_T at ``steps``."""
        if isinstance(enc_or_x, Encoding):
            return 0 if steps in enc_or_x.z_T else steps
        return 2 + steps  # an upper bound; cache hits make the bar jump ahead

    @torch.inference_mode()
    def sample_latents(self, z_t: torch.Tensor, y: torch.Tensor, steps: int, p: _Progress) -> torch.Tensor:
        """DDIM-sample a batch (B×C×d×h×w, B×E) in chunks of ``batch_size``."""
        from .runtime import sample_with_fallback  # CUDA out-of-memory: smaller batches, then the CPU

        sched = ddim_schedule(steps)

        def chunk(unet, z, yy):
            out = ddim_sample(unet, z, yy, sched, progress=p.stage("sampling"), cancel=p.cancel)
            self.calls["sampling"] += 1
            return out

        return sample_with_fallback(self, chunk, z_t, y, p)

    def _n_chunks(self, n: int) -> int:
        return math.ceil(n / self.batch_size)

    # ------------------------------------------------------------------ operations
    @torch.inference_mode()
    def reconstruct(self, enc_or_x, steps: int = DEFAULT_STEPS, *, latent_seed=None, progress=None, cancel=None) -> torch.Tensor:
        """Autoencode through the diffusion: invert, sample with the same y_sem, decode → 1×1×A×B×S."""
        return self.edit(enc_or_x, None, [0.0], steps, latent_seed=latent_seed, progress=progress, cancel=cancel)

    @torch.inference_mode()
    def edit(
        self,
        enc_or_x,
        direction: Direction | None,
        alphas: float | Sequence[float],
        steps: int = DEFAULT_STEPS,
        *,
        latent_seed: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        return_latents: bool = False,
    ):
        """Move y_sem along ``direction`` by each alpha and decode → len(alphas)×1×A×B×S.

        The inversion uses the unedited code (authors' manipulation). ``direction=None`` (or alpha 0
        for any direction) gives the reconstruction.
        """
        alphas = [float(a) for a in (alphas if isinstance(alphas, (list, tuple)) else [alphas])]
        n = len(alphas)
        p = _Progress(self._cost(enc_or_x, steps) + self._n_chunks(n) * steps + n, progress, cancel)
        z0, y = self._edited_latents(enc_or_x, direction, alphas, steps, p, latent_seed)
        images = self.decode(z0, p)
        return (images, z0, y) if return_latents else images

    def _edited_latents(self, enc_or_x, direction, alphas: list[float], steps: int, p: _Progress, latent_seed=None):
        """The sampled latents z0 (and codes y) of an edit at each alpha, before decoding."""
        enc = self._ensure(enc_or_x, steps, p, latent_seed)
        y = enc.y_sem.expand(len(alphas), -1)
        if direction is not None:
            y = direction.apply(y, torch.tensor(alphas))
        return self.sample_latents(enc.z_T[steps].expand(len(alphas), -1, -1, -1, -1), y, steps, p), y

    @torch.inference_mode()
    def interpolate(
        self,
        a,
        b,
        fractions: float | Sequence[float],
        steps: int = DEFAULT_STEPS,
        *,
        latent_seed: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        return_latents: bool = False,
    ):
        """Frames between two scans: LERP of y_sem, SLERP of z_T, at each fraction (0 = a, 1 = b)."""
        fr = [float(f) for f in (fractions if isinstance(fractions, (list, tuple)) else [fractions])]
        n = len(fr)
        p = _Progress(self._cost(a, steps) + self._cost(b, steps) + self._n_chunks(n) * steps + n, progress, cancel)
        ea, eb = self._ensure(a, steps, p, latent_seed), self._ensure(b, steps, p, latent_seed)
        ft = torch.tensor(fr, dtype=ea.y_sem.dtype, device=ea.y_sem.device).reshape(-1, 1)
        y = (1 - ft) * ea.y_sem + ft * eb.y_sem
        z_t = torch.cat([slerp(ea.z_T[steps], eb.z_T[steps], f) for f in fr])
        z0 = self.sample_latents(z_t, y, steps, p)
        images = self.decode(z0, p)
        return (images, z0, y, z_t) if return_latents else images

    @torch.inference_mode()
    def vary(
        self,
        enc_or_x,
        n: int,
        seed: int = 0,
        steps: int = DEFAULT_STEPS,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> torch.Tensor:
        """Stochastic variations: sample from fresh noise x_T ~ N(0, I) (seeded) with the scan's y_sem."""
        if n < 1:
            raise LDAEError("the number of variations must be at least 1")
        p = _Progress((0 if isinstance(enc_or_x, Encoding) else 2) + self._n_chunks(n) * steps + n, progress, cancel)
        enc = enc_or_x if isinstance(enc_or_x, Encoding) else self.encode(enc_or_x, None, _p=p)
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        x_t = torch.randn((n, *enc.z0.shape[1:]), generator=g, dtype=torch.float32).to(self.device)
        z0 = self.sample_latents(x_t, enc.y_sem.expand(n, -1), steps, p)
        return self.decode(z0, p)

    @torch.inference_mode()
    def sample(self, y: torch.Tensor, x_t: torch.Tensor, steps: int = DEFAULT_STEPS, *, progress=None, cancel=None) -> torch.Tensor:
        """Semantic-only generation from given noise x_T (B×C×d×h×w) and codes y (B×E) → images."""
        x_t = x_t.to(self.device, torch.float32)
        y = y.to(self.device, torch.float32)
        p = _Progress(self._n_chunks(x_t.shape[0]) * steps + x_t.shape[0], progress, cancel)
        return self.decode(self.sample_latents(x_t, y, steps, p), p)
