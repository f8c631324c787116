"""Coarse, legacy-ST-like sections from a Visium slice: spots pooled into pseudo-spots.

Legacy Spatial Transcriptomics (Ståhl et al. 2016) measured 100 µm spots 200 µm apart, a few
hundred per section. :func:`pool_spots` makes such sections from a Visium slice: it picks centres
on a coarser sub-lattice of the hexagonal spot grid and sums the counts of each centre and its
rings of neighbours, so that a gene recipe can be tested on coarse spots with real counts.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

__all__ = ["pool_spots", "pool_options"]

# Visium: 55 µm spots 100 µm apart (the fallback pitch when no two lattice neighbours are present).
_VISIUM_PITCH_PER_DIAMETER = 100.0 / 55.0
_KEPT_OBS = ("in_tissue", "array_row", "array_col")
_KEPT_OBSM = ("spatial", "spatial_um")


def pool_spots(
    adata: AnnData,
    *,
    radius: int = 1,
    step: int | None = None,
    min_pooled: int | None = None,
    key_added: str = "pool",
) -> AnnData:
    """Pool the spots of a Visium slice into coarse pseudo-spots (legacy-ST-like sections).

    Centres are the spots on a coarser sub-lattice of the hexagonal grid (``obs["array_row"]``,
    ``obs["array_col"]``, Space Ranger's convention: neighbours at ``(r, c ± 2)`` and
    ``(r ± 1, c ± 1)``). Each pseudo-spot is the sum of the counts of its centre and of the spots
    within ``radius`` rings around it (a hexagon of ``3 radius² + 3 radius + 1`` spots: 7 for
    ``radius=1``, about 255 µm across on Visium); no two pseudo-spots share a spot. The counts are
    summed with one sparse product (pseudo-spots x spots), never a dense N x N array.

    Parameters
    ----------
    adata
        A Visium slice with raw counts in ``X`` and ``obs["array_row"]`` / ``obs["array_col"]``
        (as :func:`mihd.data.read_visium` and :func:`mihd.data.synthetic_slice` with
        ``layout="hex"`` give).
    radius
        Rings of neighbours pooled around each centre (>= 1).
    step
        Spacing of the centres in spot pitches. ``None`` (default): the sub-lattice on which the
        hexagons tile the plane, every spot in exactly one footprint, centres
        ``sqrt(3 radius² + 3 radius + 1)`` pitches apart (2.65 for ``radius=1``: about 265 µm on
        Visium, like legacy ST's 200 µm pitch). An integer ``>= 2 radius + 1``: a triangular
        lattice ``step`` pitches apart, with gaps between footprints (legacy ST's spots did not
        touch either).
    min_pooled
        Keep a pseudo-spot only when its centre and at least this many spots of its footprint in
        all (centre included) are in the data; default: more than half of the footprint (4 of 7).
        Tissue edges thus keep partly covered pseudo-spots, as on a legacy ST array.
    key_added
        ``uns[key_added]`` receives the parameters and the pitch found.

    Returns
    -------
    AnnData
        A new object (``adata`` is left as it is), one observation per pseudo-spot, named after its centre spot, in the order of the centres
        in ``adata``:

        - ``X``: the summed counts (sparse in, sparse out; the dtype is kept);
        - ``obs["n_pooled"]``: how many spots were summed; ``in_tissue``, ``array_row``,
          ``array_col``: the centre's;
        - every other non-numeric ``obs`` column (annotations): the majority label of the pooled
          spots, NA when more than half of them are unannotated (NA, NaN, empty, as
          :func:`mihd.metrics.annotated_mask` decides); ties go to the centre's label, then to the
          first label in category order. Other numeric ``obs`` columns are dropped (a centre's
          value would misstate the pool);
        - ``obsm["spatial"]`` (and ``obsm["spatial_um"]`` when present): the centre's coordinates;
        - ``uns["spatial"]``: the images kept, ``spot_diameter_fullres`` scaled to the pooled
          footprint (``2 radius`` pitches plus one spot diameter), so image patches cover the
          larger spot;
        - ``uns[key_added]``: ``{"params": {...}, "pitch_fullres": ..., "spot_diameter_fullres":
          the original diameter}``.

    Raises
    ------
    KeyError
        ``obs["array_row"]`` / ``obs["array_col"]`` are missing.
    ValueError
        A bad option, lattice indices that are not whole numbers, not a Visium hexagonal grid
        (``array_col - array_row`` odd) or repeated, or no pseudo-spot left.

    Examples
    --------
    >>> import mihd
    >>> a = mihd.data.synthetic_slice(2000, layout="hex")
    >>> coarse = mihd.data.pool_spots(a)
    >>> int(coarse.obs["n_pooled"].max())
    7
    """
    radius, step, min_pooled = _check_options(adata, radius, step, min_pooled)
    q, r = _axial(adata)
    offsets = _hexagon(radius)
    order, keys = _lattice_index(q, r)

    # Which coset of the sub-lattice: the one that keeps the most pseudo-spots (ties: the first).
    best = None
    for phase in _phases(radius, step):
        centres = np.flatnonzero(_on_sublattice(q, r, radius, step, phase))
        members = _members(q[centres], r[centres], offsets, order, keys)
        counts = (members >= 0).sum(1)
        keep = counts >= min_pooled
        if best is None or keep.sum() > best[0].sum():
            best = (keep, centres, members)
    keep, centres, members = best
    centres, members = centres[keep], members[keep]
    if centres.size == 0:
        raise ValueError(
            f"pool_spots: no pseudo-spot of radius={radius} has min_pooled={min_pooled} of its spots in the data "
            f"({adata.n_obs} spots); lower min_pooled or radius."
        )

    rows = np.repeat(np.arange(centres.size), members.shape[1])
    cols = members.ravel()
    inside = cols >= 0
    rows, cols = rows[inside], cols[inside]
    assign = sparse.csr_matrix((np.ones(rows.size, dtype=np.float64), (rows, cols)), shape=(centres.size, adata.n_obs))
    X = _sum_counts(assign, adata.X)

    obs = pd.DataFrame(index=pd.Index(np.asarray(adata.obs_names)[centres], name=adata.obs_names.name))
    for col in _KEPT_OBS:
        if col in adata.obs:
            obs[col] = adata.obs[col].to_numpy()[centres]
    obs["n_pooled"] = np.asarray(assign.sum(1)).ravel().astype(np.int64)
    for col in adata.obs.columns:
        if col in _KEPT_OBS or col == "n_pooled" or pd.api.types.is_numeric_dtype(adata.obs[col]):
            continue
        obs[col] = _majority(adata.obs[col], rows, cols, centres)

    out = AnnData(X=X, obs=obs, var=adata.var.copy())
    for key in _KEPT_OBSM:
        if key in adata.obsm:
            out.obsm[key] = np.asarray(adata.obsm[key])[centres].copy()
    pitch = _pitch_fullres(adata, q, r, order, keys)
    info = {"params": {"radius": radius, "step": step, "min_pooled": min_pooled}, "pitch_fullres": pitch}
    if "spatial" in adata.uns:
        spatial = copy.deepcopy(dict(adata.uns["spatial"]))
        for lib in spatial.values():
            sf = lib.get("scalefactors") if isinstance(lib, dict) else None
            if sf and "spot_diameter_fullres" in sf:
                info.setdefault("spot_diameter_fullres", float(sf["spot_diameter_fullres"]))
                d = float(sf["spot_diameter_fullres"])
                p = pitch if pitch is not None else d * _VISIUM_PITCH_PER_DIAMETER
                sf["spot_diameter_fullres"] = 2 * radius * p + d
        out.uns["spatial"] = spatial
    out.uns[key_added] = info
    return out


# --------------------------------------------------------------------------- helpers


def _check_options(adata, radius, step, min_pooled) -> tuple[int, int | None, int]:
    if not isinstance(adata, AnnData):
        raise TypeError(f"pool_spots needs an AnnData, got {type(adata).__name__}.")
    missing = [c for c in ("array_row", "array_col") if c not in adata.obs]
    if missing:
        raise KeyError(
            f"pool_spots needs the Visium lattice indices obs['array_row'] and obs['array_col']; the data lacks "
            f"{missing} (obs columns: {list(map(str, adata.obs.columns))}). mihd.data.read_visium gives them "
            "(from spatial/tissue_positions*.csv)."
        )
    if adata.n_obs == 0:
        raise ValueError("pool_spots: the data has no spots.")
    return _check_values(radius, step, min_pooled)


def _whole(value, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum


def _check_values(radius, step, min_pooled, where: str = "pool_spots: ") -> tuple[int, int | None, int]:
    if not _whole(radius, 1):
        raise ValueError(f"{where}radius={radius!r}; give a whole number of rings >= 1 (1: each spot and its 6 neighbours).")
    radius = int(radius)
    if step is not None:
        if not _whole(step, 2 * radius + 1):
            raise ValueError(
                f"{where}step={step!r}; give a whole number >= {2 * radius + 1} (2 radius + 1: pseudo-spots of "
                f"radius {radius} would overlap closer), or null for the tiling sub-lattice."
            )
        step = int(step)
    footprint = 3 * radius * radius + 3 * radius + 1
    if min_pooled is None:
        min_pooled = footprint // 2 + 1
    if not _whole(min_pooled, 1) or min_pooled > footprint:
        raise ValueError(f"{where}min_pooled={min_pooled!r}; give a whole number from 1 to {footprint} "
                         f"(the spots of a radius-{radius} footprint), or null (more than half of them).")
    return radius, step, int(min_pooled)


def pool_options(value, *, key: str = "data.pool") -> dict | None:
    """The :func:`pool_spots` options a config's ``data.pool`` asks for, checked (names and values)
    so that a bad setting is refused before any data is read: ``None`` for null / false (no
    pooling), ``{}`` for true (the defaults), else the mapping's options."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        try:
            value = dict(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}={value!r}; give a mapping of pool_spots options, e.g. {{radius: 1}}, "
                             "true (the defaults) or null (no pooling).") from None
    accepted = ("radius", "step", "min_pooled")
    unknown = sorted(set(map(str, value)) - set(accepted))
    if unknown:
        raise ValueError(f"{key} has unknown option(s) {unknown}; mihd.data.pool_spots accepts: {', '.join(accepted)}.")
    _check_values(value.get("radius", 1), value.get("step"), value.get("min_pooled"), where=f"{key}.")
    return {k: value[k] for k in accepted if k in value}


def _axial(adata) -> tuple[np.ndarray, np.ndarray]:
    """Axial hex coordinates ``(q, r)`` from Space Ranger's ``array_row`` / ``array_col``."""
    out = []
    for col in ("array_row", "array_col"):
        v = pd.to_numeric(adata.obs[col], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(v).all() or (v != np.round(v)).any():
            raise ValueError(f"pool_spots: obs[{col!r}] holds values that are not whole numbers (lattice indices expected).")
        out.append(v.astype(np.int64))
    row, col = out
    if ((col - row) % 2).any():
        raise ValueError(
            "pool_spots: obs['array_col'] - obs['array_row'] is odd for some spots, so the indices are not a Visium "
            "hexagonal grid (Space Ranger's array_col counts half-pitch steps: even rows even columns, odd rows odd)."
        )
    q, r = (col - row) // 2, row
    pairs = np.unique(np.column_stack([q, r]), axis=0)
    if len(pairs) < len(q):
        raise ValueError(f"pool_spots: {len(q) - len(pairs)} spots repeat another spot's (array_row, array_col).")
    return q, r


def _hexagon(radius: int) -> np.ndarray:
    """Axial offsets of a hexagon of ``radius`` rings, the centre first."""
    out = [(0, 0)]
    for dq in range(-radius, radius + 1):
        for dr in range(-radius, radius + 1):
            if (dq, dr) != (0, 0) and max(abs(dq), abs(dr), abs(dq + dr)) <= radius:
                out.append((dq, dr))
    return np.asarray(out, dtype=np.int64)


def _encode(q, r) -> np.ndarray:
    return (np.asarray(q, dtype=np.int64) << 32) + (np.asarray(r, dtype=np.int64) + (1 << 31))


def _lattice_index(q, r) -> tuple[np.ndarray, np.ndarray]:
    keys = _encode(q, r)
    order = np.argsort(keys, kind="stable")
    return order, keys[order]


def _lookup(q, r, order, keys) -> np.ndarray:
    """Spot index at each axial position, -1 where there is none."""
    k = _encode(q, r)
    pos = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
    return np.where(keys[pos] == k, order[pos], -1)


def _members(qc, rc, offsets, order, keys) -> np.ndarray:
    """(n_centres, footprint) spot indices (-1: absent); column 0 is the centre itself."""
    return _lookup(qc[:, None] + offsets[None, :, 0], rc[:, None] + offsets[None, :, 1], order, keys)


def _phases(radius: int, step: int | None):
    if step is None:  # the tiling sub-lattice has 3R² + 3R + 1 cosets, one per offset along q
        return [(p, 0) for p in range(3 * radius * radius + 3 * radius + 1)]
    return [(a, b) for a in range(step) for b in range(step)]


def _on_sublattice(q, r, radius: int, step: int | None, phase) -> np.ndarray:
    q, r = q - phase[0], r - phase[1]
    if step is not None:
        return (q % step == 0) & (r % step == 0)
    # Generated by (2R+1, -R) and (R, R+1) (hexagons of radius R tile the plane), index n = 3R² + 3R + 1.
    n = 3 * radius * radius + 3 * radius + 1
    return (((radius + 1) * q - radius * r) % n == 0) & ((radius * q + (2 * radius + 1) * r) % n == 0)


def _sum_counts(assign, X):
    if sparse.issparse(X):
        out = sparse.csr_matrix(assign @ sparse.csr_matrix(X, dtype=np.float64))
        out.sort_indices()
        return out.astype(X.dtype)
    return (assign @ np.asarray(X, dtype=np.float64)).astype(np.asarray(X).dtype)


def _majority(values: pd.Series, rows, cols, centres) -> pd.Categorical:
    """Majority label per pseudo-spot (``rows``: pseudo-spot, ``cols``: pooled spot); NA where more than
    half of the pooled spots are unannotated; ties go to the centre's label, then to category order."""
    from ..metrics import annotated_mask

    cat = values.astype("category")
    labels = cat.cat.categories
    is_label = annotated_mask(np.asarray(labels, dtype=object))  # "NA", "" ... are no label of the result
    remap = np.where(is_label, np.cumsum(is_label) - 1, -1)
    codes = cat.cat.codes.to_numpy().astype(np.int64)
    codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)  # -1: unannotated
    n_out, k = len(centres), int(is_label.sum())
    member = codes[cols]
    unannotated = np.bincount(rows[member < 0], minlength=n_out)
    pooled = np.bincount(rows, minlength=n_out)
    counts = np.zeros((n_out, max(k, 1)))
    np.add.at(counts, (rows[member >= 0], member[member >= 0]), 1.0)
    centre = codes[centres]
    counts[np.flatnonzero(centre >= 0), centre[centre >= 0]] += 0.5
    out = np.where((2 * unannotated > pooled) | (k == 0), -1, counts.argmax(1))
    return pd.Categorical.from_codes(out, categories=labels[is_label])


def _pitch_fullres(adata, q, r, order, keys) -> float | None:
    """Median full-resolution distance between lattice neighbours ``(q, r)`` and ``(q + 1, r)``."""
    if "spatial" not in adata.obsm:
        return None
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    nb = _lookup(q + 1, r, order, keys)
    have = nb >= 0
    if not have.any():
        return None
    d = np.hypot(*(xy[have] - xy[nb[have]]).T)
    return float(np.median(d)) if math.isfinite(float(np.median(d))) else None
