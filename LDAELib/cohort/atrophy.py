"""Simulated atrophy: where tissue is lost, where CSF takes its place, and how fast, by group and age.

Each *component* moves volume from a sink to a source with a smooth irrotational displacement
(``poisson_flow``): its divergence is positive in the sink (which shrinks) and negative in the
source (which grows), zero elsewhere, so the tissue in between is pushed, not created or destroyed.

=============  =========================================  ==========================================
component      sink (loses volume)                        source (gains volume)
=============  =========================================  ==========================================
ventricles     cerebral white matter, weighted towards    the ventricles: tissue is pushed outward
               the ventricles (e^(−d/20 mm))              from the CSF near the centre
hippocampus_l  left / right hippocampus (AAL × GM)        CSF and the space just outside the brain
hippocampus_r                                             near it (e^(−d/5 mm))
frontal, …     the outer half of the lobe's grey matter   sulcal CSF of the lobe and the space
(4 lobes)      (weight rising over 3 mm from the WM)      outside its surface: grey matter thins at
                                                          its outer edge
=============  =========================================  ==========================================

The amount of each component at a given age is a log-volume change ``L`` (see :class:`AtrophyModel`):
the displacement used is ``exp(Σ_k V_k · L_k · u_k)`` (scaling and squaring of a stationary velocity),
where ``u_k`` moves 1 mL and ``V_k`` is the volume of the structure the component scales, so for
small ``L`` a structure's volume changes by the factor ``e^(±L)``. Each ``u_k`` is calibrated once per
template and grid (the flow spreads part of its divergence beyond thin partial-volume structures), so
that on the template the designed change is the one measured. The volumes written to the CSV are
measured on the deformed label maps, not taken from this design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .deform import apply_affine, poisson_flow, sample, voxel_grid
from .templates import AAL_LOBES, CHANNELS, Template

LOBES = ("frontal", "temporal", "parietal", "occipital")
COMPONENTS = ("ventricles", "hippocampus_l", "hippocampus_r", *LOBES)
CEREBRAL_AAL = range(1, 91)  # AAL 91–116 are cerebellum and vermis


@dataclass
class AtrophyModel:
    """Rates of volume change, as log-volume change per year (0.01 ≈ 1 % a year).

    A healthy subject's cumulative change at age A is ``r0·(A − ref_age) + r1·(A − ref_age)²/2``
    (rate rising with age), times its own rate factor; a subject of the disease group adds
    ``disease · (years since onset)``, times its own disease factor. Ventricles grow, the others shrink.
    Cortical rates are spread over the lobes by the group's lobe weights (ageing: frontal first;
    disease: temporal and parietal, like Alzheimer's disease).
    """

    ref_age: float = 50.0
    ventricles: tuple[float, float, float] = (0.006, 0.0004, 0.04)  # r0 /yr, r1 /yr², disease /yr
    hippocampus: tuple[float, float, float] = (0.002, 0.00025, 0.04)
    cortex: tuple[float, float, float] = (0.001, 0.00012, 0.015)
    healthy_lobes: dict = field(default_factory=lambda: {"frontal": 1.3, "temporal": 1.0, "parietal": 0.9, "occipital": 0.6})
    disease_lobes: dict = field(default_factory=lambda: {"frontal": 0.6, "temporal": 1.6, "parietal": 1.3, "occipital": 0.4})

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AtrophyModel":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def log_change(self, age: float, years_since_onset: float | None, factors: dict) -> np.ndarray:
        """Designed log-volume change of every component (order of COMPONENTS) at ``age``.

        Args:
            age: years.
            years_since_onset: None for a healthy subject.
            factors: the subject's draws: ``healthy``, ``disease`` (rate factors), ``hippocampus_l``,
                ``hippocampus_r`` (side factors), ``lobes_healthy`` / ``lobes_disease`` (dicts of
                lobe factors), ``trait`` (per-component constitutional offsets, log units).
        """
        t = max(age - self.ref_age, 0.0)
        out = np.zeros(len(COMPONENTS))

        def course(rates, weight_h=1.0, weight_d=1.0):
            r0, r1, d = rates
            v = factors["healthy"] * weight_h * (r0 * t + 0.5 * r1 * t * t)
            if years_since_onset is not None:
                v += factors["disease"] * weight_d * d * max(years_since_onset, 0.0)
            return v

        out[0] = course(self.ventricles)
        for i, side in ((1, "hippocampus_l"), (2, "hippocampus_r")):
            out[i] = course(self.hippocampus, factors[side], factors[side])
        for i, lobe in enumerate(LOBES, start=3):
            wh = self.healthy_lobes[lobe] * factors["lobes_healthy"][lobe]
            wd = self.disease_lobes[lobe] * factors["lobes_disease"][lobe]
            out[i] = course(self.cortex, wh, wd)
        return out + np.asarray(factors["trait"], dtype=np.float64)


def _block_mean(channels: np.ndarray, affine: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Average ``factor``³ blocks of a (C, I, J, K) array → (smaller array, its affine)."""
    if factor == 1:
        return channels, affine
    c = channels.shape[0]
    n = [s // factor for s in channels.shape[1:]]
    x = channels[:, : n[0] * factor, : n[1] * factor, : n[2] * factor]
    x = x.reshape(c, n[0], factor, n[1], factor, n[2], factor).mean(axis=(2, 4, 6), dtype=np.float32)
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * factor
    new[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2.0) + affine[:3, 3]
    return x, new


class TemplateOnGrid:
    """A template prepared for one output grid: smoothed channels to sample from, its maps on the
    output grid, and the unit displacement field of each atrophy component.

    Attributes:
        name: the template's name.
        shape, affine: output grid (I, J, K) and its 4×4 voxel → world affine.
        source: torch (C, I', J', K') channels on the template's own grid (block-averaged on grids of
            4 mm and coarser), smoothed against aliasing.
        measure_source: torch (C − 1, I', J', K') the soft labels (no T1) smoothed further, to measure volumes.
        out_to_source: 4×4 output voxel → source voxel.
        maps: numpy (C, I, J, K) the undeformed channels on the output grid.
        unit_fields: torch (n_components, 3, I, J, K): displacement moving 1 mL, output voxel units.
        volumes_ml: V_k of every component (mL), see the module docstring.
    """

    def __init__(self, template: Template, shape, affine: np.ndarray) -> None:
        from scipy import ndimage

        self.name = template.name
        self.shape, self.affine = tuple(shape), np.asarray(affine, dtype=np.float64)
        spacing = float(np.abs(np.diag(affine)[:3]).mean())
        # Coarse grids sample a block-averaged template (factor 2 at 4 mm): the same anti-aliasing,
        # a fraction of the smoothing work.
        factor = max(1, int(spacing // 2.0))
        channels, src_affine = _block_mean(template.channels, template.affine, factor)
        src_vox = float(np.abs(np.diag(src_affine)[:3]).mean())
        sigma = 0.42 * np.sqrt(max(spacing**2 - src_vox**2, 0.0)) / src_vox  # anti-alias, in source voxels
        src = channels
        if sigma > 0.05:
            src = np.stack([ndimage.gaussian_filter(c, sigma) for c in src])
        self.source = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))
        # Volumes are measured on a smoother copy (σ = 0.6 voxel of the output grid in all): a sum of
        # samples then no longer depends on where the grid falls (the aliased part is below 0.1 %),
        # while smoothing leaves every integral, hence every volume, unchanged.
        sigma_measure = 0.6 * spacing / src_vox
        self.measure_source = torch.from_numpy(np.stack([
            ndimage.gaussian_filter(c, sigma_measure).astype(np.float32) for c in channels[1:]]))
        self.out_to_source = np.linalg.inv(src_affine) @ self.affine
        coords = apply_affine(self.out_to_source, voxel_grid(self.shape))
        self.maps = sample(self.source, coords).numpy()
        aal_coords = apply_affine(np.linalg.inv(template.affine) @ self.affine, voxel_grid(self.shape)).reshape(3, -1).numpy()
        aal = ndimage.map_coordinates(template.aal, aal_coords, order=0, mode="constant", cval=0).reshape(self.shape)
        self.voxel_ml = spacing**3 / 1000.0
        self.unit_fields, self.volumes_ml = self._components(aal, spacing)
        self.calibration = self._calibrate()

    def _components(self, aal: np.ndarray, spacing: float):
        from scipy import ndimage

        m = {c: self.maps[CHANNELS.index(c)].astype(np.float64) for c in CHANNELS[1:]}
        brain = m["gm"] + m["wm"] + m["csf"]
        # Every voxel (background included) takes the label of the nearest AAL voxel.
        _, idx = ndimage.distance_transform_edt(aal == 0, return_indices=True)
        nearest = aal[tuple(idx)]
        cerebral = np.isin(nearest, CEREBRAL_AAL)

        def dist_to(mask):
            return ndimage.distance_transform_edt(~mask) * spacing

        outside = brain < 0.5
        shell = (1.0 - brain) * (ndimage.distance_transform_edt(outside) * spacing <= 4.0)
        csf_other = np.clip(m["csf"] - m["ventricles"], 0.0, None)
        gm_other = np.clip(m["gm"] - m["hippocampus_l"] - m["hippocampus_r"], 0.0, None)
        outer_gm = gm_other * np.clip(dist_to(m["wm"] > 0.5) / 3.0, 0.0, 1.0)

        pairs, volumes = [], []
        vent = m["ventricles"]
        pairs.append((m["wm"] * cerebral * np.exp(-dist_to(vent > 0.3) / 20.0), vent))
        volumes.append(vent.sum())
        for side in ("hippocampus_l", "hippocampus_r"):
            hip = m[side]
            near = np.exp(-dist_to(hip > 0.3) / 5.0)
            pairs.append((hip, (m["csf"] + shell) * near))
            volumes.append(hip.sum())
        for lobe in LOBES:
            in_lobe = np.isin(nearest, AAL_LOBES[lobe])
            sink = outer_gm * in_lobe
            pairs.append((sink, (csf_other + shell) * in_lobe))
            volumes.append(sink.sum())
        fields = []
        for sink, source in pairs:
            s = (sink / sink.sum() - source / source.sum()) / self.voxel_ml
            fields.append(torch.from_numpy(poisson_flow(s)))
        return torch.stack(fields), np.asarray(volumes) * self.voxel_ml

    def _calibrate(self, probe=(0.3, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1)) -> np.ndarray:
        """Scale each unit field so that its designed log change is what the template shows.

        The flow spreads part of its divergence beyond the thin, partial-volume structures (about
        half of it for the hippocampus), so the raw fields under-deliver; each component is applied
        alone at a typical amount and measured: ventricles and hippocampi by their own volume, lobes
        by the grey matter lost against the designed ``V_k·L``.
        """
        from .deform import exp_velocity

        base = voxel_grid(self.shape)

        def volume(channel: str, disp=None) -> float:
            c = CHANNELS.index(channel) - 1  # measure_source has no T1 channel
            coords = apply_affine(self.out_to_source, base if disp is None else base + disp)
            return float(sample(self.measure_source[c : c + 1], coords).sum(dtype=torch.float64)) * self.voxel_ml

        ratios = np.ones(len(COMPONENTS))
        for k, (name, amount) in enumerate(zip(COMPONENTS, probe)):
            log_change = np.zeros(len(COMPONENTS))
            log_change[k] = amount
            disp = exp_velocity(self.velocity(log_change))
            if name == "ventricles":
                got = np.log(volume(name, disp) / volume(name))
            elif name.startswith("hippocampus"):
                got = -np.log(volume(name, disp) / volume(name))
            else:
                got = -np.log1p(-(volume("gm") - volume("gm", disp)) / self.volumes_ml[k])
            ratios[k] = got / amount
        if not np.all(ratios > 0.1):
            from ..errors import LDAEError

            weak = ", ".join(f"{n} ({r:.2f})" for n, r in zip(COMPONENTS, ratios) if r <= 0.1)
            raise LDAEError(f"the atrophy model cannot be calibrated on this grid: {weak} barely change; use a finer "
                            "grid (--spacing 2, the default)")
        self.unit_fields = self.unit_fields / torch.as_tensor(ratios, dtype=torch.float32).view(-1, 1, 1, 1, 1)
        return ratios

    def velocity(self, log_change: np.ndarray) -> torch.Tensor:
        """Atrophy velocity (3, I, J, K) for the designed log changes (order of COMPONENTS)."""
        w = torch.as_tensor(self.volumes_ml * np.asarray(log_change), dtype=torch.float32)
        return torch.tensordot(w, self.unit_fields, dims=1)
