"""The operations every front end runs: reconstruct, edit (and its preview), interpolate, vary, embed.

``Inference`` holds a model, its pipeline and the ``RunSettings``. It takes scans (``Image`` or a
path), brings each into model space once (``inference.space``; kept for the next operation on the
same file), runs the pipeline, and returns ``Output``s: each result on its source's grid with its
provenance record (``inference.provenance``). It writes nothing: the command line and ``ldae batch``
publish outputs with ``outputs.OutputSet``, the Slicer worker hands them to Slicer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..accel.precision import preview_sampling_dtype
from ..directions import Direction
from ..directions.files import load_direction
from ..errors import Cancelled, LDAEError
from ..pipeline import Phases
from .image import Image, read_image
from .provenance import input_record, provenance
from .settings import RunSettings
from . import space as input_space
from .space import PreparedInput, to_model

PLANE_NORMALS = {"sagittal": 0, "coronal": 1, "axial": 2}
"""The RAS axis each slice view's plane is normal to (Slicer's Yellow, Green and Red views)."""
MAX_VARIATIONS = 64


@dataclass
class Output:
    """One result: ``data`` on its source's grid (float32 I,J,K; write it ``like`` the source) and its
    provenance. ``model_space``: the model-space result (A,B,S), for ``--model-space-output``.
    ``kind``: reconstruction, edit, preview, interpolation, variation, spread or reference."""

    kind: str
    data: np.ndarray
    like: Image
    provenance: dict
    model_space: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Source:
    """A scan in model space, with what later operations on it reuse."""

    prepared: PreparedInput
    record: dict
    encodings: dict = field(default_factory=dict)
    references: OrderedDict = field(default_factory=OrderedDict)
    slab_masks: dict = field(default_factory=dict)

    @property
    def image(self) -> Image:
        return self.prepared.image

    def keep_reference(self, key, data: np.ndarray, size: int = 3) -> np.ndarray:
        self.references[key] = data
        while len(self.references) > size:
            self.references.popitem(last=False)
        return data


class Inference:
    """Operations on files or images with one model and pipeline (see the module's docstring).

    stage_a: ``registration.StageASettings`` for raw scans; stage_a_cache: a ``StageACache`` (made
    on first use of a raw scan when None); sources: how many prepared scans are kept.
    """

    def __init__(self, model, pipeline, settings: RunSettings, *, stage_a=None, stage_a_cache=None, sources: int = 8) -> None:
        self.model, self.pipe, self.settings = model, pipeline, settings
        self.stage_a = stage_a
        self._shared = {"stage_a_cache": stage_a_cache}  # shared with ``using`` copies
        self._sources: OrderedDict[tuple, Source] = OrderedDict()
        self._max_sources = sources

    def using(self, settings: RunSettings) -> "Inference":
        """The same model, pipeline and prepared scans with other settings (e.g. a batch row's own
        steps and seed); scans prepared for one input space are not reused for another."""
        other = Inference(self.model, self.pipe, settings, stage_a=self.stage_a, sources=self._max_sources)
        other._sources, other._shared = self._sources, self._shared
        return other

    # ------------------------------------------------------------------ inputs
    def _stage_a_cache_for(self):
        if self._shared["stage_a_cache"] is None:
            self._shared["stage_a_cache"] = input_space.registration_api()[2]()
        return self._shared["stage_a_cache"]

    def source(self, scan: Image | str | Path, *, key: str | None = None, progress=None, cancel=None) -> Source:
        """``scan`` in model space (kept: the same file or key again costs nothing)."""
        kind = self.settings.input_space
        if isinstance(scan, Image):
            if key is None:
                import hashlib

                key = "image:" + hashlib.sha256(np.ascontiguousarray(scan.data).tobytes() + scan.affine.tobytes()).hexdigest()
            cache_key = (key, kind)
            image = scan
        else:
            path = Path(scan)
            try:
                st = path.stat()
            except OSError:
                raise LDAEError(f"input not found: {path}") from None
            cache_key = (key or str(path.resolve()), st.st_size, st.st_mtime_ns, kind)
            image = None
        if cache_key in self._sources:
            self._sources.move_to_end(cache_key)
            return self._sources[cache_key]
        image = image or read_image(scan)
        cache = self._stage_a_cache_for() if kind == "raw" else None
        stage_progress = None
        if progress is not None:
            def stage_progress(done, total, stage):
                progress(done, total, stage if stage.startswith("registration") else f"registration: {stage}")
        prepared = to_model(image, kind, self.model.config.space, stage_a=self.stage_a, cache=cache, progress=stage_progress, cancel=cancel)
        record = input_record(image.path) if image.path is not None else {"path": None, "sha256": None}
        src = Source(prepared, record)
        self._sources[cache_key] = src
        while len(self._sources) > self._max_sources:
            self._sources.popitem(last=False)
        return src

    def direction(self, spec) -> Direction:
        """A direction of the model by name, a ``Direction``, or a probe file (.safetensors)."""
        if isinstance(spec, Direction):
            return spec
        if isinstance(spec, dict) and spec.get("file"):
            return load_direction(spec["file"])
        if isinstance(spec, str) and spec in self.model.directions:
            return self.model.directions[spec]
        if isinstance(spec, (str, Path)) and (str(spec).endswith(".safetensors") or Path(spec).is_file()):
            return load_direction(spec)
        names = ", ".join(sorted(self.model.directions)) or "none"
        raise LDAEError(f"unknown direction {spec!r}; this model has: {names} (or give a probe file .safetensors)")

    # ------------------------------------------------------------------ pieces
    def _encode_cost(self, src: Source, steps: int | None) -> int:
        enc = src.encodings.get(self.settings.latent_seed)
        return self.pipe.encode_cost(enc if enc is not None else src.prepared.x, steps)

    def _encoding(self, src: Source, steps: int | None, phases: Phases, cancel):
        """The scan's pipeline Encoding (inverted at ``steps``), counted into ``phases``."""
        seed = self.settings.latent_seed
        callback = phases.phase(self._encode_cost(src, steps))
        enc = src.encodings.get(seed)
        if enc is None or (steps is not None and steps not in enc.z_T):
            enc = self.pipe.encode(src.prepared.x, steps, latent_seed=seed, progress=callback, cancel=cancel)
            src.encodings[seed] = enc
        return enc

    def _record(self, operation: str, sources: list[Source], **extra) -> dict:
        return provenance(self.model, self.pipe, self.settings, operation, [s.record for s in sources], **extra)

    def _output(self, kind: str, images: torch.Tensor, row: int, src: Source, prov: dict, **meta) -> Output:
        x = images[row, 0].detach().float().cpu().numpy()
        return Output(kind, src.prepared.to_source(x), src.image, prov, x, meta)

    # ------------------------------------------------------------------ operations
    def reconstruct(self, scan, *, key=None, progress=None, cancel=None) -> list[Output]:
        """The scan through the diffusion and back (invert, sample with its own code, decode)."""
        return self.edit(scan, None, [0.0], key=key, progress=progress, cancel=cancel)

    def edit(self, scan, direction, alphas: Sequence[float], *, reference: bool = False, key=None,
             progress=None, cancel=None) -> list[Output]:
        """The scan moved along ``direction`` by each alpha (``direction=None``: its reconstruction).
        ``reference``: also its reconstruction (kind "reference"), the reference of a difference
        map that shows the edit's own change; computed once per scan and step count."""
        steps = self.settings.steps
        d = self.direction(direction) if direction is not None else None
        alphas = _finite(alphas, "alpha")
        src = self.source(scan, key=key, progress=progress, cancel=cancel)
        ref_key = (steps, self.settings.latent_seed, None)
        want_ref = reference and d is not None and ref_key not in src.references
        phases = Phases(progress, self._encode_cost(src, steps) + self.pipe.sample_cost(len(alphas), steps)
                        + (self.pipe.sample_cost(1, steps) if want_ref else 0))
        enc = self._encoding(src, steps, phases, cancel)
        images = self.pipe.edit(enc, d, alphas, steps, progress=phases.phase(self.pipe.sample_cost(len(alphas), steps)), cancel=cancel)
        outputs = []
        for i, a in enumerate(alphas):
            if d is None:
                prov = self._record("reconstruct", [src], description=f"LDAE reconstruction T={steps}")
                outputs.append(self._output("reconstruction", images, i, src, prov))
            else:
                prov = self._record("edit", [src], description=f"LDAE {d.name} alpha={a:+g} T={steps}", direction=d.name,
                                    direction_meaning=d.describe(), alpha=a)
                outputs.append(self._output("edit", images, i, src, prov, alpha=a))
        if reference and d is not None:
            if want_ref:  # the same sampling as a reconstruction
                recon = self.pipe.edit(enc, None, [0.0], steps, progress=phases.phase(self.pipe.sample_cost(1, steps)), cancel=cancel)
                src.keep_reference(ref_key, self._output("reference", recon, 0, src,
                                                         self._record("reconstruct", [src], description=f"LDAE reconstruction T={steps}")))
            outputs.append(src.references[ref_key])
        return outputs

    def prepare_previews(self, scan, preview_steps: int | None = None, *, key=None, progress=None, cancel=None) -> None:
        """Encode the scan (and invert it at ``settings.steps``) ahead of edits; with
        ``preview_steps`` also what previews of the slices on screen need: the inversion at that
        step count and the GroupNorm statistics of the slab decode."""
        from ..nets.slab import has_attention

        steps = self.settings.steps
        if preview_steps is not None and (isinstance(preview_steps, bool) or not isinstance(preview_steps, int) or not 1 <= preview_steps <= 999):
            raise LDAEError(f"preview_steps must be a whole number from 1 to 999, got {preview_steps!r}")
        src = self.source(scan, key=key, progress=progress, cancel=cancel)
        phases = Phases(progress, self._encode_cost(src, steps) + (preview_steps or 0) + (1 if preview_steps else 0))
        enc = self._encoding(src, steps, phases, cancel)
        if preview_steps:
            if preview_steps not in enc.z_T:
                enc = self._encoding(src, preview_steps, phases, cancel)
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            if not has_attention(self.model.autoencoder):
                self.pipe.source_stats(enc, preview_steps)
            phases.phase(1)(1, 1, "preview statistics")

    def edit_preview(self, scan, direction, alphas: Sequence[float], point_ras, planes: Sequence[str], *,
                     preview_dtype: str = "float32", reference: bool = False, key=None, progress=None, cancel=None):
        """An edit previewed on the slices on screen → (outputs, slabs). Only the model slabs under the
        views' planes through ``point_ras`` are decoded (``pipeline.preview``), with the GroupNorm
        statistics of the decode of the scan's DDIM reconstruction at the same step count; every
        source voxel outside the slabs keeps the source's value, so nothing there passes for a result."""
        steps = self.settings.steps
        d = self.direction(direction)
        alphas = _finite(alphas, "alpha")
        if not (isinstance(point_ras, (list, tuple)) and len(point_ras) == 3 and all(isinstance(v, (int, float)) for v in point_ras)):
            raise LDAEError("a preview region needs a point [R, A, S] in mm")
        if not planes or any(p not in PLANE_NORMALS for p in planes):
            raise LDAEError(f"a preview region needs planes among {', '.join(PLANE_NORMALS)}")
        autocast = preview_sampling_dtype(str(self.pipe.device), preview_dtype or "float32")
        src = self.source(scan, key=key, progress=progress, cancel=cancel)
        prep = src.prepared
        found = []
        for plane in dict.fromkeys(planes):
            slab = visible_slab(plane, point_ras, prep.image.shape, prep.image.affine, prep.ras_to_model, self.model.config.space.shape)
            if slab is not None and slab not in [s for _, s in found]:
                found.append((plane, slab))
        if not found:
            raise LDAEError("the slices on screen do not cross the model's field of view; move them into the brain")
        mask_key = tuple(s for _, s in found)
        ref_key = (steps, self.settings.latent_seed, mask_key, autocast is not None)
        want_ref = reference and ref_key not in src.references
        run_alphas = alphas + [0.0] if want_ref else alphas  # the reconstruction's slabs ride along in the same batch
        n = len(run_alphas)
        cost = self._encode_cost(src, steps) + self.pipe.sample_cost(n, steps) + n * (len(found) - 1)
        phases = Phases(progress, cost)
        enc = self._encoding(src, steps, phases, cancel)
        previews = self.pipe.edit_preview(enc, d, run_alphas, steps, [s for _, s in found], autocast=autocast, stats="reconstruction",
                                          progress=phases.phase(cost - self._encode_cost(src, steps)), cancel=cancel)
        where = []
        for pv in previews:
            index = [slice(None)] * 3
            index[pv.axis] = slice(pv.start, pv.stop)
            where.append(tuple(index))
        if mask_key not in src.slab_masks:  # the same views while dragging: computed once
            inside = np.zeros(prep.x.shape, dtype=np.float32)
            for index in where:
                inside[index] = 1.0
            src.slab_masks = {mask_key: prep.to_source(inside, rescale_intensity=False, order=0) > 0.5}
        inside = src.slab_masks[mask_key]

        def on_source_grid(i: int) -> np.ndarray:
            vol = np.array(prep.x, dtype=np.float32, copy=True)
            for index, pv in zip(where, previews):
                vol[index] = pv.image[i, 0].detach().float().cpu().numpy()
            return np.where(inside, prep.to_source(vol), prep.image.data)

        slabs = [{"plane": plane, "axis": ax, "start": s0, "stop": s1} for plane, (ax, s0, s1) in found]
        preview = {"kind": "slices on screen", "slabs": slabs, "groupnorm_stats": previews[0].stats,
                   "sampling_dtype": "bfloat16" if autocast is not None else "float32", "outside_slabs": "source"}
        outputs = []
        for i, a in enumerate(alphas):
            prov = self._record("edit", [src], description=f"LDAE preview {d.name} alpha={a:+g} T={steps}", direction=d.name,
                                direction_meaning=d.describe(), alpha=a, preview=preview)
            outputs.append(Output("preview", on_source_grid(i), src.image, prov, None, {"alpha": a}))
        if reference:  # outside the slabs the reference is the source, as the preview is
            if want_ref:
                prov = self._record("reconstruct", [src], description=f"LDAE preview reconstruction T={steps}", preview=preview)
                src.keep_reference(ref_key, Output("reference", on_source_grid(len(alphas)), src.image, prov))
            outputs.append(src.references[ref_key])
        return outputs, slabs

    def interpolate(self, scan_a, scan_b, fractions: Sequence[float], *, keys=(None, None), progress=None, cancel=None) -> list[Output]:
        """Frames between two scans (LERP of y_sem, SLERP of the inverted noise), on the first scan's grid."""
        steps = self.settings.steps
        fractions = _finite(fractions, "fraction")
        if any(not (-0.5 <= f <= 1.5) for f in fractions):
            raise LDAEError("fractions should lie between 0 and 1 (mild extrapolation down to −0.5 and up to 1.5 is allowed)")
        sa = self.source(scan_a, key=keys[0], progress=progress, cancel=cancel)
        sb = self.source(scan_b, key=keys[1], progress=progress, cancel=cancel)
        phases = Phases(progress, self._encode_cost(sa, steps) + self._encode_cost(sb, steps) + self.pipe.sample_cost(len(fractions), steps))
        ea = self._encoding(sa, steps, phases, cancel)
        eb = self._encoding(sb, steps, phases, cancel)
        images = self.pipe.interpolate(ea, eb, fractions, steps, progress=phases.phase(self.pipe.sample_cost(len(fractions), steps)), cancel=cancel)
        return [self._output("interpolation", images, i, sa,
                             self._record("interpolate", [sa, sb], description=f"LDAE interpolation t={f:.2f} T={steps}", fraction=f),
                             fraction=f)
                for i, f in enumerate(fractions)]

    def vary(self, scan, n: int, *, spread: bool = False, key=None, progress=None, cancel=None) -> list[Output]:
        """``n`` stochastic variations sharing the scan's semantic code (seeded by ``settings.seed``);
        ``spread``: also their voxel-wise standard deviation (kind "spread")."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_VARIATIONS:
            raise LDAEError(f"the number of variations must be a whole number from 1 to {MAX_VARIATIONS}, got {n!r}")
        steps, vseed = self.settings.steps, self.settings.variation_seed
        src = self.source(scan, key=key, progress=progress, cancel=cancel)
        phases = Phases(progress, self._encode_cost(src, None) + self.pipe.sample_cost(n, steps))
        enc = self._encoding(src, None, phases, cancel)
        images = self.pipe.vary(enc, n, seed=vseed, steps=steps, progress=phases.phase(self.pipe.sample_cost(n, steps)), cancel=cancel)
        outputs = [self._output("variation", images, i, src,
                                self._record("vary", [src], description=f"LDAE variation {i} seed={vseed} T={steps}", index=i, variation_seed=vseed),
                                index=i)
                   for i in range(n)]
        if spread:
            sd = np.std(np.stack([o.data for o in outputs]), axis=0).astype(np.float32)
            prov = self._record("vary", [src], description=f"LDAE voxel-wise std of {n} variations", n=n, variation_seed=vseed, spread=True)
            outputs.append(Output("spread", sd, src.image, prov, None, {"n": n}))
        return outputs

    def embed(self, scans: Sequence, *, progress=None, cancel=None) -> tuple[np.ndarray, list[dict]]:
        """Semantic codes y_sem (N×E float32) of the scans, and the provenance of each."""
        rows, records = [], []
        for scan in scans:
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            src = self.source(scan, progress=progress, cancel=cancel)
            rows.append(self.pipe.embed(src.prepared.x)[0].float().cpu().numpy())
            records.append(self._record("embed", [src], description="LDAE semantic code y_sem", dimensions=int(rows[-1].shape[0])))
        return np.stack(rows), records


def _finite(values, what: str) -> list[float]:
    seq = values if isinstance(values, (list, tuple, np.ndarray)) else [values]
    out = []
    for v in seq:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise LDAEError(f"each {what} must be a number, got {v!r}") from None
        if isinstance(v, (bool, str)) or not np.isfinite(f):
            raise LDAEError(f"each {what} must be a finite number, got {v!r}")
        out.append(f)
    if not out:
        raise LDAEError(f"give at least one {what}")
    return out


def visible_slab(plane: str, point_ras, source_shape, source_affine, ras_to_model, model_shape,
                 margin: int = 1, samples: int = 33) -> tuple[int, int, int] | None:
    """The model-space slab (axis, start, stop) under one slice view.

    A view of ``plane`` ("axial", "coronal", "sagittal") shows the plane through ``point_ras`` (its
    slice offset) across the source volume. Points of that plane inside the source volume are
    mapped to model-space voxel coordinates by ``ras_to_model`` (N×3 RAS mm → N×3 continuous
    indices); the slab is the model axis along which they spread least, over their extent plus
    ``margin`` voxels (for the trilinear resampling back). None when the plane misses the source
    or the model's field of view."""
    if plane not in PLANE_NORMALS:
        raise LDAEError(f"plane must be one of {', '.join(PLANE_NORMALS)}; got {plane!r}")
    k = PLANE_NORMALS[plane]
    aff = np.asarray(source_affine, dtype=np.float64)
    shape = np.asarray(source_shape[:3], dtype=np.float64)
    corners = np.array([[i, j, l] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for l in (-0.5, shape[2] - 0.5)])
    ras_corners = corners @ aff[:3, :3].T + aff[:3, 3]
    lo, hi = ras_corners.min(0), ras_corners.max(0)
    u, v = [a for a in range(3) if a != k]
    gu, gv = np.meshgrid(np.linspace(lo[u], hi[u], samples), np.linspace(lo[v], hi[v], samples), indexing="ij")
    pts = np.zeros((gu.size, 3))
    pts[:, u], pts[:, v], pts[:, k] = gu.ravel(), gv.ravel(), float(np.asarray(point_ras, dtype=np.float64)[k])
    ijk = np.linalg.solve(aff, np.c_[pts, np.ones(len(pts))].T).T[:, :3]
    pts = pts[np.all((ijk >= -0.5) & (ijk <= shape - 0.5), axis=1)]
    if not len(pts):
        return None
    m = np.asarray(ras_to_model(pts), dtype=np.float64)
    ms = np.asarray(model_shape[:3], dtype=np.float64)
    m = m[np.all((m >= -0.5) & (m <= ms - 0.5), axis=1)]
    if not len(m):
        return None
    axis = int(np.argmin(m.max(0) - m.min(0)))
    start = max(0, int(np.floor(m[:, axis].min())) - margin)
    stop = min(int(ms[axis]), int(np.floor(m[:, axis].max())) + 1 + margin + 1)
    return axis, start, stop
