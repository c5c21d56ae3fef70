"""``LDAEPipeline``: encode a scan once, then reconstruct, edit, interpolate or vary it.

Volumes here are model-space tensors B×1×A×B×S in [0, 1] (official 1×1×128×160×128, axis order as
the NIfTI stores it after stage B). Mapping files to and from model space is ``LDAELib.inference``'s
job; the networks are ``LDAELib.nets``; one DDIM step is ``LDAELib.diffusion``. The pipeline owns
running them: the inversion and sampling loops, progress and cancel, batches of latents (halved
when a GPU runs out of memory), precision and weight storage, and the cache of encodings.

An ``Encoding`` keeps what is expensive to compute for one scan: the scaled latent z0, the semantic
code y_sem and, per DDIM step count, the inverted noise z_T. The pipeline caches encodings by the
content of the input, so a second edit or interpolation of the same scan repeats neither the
encoders nor the inversion. With ``cache_dir`` the encodings are also kept on disk (opt-in: they
are data derived from the scans), so a new process, or a new Slicer session, starts warm.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..accel.memory import MemoryFallbackWarning, is_cpu_oom, is_cuda_oom, out_of_memory_error
from ..accel.onednn import onednn_convolutions
from ..accel.precision import check_device
from ..accel.weights import compact_weights
from ..diffusion.ddim import code_guided_shift, ddim_step, guided_eps, inversion_indices, sampling_indices, shift_applies, timestep
from ..diffusion.schedule import DDIMSchedule, ddim_schedule
from ..directions import Direction
from ..errors import LDAEError
from ..model import LDAEModel
from ..nets.semantic_encoder import slice_stack
from ..nets.unet import ShiftUNet
from .encoding import Encoding, EncodingStore, content_key
from .progress import CancelCallback, Progress, ProgressCallback

DEFAULT_STEPS = 10
WEIGHT_STORAGES = ("float32", "float16")
CONV_BACKENDS = ("torch", "onednn")


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
            stay float32 whatever this is, because 1/√(1/ᾱ−1) amplifies rounding.
        decode_dtype: dtype of the autoencoder's decoder (default: ``dtype``). The decoder runs once,
            after the DDIM loop, so its rounding is not amplified: bfloat16 here keeps the result
            within SSIM 0.999 of float32 while the loop stays float32 (``LDAELib.accel.precision``).
        weight_storage: "float16" keeps the float32 ShiftUNet's convolution and linear weights in
            float16 and widens them layer by layer (``accel.compact_weights``: half their memory,
            within SSIM 0.9999 of float32); "float32" (default) stores them as they compute.
        conv_backend: "onednn" routes the CPU's float32 convolutions of up to 256 input channels
            through oneDNN (``accel.onednn_convolutions``: 2.5× faster demo edits, same arithmetic in
            another summation order); "torch" (default) keeps PyTorch's dispatch, which the
            reference checks compare bit for bit.
        channels_last: run the 3-D convolutions in channels-last layout (faster on some CPUs).
        decoder_channels_last: the same for the decoder alone (default: ``channels_last``); with
            bfloat16 the decoder is 1.5× faster in it on CPUs, while float32 networks gain nothing.
        cache_size: how many scans' encodings are kept in memory (LRU).
        batch_size: how many latents go through the ShiftUNet at once (edits at several alphas,
            interpolation frames, variations). A CUDA out-of-memory halves it for the rest of the
            pipeline's life, and at 1 the batch continues on the CPU (``MemoryFallbackWarning``).
        cache_dir: also keep encodings in this folder (``EncodingStore``), keyed by the model's
            fingerprint, the scan's content, the latent mode, the dtype and the device type; off by
            default, because the files are derived from the scans.
    """

    def __init__(
        self,
        model: LDAEModel,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        decode_dtype: torch.dtype | None = None,
        *,
        weight_storage: str = "float32",
        conv_backend: str = "torch",
        channels_last: bool = False,
        decoder_channels_last: bool | None = None,
        cache_size: int = 16,
        batch_size: int = 4,
        cache_dir: str | Path | None = None,
    ) -> None:
        if weight_storage not in WEIGHT_STORAGES:
            raise LDAEError(f"unknown weight storage {weight_storage!r}; choose {' or '.join(WEIGHT_STORAGES)}")
        if conv_backend not in CONV_BACKENDS:
            raise LDAEError(f"unknown convolution backend {conv_backend!r}; choose {' or '.join(CONV_BACKENDS)}")
        try:
            device = check_device(str(torch.device(device)))
        except RuntimeError:
            raise LDAEError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.decode_dtype = decode_dtype or dtype
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
        # float16 storage only changes a float32 network; a bfloat16 one is stored as it computes.
        self.weight_storage = weight_storage if dtype == torch.float32 else str(dtype).replace("torch.", "")
        if self.weight_storage == "float16":
            compact_weights(self.model.shift_unet, torch.float16)
        self.conv_backend = "torch"
        if conv_backend == "onednn" and self.device.type == "cpu" and onednn_convolutions(self.model):
            self.conv_backend = "onednn"
        self.cache_size, self.batch_size = cache_size, max(1, batch_size)
        self._cache: OrderedDict[str, Encoding] = OrderedDict()
        self._decoder_stats: OrderedDict = OrderedDict()
        self._cpu_unet: ShiftUNet | None = None
        self.calls = {"autoencoder_encode": 0, "semantic_encode": 0, "inversion": 0, "sampling": 0, "decode": 0}
        self.store = EncodingStore(cache_dir) if cache_dir else None
        self.x0_clip = model.config.x0_clip
        self.code_guidance = model.config.code_guidance  # read once, like x0_clip: the rule of this pipeline's life
        self.code_guidance_mean_free = model.config.code_guidance_mean_free
        if model.config.guided and model.reference_code is None:
            raise LDAEError(f"the model's configuration asks for code guidance {model.config.code_guidance:g} but it has no "
                            "reference code; load it from its bundle again (the bundle holds reference_code.safetensors)")

    # ------------------------------------------------------------------ inputs
    def as_input(self, x) -> torch.Tensor:
        """A model-space volume (A×B×S, 1×A×B×S or B×1×A×B×S array or tensor) as a float32 B×1×A×B×S
        tensor on the pipeline's device, after checking it fits the model (one LDAEError otherwise)."""
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if t.ndim == 3:
            t = t[None, None]
        elif t.ndim == 4:
            t = t[None]
        if t.ndim != 5 or t.shape[1] != 1:
            raise LDAEError(f"expected a single-channel 3-D volume, got an array of shape {tuple(t.shape)}")
        f = self.model.config.autoencoder.downsampling
        if any(n % f for n in t.shape[2:]):
            raise LDAEError(f"model-space volumes must have sizes divisible by {f}; got {tuple(t.shape[2:])}")
        want = tuple(self.model.config.space.shape)
        if tuple(t.shape[2:]) != want:
            raise LDAEError(f"this model works on model-space volumes of {'×'.join(map(str, want))} voxels; got "
                            f"{'×'.join(map(str, t.shape[2:]))}. Map the scan into model space first (LDAELib.inference or LDAELib.space)")
        if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)):
            raise LDAEError(f"a volume must hold real numbers, got {t.dtype}")
        t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise LDAEError("the volume contains NaN or infinite values")
        return t.to(self.device)

    def _net_in(self, x: torch.Tensor, dtype: torch.dtype | None = None, channels_last: bool | None = None) -> torch.Tensor:
        x = x.to(self.device, dtype or self.dtype)
        cl = self.channels_last if channels_last is None else channels_last
        return x.contiguous(memory_format=torch.channels_last_3d) if cl and x.ndim == 5 else x

    def _unet(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        """The ShiftUNet in the compute dtype; DDIM states and outputs stay float32."""
        return self._eps_and_shift(self.model.shift_unet, self._net_in(x), t, y.to(self.device, self.dtype))

    def _eps_and_shift(self, unet: ShiftUNet, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        """(ε, g) of ``unet`` as float32, g code-guided around the model's reference code when its
        configuration says so (``code_guided_shift``), else g(y) as the authors compute it."""
        if self.code_guidance == 1.0:
            eps, g = unet(x, t, y)
            return eps.float().contiguous(), g.float().contiguous()
        eps, g, g_ref = unet.forward_with_reference(x, t, y, self.model.reference_code.to(y.device, y.dtype))
        return eps.float().contiguous(), code_guided_shift(g.float(), g_ref.float(), self.code_guidance,
                                                               self.code_guidance_mean_free).contiguous()

    # ------------------------------------------------------------------ networks
    @torch.inference_mode()
    def embed(self, x) -> torch.Tensor:
        """Semantic code y_sem (B×E) of model-space volume(s)."""
        x = self.as_input(x)
        self.calls["semantic_encode"] += 1
        return self.model.semantic_encoder(slice_stack(x, self.model.config.slicing_plane).to(self.dtype)).float()

    def _decoder_input(self, z0: torch.Tensor) -> torch.Tensor:
        """Scaled latents → the decoder's input: unscaled, in its dtype and layout."""
        return self._net_in(self.model.unscale_latent(z0), self.decode_dtype, self.decoder_channels_last)

    @torch.inference_mode()
    def decode(self, z0: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Scaled latents (B×C×d×h×w) → images (B×1×A×B×S), one at a time (the decoder's activations dominate memory)."""
        out = []
        for i in range(z0.shape[0]):
            if progress:
                progress.check()
            try:
                out.append(self.model.autoencoder.decode(self._decoder_input(z0[i : i + 1])).float().contiguous())
            except (MemoryError, RuntimeError) as err:
                if is_cpu_oom(err):
                    raise out_of_memory_error(self.model.config, self.dtype, self.decode_dtype, "decode") from err
                raise
            self.calls["decode"] += 1
            if progress:
                progress.advance("decode")
        return torch.cat(out)

    # ------------------------------------------------------------------ DDIM loops
    def _invert(self, z0: torch.Tensor, y: torch.Tensor, sched: DDIMSchedule, p: Progress) -> torch.Tensor:
        """Deterministic inversion z0 (state at k=0) → z_T (state at k=N): N ShiftUNet calls."""
        x = z0
        for k in inversion_indices(sched):
            p.check()
            eps, g = self._unet(x, timestep(sched, k, x.shape[0], x.device), y)
            x = ddim_step(x, guided_eps(eps, g, k, sched), k, sched, inverse=True, clip=self.x0_clip)
            p.advance("inversion")
        self.calls["inversion"] += 1
        return x

    def _sample(self, unet, z_t: torch.Tensor, y: torch.Tensor, sched: DDIMSchedule, p: Progress) -> torch.Tensor:
        """Deterministic sampling z_T (k=N) → ẑ0 (k=0) of one batch with ``unet``: N calls."""
        x = z_t
        for k in sampling_indices(sched):
            p.check()
            eps, g = unet(x, timestep(sched, k, x.shape[0], x.device), y)
            eps = guided_eps(eps, g, k, sched) if shift_applies(k, sched) else eps
            x = ddim_step(x, eps, k, sched, inverse=False, clip=self.x0_clip)
            p.advance("sampling")
        self.calls["sampling"] += 1
        return x

    def _cpu_shift_unet(self) -> ShiftUNet:
        """A CPU copy of the ShiftUNet (float32, or bfloat16 if the networks are bfloat16), built from
        CPU copies of its tensors one by one (no second copy on the GPU), kept for reuse."""
        if self._cpu_unet is None:
            dt = torch.bfloat16 if self.dtype == torch.bfloat16 else torch.float32
            unet = ShiftUNet(self.model.config.unet).eval()
            unet.load_state_dict({k: v.detach().to("cpu", dt) for k, v in self.model.shift_unet.state_dict().items()})
            unet.to(dt)
            for q in unet.parameters():
                q.requires_grad_(False)
            self._cpu_unet = unet
        return self._cpu_unet

    @torch.inference_mode()
    def sample_latents(self, z_t: torch.Tensor, y: torch.Tensor, steps: int, p: Progress) -> torch.Tensor:
        """DDIM-sample a batch (B×C×d×h×w, B×E) in chunks of ``batch_size``.

        A CUDA out-of-memory in a chunk halves the batch size (kept for the rest of the pipeline's
        life) and retries; at batch size 1 the chunk runs on the CPU. Each fallback warns
        (``MemoryFallbackWarning``) in one plain sentence. On the CPU, running out of memory raises
        an LDAEError with the estimated need."""
        sched = ddim_schedule(steps)
        outs, i, n = [], 0, z_t.shape[0]
        on_cpu = False
        while i < n:
            bs = self.batch_size
            done = p.done
            try:
                if on_cpu:
                    unet = self._cpu_shift_unet()
                    dt = next(unet.parameters()).dtype

                    def cpu_fn(x, t, yy, unet=unet, dt=dt):
                        return self._eps_and_shift(unet, x.to("cpu", dt), t.to("cpu"), yy.to("cpu", dt))

                    out = self._sample(cpu_fn, z_t[i : i + bs].to("cpu"), y[i : i + bs].to("cpu"), sched, p).to(z_t.device)
                else:
                    out = self._sample(self._unet, z_t[i : i + bs], y[i : i + bs], sched, p)
            except Exception as err:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
                if is_cuda_oom(err) and not on_cpu:
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    p.done = done
                    if bs > 1:
                        self.batch_size = max(1, bs // 2)
                        warnings.warn(f"the GPU ran out of memory with {bs} latents at once; retrying with "
                                      f"{self.batch_size} at a time", MemoryFallbackWarning, stacklevel=3)
                    else:
                        on_cpu = True
                        warnings.warn("the GPU ran out of memory even with one latent at a time; this part of the "
                                      "operation continues on the CPU (slower)", MemoryFallbackWarning, stacklevel=3)
                    continue
                if is_cpu_oom(err):
                    raise out_of_memory_error(self.model.config, self.dtype, self.decode_dtype, "DDIM sampling", bs) from err
                raise
            outs.append(out)
            i += bs
        return torch.cat(outs)

    # ------------------------------------------------------------------ encodings
    @torch.inference_mode()
    def encode(
        self,
        x,
        steps: int | None = DEFAULT_STEPS,
        *,
        latent_seed: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        _p: Progress | None = None,
    ) -> Encoding:
        """Encode one model-space volume (1×1×A×B×S) and invert it with ``steps`` DDIM steps.

        Deterministic by default (z0 from μ). ``latent_seed`` draws the authors' sampled latent
        μ+σ·ε with ε from a generator seeded with it. ``steps=None`` skips the inversion.
        Results are cached: the same input again costs nothing.
        """
        xt = self.as_input(x)
        if xt.shape[0] != 1:
            raise LDAEError("encode takes one volume at a time")
        if steps is not None:
            _check_steps(steps)
        mode = "mean" if latent_seed is None else f"sampled(seed={latent_seed})"
        key = hashlib.sha256((content_key(xt) + mode + str(self.dtype)).encode()).hexdigest()
        enc = self._cache.get(key)
        if enc is None and self.store is not None:
            enc = self.store.load(self, key)
        need_enc = enc is None
        need_inv = steps is not None and (enc is None or steps not in enc.z_T)
        p = _p or Progress(int(need_enc) * 2 + (steps or 0) * int(need_inv), progress, cancel)
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
            enc.z_T[steps] = self._invert(enc.z0, enc.y_sem, ddim_schedule(steps), p)
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
        self._decoder_stats.clear()

    def ensure(self, enc_or_x, steps: int | None, p: Progress, latent_seed: int | None = None) -> Encoding:
        """An encoding of ``enc_or_x`` (an Encoding or a model-space volume) inverted at ``steps``."""
        if isinstance(enc_or_x, Encoding):
            if steps is not None and steps not in enc_or_x.z_T:
                enc_or_x.z_T[steps] = self._invert(enc_or_x.z0, enc_or_x.y_sem, ddim_schedule(steps), p)
                if self.store is not None:
                    self.store.save(self, enc_or_x)
            return enc_or_x
        return self.encode(enc_or_x, steps, latent_seed=latent_seed, _p=p)

    def encode_cost(self, enc_or_x, steps: int | None) -> int:
        """Network calls still needed to have an encoding with z_T at ``steps`` (an upper bound for a
        volume: cache hits make the bar jump ahead)."""
        if isinstance(enc_or_x, Encoding):
            return 0 if steps is None or steps in enc_or_x.z_T else steps
        return 2 + (steps or 0)

    def sample_cost(self, n: int, steps: int) -> int:
        """Network calls of sampling and decoding ``n`` latents: ⌈n / batch⌉ × steps + n decodes."""
        return math.ceil(n / self.batch_size) * steps + n

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
        alphas = _numbers(alphas, "alpha")
        if direction is not None and not isinstance(direction, Direction):
            raise LDAEError(f"direction must be a Direction (e.g. model.directions['{direction}']), not {type(direction).__name__}")
        p = Progress(self.encode_cost(enc_or_x, steps) + self.sample_cost(len(alphas), steps), progress, cancel)
        z0, y = self.edited_latents(enc_or_x, direction, alphas, steps, p, latent_seed)
        images = self.decode(z0, p)
        return (images, z0, y) if return_latents else images

    def edited_latents(self, enc_or_x, direction, alphas: list[float], steps: int, p: Progress, latent_seed=None):
        """The sampled latents z0 (and codes y) of an edit at each alpha, before decoding."""
        _check_steps(steps)
        enc = self.ensure(enc_or_x, steps, p, latent_seed)
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
        fr = _numbers(fractions, "fraction")
        _check_steps(steps)
        p = Progress(self.encode_cost(a, steps) + self.encode_cost(b, steps) + self.sample_cost(len(fr), steps), progress, cancel)
        ea, eb = self.ensure(a, steps, p, latent_seed), self.ensure(b, steps, p, latent_seed)
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
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise LDAEError(f"the number of variations must be a whole number ≥ 1, got {n!r}")
        _check_steps(steps)
        p = Progress(self.encode_cost(enc_or_x, None) + self.sample_cost(n, steps), progress, cancel)
        enc = self.ensure(enc_or_x, None, p)
        g = torch.Generator(device="cpu").manual_seed(_seed(seed))
        x_t = torch.randn((n, *enc.z0.shape[1:]), generator=g, dtype=torch.float32).to(self.device)
        z0 = self.sample_latents(x_t, enc.y_sem.expand(n, -1), steps, p)
        return self.decode(z0, p)

    @torch.inference_mode()
    def sample(self, y: torch.Tensor, x_t: torch.Tensor, steps: int = DEFAULT_STEPS, *, progress=None, cancel=None) -> torch.Tensor:
        """Semantic-only generation from given noise x_T (B×C×d×h×w) and codes y (B×E) → images."""
        _check_steps(steps)
        x_t = x_t.to(self.device, torch.float32)
        y = y.to(self.device, torch.float32)
        if x_t.shape[0] != y.shape[0]:
            raise LDAEError(f"give one code per noise tensor: {y.shape[0]} codes for {x_t.shape[0]} noise tensors")
        p = Progress(self.sample_cost(x_t.shape[0], steps), progress, cancel)
        return self.decode(self.sample_latents(x_t, y, steps, p), p)

    # ------------------------------------------------------------------ slabs (previews of a few slices)
    @torch.inference_mode()
    def decode_slab(self, z0: torch.Tensor, axis: int, index_range: tuple[int, int], stats=None, exact_levels: int = 0) -> torch.Tensor:
        """Decode model-space slices [start, stop) along ``axis`` (0, 1, 2 = A, B, S) of the scaled
        latents z0 → B×1×…×(stop−start)×… (``nets.slab.decode_slab``, in the decoder's dtype and layout)."""
        from ..nets.slab import decode_slab

        z = self.model.unscale_latent(z0).to(self.device, self.decode_dtype)
        return decode_slab(self.model.autoencoder, z, axis, index_range, stats, exact_levels, self.decoder_channels_last)

    @torch.inference_mode()
    def decoder_stats(self, z0: torch.Tensor):
        """Full decode of scaled latents z0 recording every decoder GroupNorm's statistics → (images, stats)."""
        from ..nets.slab import record_decoder_stats

        images, stats = record_decoder_stats(self.model.autoencoder, self._decoder_input(z0))
        self.calls["decode"] += z0.shape[0]
        return images, stats

    def source_stats(self, enc: Encoding, steps: int | None = None, cache_size: int = 4):
        """GroupNorm statistics of a full decode of the scan: of its latent z0 (the autoencoder
        reconstruction; one decode) or, with ``steps``, of its DDIM reconstruction at that step count
        (``steps`` ShiftUNet calls more, closer to an edit's sampling path). Computed once per scan,
        kind and decode dtype and kept (LRU of ``cache_size``)."""
        key = (enc.key, steps, str(self.decode_dtype))
        if key not in self._decoder_stats:
            if steps is None:
                z = enc.z0
            else:
                p = Progress(steps)
                self.ensure(enc, steps, p)
                z = self.sample_latents(enc.z_T[steps], enc.y_sem, steps, p)
            self._decoder_stats[key] = self.decoder_stats(z)[1]
            while len(self._decoder_stats) > cache_size:
                self._decoder_stats.popitem(last=False)
        self._decoder_stats.move_to_end(key)
        return self._decoder_stats[key]

    def edit_preview(self, enc_or_x, direction, alphas, steps: int, slabs, **kwargs):
        """An edit decoded only on model-space slabs (axis, start, stop): ``pipeline.preview.preview_slabs``."""
        from .preview import preview_slabs

        return preview_slabs(self, enc_or_x, direction, alphas, steps, slabs, **kwargs)


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= 999:
        raise LDAEError(f"steps must be a whole number from 1 to 999 (DDIM steps each way), got {steps!r}")


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise LDAEError(f"a seed must be a whole number from 0 to 2**63 − 1, got {seed!r}")
    return int(seed)


def _numbers(values, what: str) -> list[float]:
    """Alphas or fractions: one number or a non-empty sequence of finite numbers."""
    seq = values if isinstance(values, (list, tuple, np.ndarray, torch.Tensor)) else [values]
    out = []
    for v in seq:
        if isinstance(v, (str, bytes, bool)) or v is None:
            raise LDAEError(f"each {what} must be a number, got {v!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise LDAEError(f"each {what} must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise LDAEError(f"each {what} must be a finite number, got {v!r}")
        out.append(f)
    if not out:
        raise LDAEError(f"give at least one {what}")
    return out
