"""The report's PNG figures (matplotlib, imported only here and only when a report is written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LDAEError
from .similarity import as_volume


def require_matplotlib():
    """matplotlib.pyplot with the non-interactive Agg backend, or one clear error."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise LDAEError("ldae evaluate draws its figures with matplotlib, which is not installed: pip install matplotlib "
                        "(or pip install -e \".[eval]\")") from None
    return plt


def _slices(v: np.ndarray, centre) -> list[np.ndarray]:
    """Sagittal, coronal, axial slices through ``centre`` (I,J,K), oriented for display (superior / anterior up)."""
    i, j, k = centre
    return [np.rot90(v[i, :, :]), np.rot90(v[:, j, :]), np.rot90(v[:, :, k])]


def roi_centre(mask: np.ndarray | None, shape) -> tuple[int, int, int]:
    if mask is not None and mask.any():
        return tuple(int(round(c)) for c in np.argwhere(mask).mean(0))
    return tuple(n // 2 for n in shape)


def reconstruction_figure(path: Path, rows: list[tuple[str, np.ndarray]], reference: np.ndarray, centre, title: str) -> None:
    """Rows of images (input, reconstructions…) and, after each non-input row, its difference from the input."""
    plt = require_matplotlib()
    ref = as_volume(reference, np.float32)
    panels = []
    for name, img in rows:
        v = as_volume(img, np.float32)
        panels.append((name, v, False))
        if v is not ref and name != "input":
            panels.append((f"{name} − input", v - ref, True))
    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.4 * len(panels)), squeeze=False)
    for r, (name, v, diff) in enumerate(panels):
        for c, s in enumerate(_slices(v, centre)):
            ax = axes[r, c]
            if diff:
                ax.imshow(s, cmap="RdBu_r", vmin=-0.3, vmax=0.3, interpolation="nearest")
            else:
                ax.imshow(s, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    for c, t in enumerate(("sagittal", "coronal", "axial")):
        axes[0, c].set_title(t, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def strip_figure(path: Path, images: list[tuple[str, np.ndarray]], centre, title: str, diff_to: int | None = None, plane: str = "axial") -> None:
    """One slice of each image side by side; with ``diff_to``, a second row of differences from that image."""
    plt = require_matplotlib()
    idx = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    vols = [(n, as_volume(v, np.float32)) for n, v in images]
    nrow = 2 if diff_to is not None else 1
    fig, axes = plt.subplots(nrow, len(vols), figsize=(1.9 * len(vols), 2.3 * nrow + 0.4), squeeze=False)
    for c, (name, v) in enumerate(vols):
        s = _slices(v, centre)[idx]
        axes[0, c].imshow(s, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0, c].set_title(name, fontsize=7)
        if diff_to is not None:
            d = _slices(v - vols[diff_to][1], centre)[idx]
            axes[1, c].imshow(d, cmap="RdBu_r", vmin=-0.3, vmax=0.3, interpolation="nearest")
            if c == 0:
                axes[1, c].set_ylabel(f"− {vols[diff_to][0]}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def volume_alpha_figure(path: Path, edits: dict, regions: list[str]) -> None:
    """Δ volume (edited − alpha 0) against alpha: one panel per direction and region, a line per subject."""
    plt = require_matplotlib()
    dirs = list(edits)
    fig, axes = plt.subplots(len(regions), max(1, len(dirs)), figsize=(3.6 * max(1, len(dirs)), 2.9 * len(regions)), squeeze=False)
    for c, dname in enumerate(dirs):
        e = edits[dname]
        alphas = np.asarray(e["alphas"], dtype=float)
        for r, region in enumerate(regions):
            ax = axes[r, c]
            for subj, vols in e["volumes_ml"].items():
                v = np.asarray(vols[region], dtype=float)
                ax.plot(alphas, v - v[e["alpha0_index"]], marker="o", ms=3, lw=1, label=subj)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xlabel(f"alpha ({dname})", fontsize=8)
            ax.set_ylabel(f"Δ {region} (mL)", fontsize=8)
            rho = e["spearman"][region]["pooled"]
            rho_s = f"{rho:+.2f}" if rho is not None and np.isfinite(rho) else "n/a"
            ax.set_title(f"{dname}: {region}, pooled ρ = {rho_s}", fontsize=8)
            ax.tick_params(labelsize=7)
    if dirs and len(edits[dirs[0]]["volumes_ml"]) <= 8:
        axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
