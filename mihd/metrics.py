"""Scores for a spatial-domain labelling, on plain arrays.

Two families:

* **agreement with an annotation** (`ari`, `nmi`, `ami`, `homogeneity`,
  `completeness`): scikit-learn's scores, computed on the annotated spots only;
* **spatial coherence** (`chaos`, `pas`): need only coordinates and the predicted
  labels, so they also score slices without an annotation. Lower is better.

`score_labels` computes whichever of them the inputs allow. One diagnostic of the gene
features themselves, `depth_share`, says how much of them sequencing depth explains. Nothing
here imports AnnData; wrappers for AnnData objects belong in ``mihd.tl``.

Unannotated spots
-----------------
A truth entry counts as *unannotated* when it is ``None``, a float NaN (``np.nan``,
``pd.NA`` and other values that are not equal to themselves), or a string that,
once surrounding whitespace is stripped, is one of ``""``, ``"NA"``, ``"nan"``,
``"NaN"``, ``"N/A"``, ``"None"``, ``"null"`` (see `UNANNOTATED_STRINGS`). Such spots are dropped from both ``truth``
and ``pred`` before scoring, because DLPFC-style annotations leave spots outside
the tissue layers unlabelled and counting them as a class of their own would
reward (or punish) a method for how it treats them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from sklearn import metrics as _skm

__all__ = [
    "UNANNOTATED_STRINGS",
    "annotated_mask",
    "ari",
    "nmi",
    "ami",
    "homogeneity",
    "completeness",
    "chaos",
    "pas",
    "score_labels",
    "depth_share",
]

#: Strings (after ``str.strip``) that mark a spot as unannotated.
UNANNOTATED_STRINGS: frozenset[str] = frozenset({"", "NA", "N/A", "NaN", "nan", "None", "null"})


# --------------------------------------------------------------------------- helpers


def _is_unannotated(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, np.str_)):
        return value.strip() in UNANNOTATED_STRINGS
    if isinstance(value, bytes):
        return value.decode(errors="replace").strip() in UNANNOTATED_STRINGS
    try:
        # NaN (float or numpy) and pd.NaT are the values not equal to themselves.
        return bool(value != value)
    except (TypeError, ValueError):
        # pd.NA: `NA != NA` is NA, whose truth value raises.
        return True


def annotated_mask(truth: ArrayLike) -> NDArray[np.bool_]:
    """Boolean mask of the spots that carry an annotation.

    Parameters
    ----------
    truth
        One label per spot (strings, integers, floats, objects, or a pandas
        Series / Categorical). See the module docstring for what counts as
        unannotated: ``None``, NaN, and the strings in `UNANNOTATED_STRINGS`.

    Returns
    -------
    numpy.ndarray
        ``bool`` array of shape ``(n_spots,)``, ``True`` where the spot is annotated.
    """
    arr = np.asarray(truth)
    if arr.ndim != 1:
        raise ValueError(f"truth must be 1-D (one label per spot); got shape {arr.shape}.")
    kind = arr.dtype.kind
    if kind in "biu":
        return np.ones(arr.shape, dtype=bool)
    if kind in "fc":
        return ~np.isnan(arr)
    if kind in "US":
        stripped = np.char.strip(arr if kind == "U" else np.char.decode(arr, errors="replace"))
        return ~np.isin(stripped, list(UNANNOTATED_STRINGS))
    # Object (mixed) arrays: a per-element check is the only reliable way, and
    # it is O(N) in the number of spots, done once per score.
    return np.fromiter((not _is_unannotated(v) for v in arr), dtype=bool, count=arr.size)


def _check_same_length(a: NDArray[Any], b: NDArray[Any], name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have one entry per spot, but {name_a} has "
            f"{a.shape[0]} and {name_b} has {b.shape[0]}."
        )


def _annotated_pairs(truth: ArrayLike, pred: ArrayLike) -> tuple[NDArray[Any], NDArray[Any]]:
    """(truth, pred) restricted to annotated spots, ready for scikit-learn."""
    t = np.asarray(truth)
    p = np.asarray(pred)
    if p.ndim != 1:
        raise ValueError(f"pred must be 1-D (one label per spot); got shape {p.shape}.")
    if t.ndim != 1:
        raise ValueError(f"truth must be 1-D (one label per spot); got shape {t.shape}.")
    _check_same_length(t, p, "truth", "pred")
    mask = annotated_mask(t)
    if not mask.any():
        raise ValueError(
            f"truth has no annotated spot among its {t.size} entries (all are None, NaN or "
            f"one of {sorted(UNANNOTATED_STRINGS)}); pass the annotation column, or score "
            "spatial coherence only with score_labels(pred, coords=...)."
        )
    t, p = t[mask], p[mask]
    if t.dtype.kind == "O":
        # Mixed objects (e.g. ints next to strings) cannot be sorted by np.unique.
        t = t.astype(str)
    if p.dtype.kind == "O":
        p = p.astype(str)
    return t, p


# --------------------------------------------------------------------- label metrics


def ari(truth: ArrayLike, pred: ArrayLike) -> float:
    """Adjusted Rand index between annotation and prediction, annotated spots only.

    Parameters
    ----------
    truth
        Annotation per spot; unannotated entries (None, NaN, ``"NA"``, ``"nan"``,
        ``""``) are excluded together with the matching ``pred`` entries.
    pred
        Predicted domain per spot, same length as ``truth``.

    Returns
    -------
    float
        :func:`sklearn.metrics.adjusted_rand_score` on the annotated spots (1 = identical
        partitions, ~0 = chance).
    """
    t, p = _annotated_pairs(truth, pred)
    return float(_skm.adjusted_rand_score(t, p))


def nmi(truth: ArrayLike, pred: ArrayLike) -> float:
    """Normalised mutual information (arithmetic mean), annotated spots only.

    Same inputs and exclusion rule as `ari`; wraps
    :func:`sklearn.metrics.normalized_mutual_info_score`.
    """
    t, p = _annotated_pairs(truth, pred)
    return float(_skm.normalized_mutual_info_score(t, p))


def ami(truth: ArrayLike, pred: ArrayLike) -> float:
    """Adjusted mutual information, annotated spots only.

    Same inputs and exclusion rule as `ari`; wraps
    :func:`sklearn.metrics.adjusted_mutual_info_score`.
    """
    t, p = _annotated_pairs(truth, pred)
    return float(_skm.adjusted_mutual_info_score(t, p))


def homogeneity(truth: ArrayLike, pred: ArrayLike) -> float:
    """Homogeneity (each predicted domain holds one annotated class), annotated spots only.

    Same inputs and exclusion rule as `ari`; wraps :func:`sklearn.metrics.homogeneity_score`.
    """
    t, p = _annotated_pairs(truth, pred)
    return float(_skm.homogeneity_score(t, p))


def completeness(truth: ArrayLike, pred: ArrayLike) -> float:
    """Completeness (each annotated class falls in one predicted domain), annotated spots only.

    Same inputs and exclusion rule as `ari`; wraps :func:`sklearn.metrics.completeness_score`.
    """
    t, p = _annotated_pairs(truth, pred)
    return float(_skm.completeness_score(t, p))


# ----------------------------------------------------------------- spatial coherence


def _check_coords_labels(coords: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[Any]]:
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"coords must be a 2-D array (n_spots, n_dims); got shape {c.shape}.")
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per spot); got shape {lab.shape}.")
    _check_same_length(c, lab, "coords", "labels")
    if c.shape[0] == 0:
        raise ValueError("coords and labels are empty; there is nothing to score.")
    if not np.isfinite(c).all():
        raise ValueError("coords contain NaN or infinite values; drop those spots before scoring.")
    return c, lab


def chaos(coords: ArrayLike, labels: ArrayLike) -> float:
    """Spatial chaos score (CHAOS) of a labelling; lower is more coherent.

    Definition of Shang & Zhou (2022, SpatialPCA), also used by BASS: the
    coordinates are standardised per axis (mean 0, sample s.d. 1, as R's
    ``scale``); within each cluster, every spot contributes the Euclidean distance
    to its nearest *other* spot of the same cluster; CHAOS is the sum of those
    distances divided by the number of spots. A single-spot cluster contributes 0.

    Parameters
    ----------
    coords
        Spot coordinates, shape ``(n_spots, n_dims)``.
    labels
        Predicted domain per spot (any hashable dtype).

    Returns
    -------
    float
        The CHAOS score (>= 0).

    Notes
    -----
    One KD-tree per cluster, so memory is O(N) and time O(N log N); no pairwise
    distance matrix is formed. An axis with zero spread is only centred (dividing
    by a zero s.d. would give NaN).
    """
    c, lab = _check_coords_labels(coords, labels)
    sd = c.std(axis=0, ddof=1) if c.shape[0] > 1 else np.ones(c.shape[1])
    sd[~(sd > 0)] = 1.0
    z = (c - c.mean(axis=0)) / sd
    _, codes = np.unique(lab, return_inverse=True)
    total = 0.0
    for k in range(codes.max() + 1):
        pts = z[codes == k]
        if pts.shape[0] < 2:
            continue
        # k=2: the first hit is the spot itself (distance 0); the second is the
        # nearest other spot, which is also 0 for duplicated coordinates - correct.
        dist, _ = cKDTree(pts).query(pts, k=2)
        total += float(dist[:, 1].sum())
    return total / c.shape[0]


def pas(
    coords: ArrayLike,
    labels: ArrayLike,
    n_neighbors: int = 10,
    *,
    min_different: int | None = None,
) -> float:
    """Proportion of abnormal spots (PAS); lower is more coherent.

    A spot is *abnormal* when at least ``min_different`` of its ``n_neighbors``
    nearest spots (itself excluded) carry a different label. With the defaults
    (10 neighbours, more than half different, i.e. at least 6) this is the PAS of
    Shang & Zhou (2022, SpatialPCA). Coordinates are used as given, as in their code.

    Parameters
    ----------
    coords
        Spot coordinates, shape ``(n_spots, n_dims)``.
    labels
        Predicted domain per spot.
    n_neighbors
        Neighbours examined per spot; must be smaller than the number of spots.
    min_different
        How many of those neighbours must differ for the spot to count as abnormal,
        in ``1..n_neighbors``. ``None`` means a strict majority:
        ``n_neighbors // 2 + 1`` (6 of 10).

    Returns
    -------
    float
        Fraction of abnormal spots, in ``[0, 1]``.

    Notes
    -----
    One KD-tree query for all spots: O(N·k) memory. Ties in distance (regular
    grids) are broken by the KD-tree, so they may differ from a brute-force sort.
    """
    c, lab = _check_coords_labels(coords, labels)
    n = c.shape[0]
    k = int(n_neighbors)
    if k < 1 or k >= n:
        raise ValueError(f"n_neighbors must be in 1..n_spots-1 = 1..{n - 1}; got {n_neighbors}.")
    thr = k // 2 + 1 if min_different is None else int(min_different)
    if not 1 <= thr <= k:
        raise ValueError(f"min_different must be in 1..n_neighbors = 1..{k}; got {min_different}.")
    _, codes = np.unique(lab, return_inverse=True)
    _, idx = cKDTree(c).query(c, k=k + 1)
    # Drop each spot's own index. With duplicated coordinates the spot may not be
    # listed first (or, with > k duplicates, at all): then drop the last hit instead.
    is_self = idx == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    neigh = idx[~is_self].reshape(n, k)
    n_diff = (codes[neigh] != codes[:, None]).sum(axis=1)
    return float(np.mean(n_diff >= thr))


# ----------------------------------------------------------------------------- all


def score_labels(
    pred: ArrayLike,
    truth: ArrayLike | None = None,
    coords: ArrayLike | None = None,
) -> dict[str, float]:
    """Every score that the given inputs allow.

    Parameters
    ----------
    pred
        Predicted domain per spot.
    truth
        Optional annotation per spot; unannotated spots (None, NaN, ``"NA"``,
        ``"nan"``, ``""``) are left out of the label metrics only.
    coords
        Optional spot coordinates ``(n_spots, n_dims)``; the coherence scores use
        every spot.

    Returns
    -------
    dict[str, float]
        With ``truth``: ``ari``, ``nmi``, ``ami``, ``homogeneity``, ``completeness``
        and ``n_scored`` (the number of annotated spots used). With ``coords``:
        ``chaos`` and ``pas`` (default parameters). Keys for inputs not given are absent.
    """
    p = np.asarray(pred)
    if p.ndim != 1:
        raise ValueError(f"pred must be 1-D (one label per spot); got shape {p.shape}.")
    out: dict[str, float] = {}
    if truth is not None:
        t, q = _annotated_pairs(truth, p)
        out["ari"] = float(_skm.adjusted_rand_score(t, q))
        out["nmi"] = float(_skm.normalized_mutual_info_score(t, q))
        out["ami"] = float(_skm.adjusted_mutual_info_score(t, q))
        out["homogeneity"] = float(_skm.homogeneity_score(t, q))
        out["completeness"] = float(_skm.completeness_score(t, q))
        out["n_scored"] = int(t.size)
    if coords is not None:
        out["chaos"] = chaos(coords, p)
        out["pas"] = pas(coords, p)
    return out


# ----------------------------------------------------------------------------- features


def depth_share(pcs: ArrayLike, totals: ArrayLike, *, of: str = "depth") -> float:
    """The depth share of gene features: how much sequencing depth and the features overlap.

    ``of="depth"`` (default): R² of ``log(totals)`` regressed on the columns of ``pcs`` by ordinary
    least squares with an intercept, i.e. how much of the depth the features carry. Near 1, depth
    can be read off the features; near 0, it is not in them.

    ``of="pcs"``: the share of the features' total variance that ``log(totals)`` explains,
    ``sum_k var_k R²_k / sum_k var_k`` with ``R²_k`` the squared correlation of column ``k`` with
    log depth, i.e. how much of what a clustering of the (unwhitened) PCs sees is depth. The two
    differ when depth sits in low-variance components: all 30 PCs may predict depth well (high
    ``"depth"``) while the leading ones are tissue (low ``"pcs"``).

    Parameters
    ----------
    pcs
        ``(n_spots, n_components)`` features, e.g. the 30 gene principal components.
    totals
        ``(n_spots,)`` total counts (UMIs) per spot, all positive.
    of
        ``"depth"`` or ``"pcs"``, as above.

    Returns
    -------
    float
        A share in [0, 1]; NaN when ``totals`` is constant (no depth variation to explain).

    Raises
    ------
    ValueError
        Shapes that do not match, a non-positive or non-finite total, non-finite features, an
        unknown ``of``, or (``of="depth"``) no more spots than components + 1 (R² would be 1
        whatever the features).
    """
    if of not in ("depth", "pcs"):
        raise ValueError(f"of={of!r}; use 'depth' (R² of log depth on the features) or 'pcs' (share of the "
                         "features' variance explained by log depth).")
    x = np.asarray(pcs, dtype=np.float64)
    t = np.asarray(totals, dtype=np.float64).ravel()
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"pcs must be 2-D (spots x components); got shape {x.shape}.")
    _check_same_length(t, x, "totals", "pcs")
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise ValueError("totals must be finite and positive (total counts per spot); drop spots with no counts first.")
    if not np.isfinite(x).all():
        raise ValueError("pcs holds non-finite values.")
    n, k = x.shape
    if of == "depth" and n <= k + 1:
        raise ValueError(f"depth_share needs more spots than components + 1; got {n} spots and {k} components.")
    y = np.log(t)
    if np.ptp(y) == 0:
        return float("nan")
    y = y - y.mean()
    ss_y = float(y @ y)
    x = x - x.mean(0)
    if of == "pcs":
        ss_x = float((x * x).sum())
        # sum_k var_k corr_k² = sum_k (x_k . y)² / (y . y)
        return float(min(1.0, ((x.T @ y) ** 2).sum() / ss_y / ss_x)) if ss_x > 0 else float("nan")
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    return float(min(1.0, max(0.0, 1.0 - float(resid @ resid) / ss_y)))
