"""Spatial domain maps, side by side (e.g. prediction beside the ground truth)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def spatial_domains(adata, keys, *, titles=None, spot_size: float | None = None, ncols: int | None = None, show: bool = False):
    """Scatter the spots coloured by each ``obs`` key in ``keys``, one panel per key.

    Parameters
    ----------
    adata
        AnnData with ``obsm["spatial"]`` as ``(x, y)`` pixels.
    keys
        ``obs`` columns to draw (categorical or integer labels); unannotated spots grey.
    titles
        Panel titles (default: the keys).
    spot_size
        Marker size; by default scaled to the number of spots.
    ncols
        Panels per row (default: all in one row).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    if not show:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in keys if k not in adata.obs]
    if missing:
        raise KeyError(f"obs has no column(s) {missing}; available: {list(adata.obs.columns)}.")
    if "spatial" not in adata.obsm:
        raise KeyError("spatial_domains needs obsm['spatial']; the data has no coordinates.")
    xy = np.asarray(adata.obsm["spatial"])
    titles = titles or keys
    ncols = ncols or len(keys)
    nrows = -(-len(keys) // ncols)
    size = spot_size or max(0.5, min(30.0, 60000.0 / max(adata.n_obs, 1)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.2 * nrows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, key, title in zip(axes.ravel(), keys, titles):
        lab = pd.Categorical(adata.obs[key])
        codes = lab.codes
        colors = np.where(codes[:, None] >= 0, cmap(np.maximum(codes, 0) % 20), (0.8, 0.8, 0.8, 1.0))
        ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=size, linewidths=0)
        handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(i % 20), label=str(c)) for i, c in enumerate(lab.categories)]
        ax.legend(handles=handles, fontsize=6, loc="upper right", frameon=False, markerscale=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.invert_yaxis()  # image convention: y grows downwards
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig
