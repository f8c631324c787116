"""Spatial domain maps, side by side (e.g. prediction beside the ground truth), colours matched."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics import annotated_mask

_GREY = (0.8, 0.8, 0.8, 1.0)


def match_labels(labels, reference) -> dict:
    """Pair each label with the reference label it overlaps most, one to one (Hungarian matching).

    The contingency table of ``labels`` x ``reference`` is matched for the largest total
    overlap, so two labels never take the same reference label; with more labels than
    reference labels, the extra ones stay unmatched.

    Parameters
    ----------
    labels
        One label per spot; missing values (None / NaN) are ignored.
    reference
        One label per spot, same order (e.g. the ground truth); missing values are ignored.

    Returns
    -------
    dict
        ``{label: reference label}`` for every matched label; unmatched labels are absent.
    """
    from scipy.optimize import linear_sum_assignment

    lab, ref = pd.Categorical(labels), pd.Categorical(reference)
    if len(lab) != len(ref):
        raise ValueError(f"labels and reference differ in length: {len(lab)} vs {len(ref)}.")
    both = (lab.codes >= 0) & (ref.codes >= 0)
    overlap = np.zeros((len(lab.categories), len(ref.categories)))
    np.add.at(overlap, (lab.codes[both], ref.codes[both]), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    # A pair that shares no spot is no match (its label gets an extra colour).
    return {lab.categories[r]: ref.categories[c] for r, c in zip(rows, cols) if overlap[r, c] > 0}


def _palette(n: int) -> list[tuple]:
    """``n`` distinct RGBA colours: tab10's hues, their light tints (tab20), then tab20b / tab20c, cycling
    after 54; the greys are left out, grey being the colour of unannotated spots."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    colours = [tab20[i] for i in range(0, 20, 2) if i != 14] + [tab20[i] for i in range(1, 20, 2) if i != 15]
    colours += list(matplotlib.colormaps["tab20b"].colors) + list(matplotlib.colormaps["tab20c"].colors)[:-4]
    return [(*colours[i % len(colours)][:3], 1.0) for i in range(n)]


def _labels(adata, key: str, unannotated) -> pd.Categorical:
    """The key's labels, with missing and unannotated values (NA strings, ``unannotated``) as NaN."""
    values = pd.Series(adata.obs[key].to_numpy(), dtype=object)
    keep = annotated_mask(values.to_numpy()) & ~values.astype(str).isin([str(u) for u in unannotated]).to_numpy()
    lab = pd.Categorical(values.where(keep))
    if isinstance(adata.obs[key].dtype, pd.CategoricalDtype):  # keep the column's own category order
        order = [c for c in adata.obs[key].cat.categories if c in set(lab.categories)]
        lab = lab.reorder_categories(order)
    return lab


def domain_legends(adata, keys, *, match_to: str | None = None, unannotated=()) -> dict[str, dict]:
    """The colour and legend entry of every label of every key, colours matched to the key ``match_to``.

    Parameters
    ----------
    adata
        AnnData whose ``obs`` holds the keys.
    keys
        ``obs`` columns (labels per spot).
    match_to
        ``obs`` column whose labels take the first colours, in its category order; every label
        of another key takes the colour of the reference label it overlaps most (`match_labels`),
        labels left unmatched take further colours, distinct from the reference's and from each
        other. None: each key's labels take the colours in their own order.
    unannotated
        Label values drawn as unannotated (grey), besides missing values and the NA strings of
        `mihd.metrics.annotated_mask`.

    Returns
    -------
    dict
        ``{key: {label: (RGBA, legend text)}}`` for every key (and ``match_to``), in legend order:
        matched labels in the reference's order (text ``"3 → L2"``), then the unmatched ones
        (``"5 (no match)"``).
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in dict.fromkeys([*keys, *([match_to] if match_to else [])]) if k not in adata.obs]
    if missing:
        raise KeyError(f"obs has no column(s) {missing}; available: {list(adata.obs.columns)}.")
    out = {}
    ref = _labels(adata, match_to, unannotated) if match_to else None
    for key in dict.fromkeys([*keys, *([match_to] if match_to else [])]):
        lab = _labels(adata, key, unannotated)
        if key == match_to or ref is None:
            out[key] = {c: (rgba, str(c)) for c, rgba in zip(lab.categories, _palette(len(lab.categories)))}
            continue
        ref_order = list(ref.categories)
        ref_colours = _palette(len(ref_order))
        matched = match_labels(lab, ref)
        extra = [c for c in lab.categories if c not in matched]
        out[key] = {c: (ref_colours[ref_order.index(matched[c])], f"{c} → {matched[c]}")
                    for c in sorted(matched, key=lambda c: ref_order.index(matched[c]))}
        out[key] |= {c: (rgba, f"{c} (no match)") for c, rgba in zip(extra, _palette(len(ref_order) + len(extra))[len(ref_order):])}
    return out


def spatial_domains(
    adata,
    keys,
    *,
    titles=None,
    match_to: str | None = None,
    unannotated=(),
    suptitle: str | None = None,
    spot_size: float | None = None,
    ncols: int | None = None,
    show: bool = False,
):
    """Scatter the spots coloured by each ``obs`` key in ``keys``, one panel per key, legends beside.

    Parameters
    ----------
    adata
        AnnData with ``obsm["spatial"]`` as ``(x, y)`` pixels.
    keys
        ``obs`` columns to draw (categorical or integer labels); unannotated spots grey.
    titles
        Panel titles (default: the keys), e.g. with the panel's ARI / NMI.
    match_to
        ``obs`` column (usually the ground truth) whose colours the other panels take: each
        label is drawn in the colour of the reference label it overlaps most (Hungarian
        matching, `domain_legends`), labels left unmatched in extra colours; the legend says
        which label matched which (``3 → L2``). None: every panel coloured in its own order.
    unannotated
        Label values drawn grey as unannotated, besides missing values and NA strings.
    suptitle
        Figure title (e.g. which slice and seed the panels show).
    spot_size
        Marker size; by default scaled to the number of spots.
    ncols
        Panels per row (default: all in one row).
    show
        Leave the interactive backend alone (notebooks); otherwise matplotlib uses Agg.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    if not show:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = [keys] if isinstance(keys, str) else list(keys)
    if "spatial" not in adata.obsm:
        raise KeyError("spatial_domains needs obsm['spatial']; the data has no coordinates.")
    legends = domain_legends(adata, keys, match_to=match_to, unannotated=unannotated)
    xy = np.asarray(adata.obsm["spatial"])
    titles = titles or keys
    ncols = ncols or len(keys)
    nrows = -(-len(keys) // ncols)
    size = spot_size or max(0.5, min(30.0, 60000.0 / max(adata.n_obs, 1)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 4.2 * nrows + (0.4 if suptitle else 0)),
                             squeeze=False, layout="constrained")
    for ax, key, title in zip(axes.ravel(), keys, titles):
        lab, legend = _labels(adata, key, unannotated), legends[key]
        table = np.array([legend[c][0] if c in legend else _GREY for c in lab.categories] + [_GREY])
        ax.scatter(xy[:, 0], xy[:, 1], c=table[lab.codes], s=size, linewidths=0)  # code -1 (unannotated): grey
        handles = [plt.Line2D([], [], ls="", marker="o", color=rgba, label=text) for rgba, text in legend.values()]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                  frameon=False, markerscale=0.9, handletextpad=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.invert_yaxis()  # image convention: y grows downwards
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(keys) :]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig
