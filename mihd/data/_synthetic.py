"""A small, realistic synthetic Visium-like slice with known spatial domains.

Spots sit on a hexagonal lattice (Visium: 55 µm spots, 100 µm pitch; here 100 px
pitch and 55 px spot diameter in "full-resolution" pixels) or uniformly at random.
Domains are bands along a curved axis (cortex-like layers) or blobs on a
background. Each domain up-regulates its own marker genes; counts are
negative-binomial. The H&E-like lowres image is painted from the same domain map,
so colour and nucleus density differ by domain and a patch cut at
``obsm["spatial"] * tissue_lowres_scalef`` shows the spot's own domain.

Everything is vectorised: 10^5 spots take a few seconds.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import ndimage, sparse

from ._visium import _array_indices_from_pixels

__all__ = ["synthetic_slice"]

PITCH = 100.0  # full-res px between neighbouring spot centres
SPOT_DIAMETER = 55.0  # full-res px
MARGIN = 3 * PITCH  # blank glass around the tissue, full-res px
LOWRES_PX_PER_PITCH = 8.0  # as in the DLPFC lowres images
MAX_LOWRES = 2000
_HEX_ROW = PITCH * np.sqrt(3) / 2

_EOSIN = np.array([0.93, 0.62, 0.76])
_HEMATOXYLIN = np.array([0.40, 0.24, 0.56])
_NUCLEUS = np.array([0.28, 0.15, 0.42])
_GLASS = np.array([0.96, 0.95, 0.97])

RegionFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def synthetic_slice(
    n_spots: int = 2000,
    *,
    n_genes: int = 200,
    n_domains: int = 5,
    layout: Literal["hex", "random"] = "hex",
    pattern: Literal["layers", "blobs"] = "layers",
    image: bool = True,
    image_size: int | None = None,
    seed: int = 0,
    library_id: str = "synthetic",
) -> AnnData:
    """Generate a synthetic spatial transcriptomics slice with ground-truth domains.

    Parameters
    ----------
    n_spots
        Number of spots (all in tissue).
    n_genes
        Number of genes; each domain gets ``max(1, min(10, n_genes // (2 * n_domains)))``
        marker genes of its own.
    n_domains
        Number of spatial domains; every one is present.
    layout
        ``"hex"``: Visium hexagonal lattice (100 px pitch) cut to an irregular round
        tissue; ``"random"``: uniform in a square at the same spot density.
    pattern
        ``"layers"``: bands of unequal width along a curved axis; ``"blobs"``: domain 0 is
        background, domains 1.. are irregular blobs.
    image
        Paint an H&E-like lowres image.
    image_size
        Side of the (square) lowres image in pixels; default about 8 px per spot pitch,
        at most 2000.
    seed
        Random seed; the same seed gives the same slice.
    library_id
        Key under ``uns["spatial"]``.

    Returns
    -------
    AnnData laid out like :func:`~mihd.data.read_visium` output:

    - ``X``: negative-binomial counts, float32 CSR; ``var["gene_ids"]``,
      ``var["marker_of"]`` (categorical domain name, NaN for non-markers).
    - ``obs["ground_truth"]``: categorical ``domain_0`` .. ``domain_{n_domains-1}``;
      ``obs["in_tissue"]``, ``obs["array_row"]``, ``obs["array_col"]``.
    - ``obsm["spatial"]``: float64 ``(x, y)`` full-resolution pixels (integer-valued, as Space Ranger writes).
    - ``uns["spatial"][library_id]``: ``"images"`` (``{"lowres": float32 (S, S, 3) in [0, 1]}`` when
      ``image``), ``"scalefactors"`` (``tissue_lowres_scalef``, ``tissue_hires_scalef``,
      ``spot_diameter_fullres``, ``fiducial_diameter_fullres``), ``"metadata"`` (generator parameters).
    """
    _check_args(n_spots, n_genes, n_domains, layout, pattern, image_size)
    rng = np.random.default_rng(seed)

    if layout == "hex":
        xy, array_row, array_col, in_tissue = _hex_layout(n_spots, rng)
    else:
        xy, in_tissue = _random_layout(n_spots, rng)
        array_row, array_col = _array_indices_from_pixels(xy, SPOT_DIAMETER)

    if pattern == "layers":
        labels, domain_of = _layer_domains(xy, n_domains, rng)
    else:
        labels, domain_of = _blob_domains(xy, n_domains, rng)

    X, marker_of = _expression(labels, n_genes, n_domains, rng)

    frame = float(xy.max()) + MARGIN  # square full-res frame; tissue starts at MARGIN
    size = image_size or int(min(MAX_LOWRES, max(64, round(frame * LOWRES_PX_PER_PITCH / PITCH))))
    lowres_scalef = size / frame
    scalefactors = {
        "tissue_lowres_scalef": lowres_scalef,
        "tissue_hires_scalef": max(lowres_scalef, min(1.0, MAX_LOWRES / frame)),
        "spot_diameter_fullres": SPOT_DIAMETER,
        "fiducial_diameter_fullres": SPOT_DIAMETER * 1.5,
    }
    images = {"lowres": _paint_he(domain_of, in_tissue, n_domains, size, lowres_scalef, rng)} if image else {}

    names = [f"domain_{d}" for d in range(n_domains)]
    gene_names = [f"gene_{g:0{len(str(n_genes - 1))}d}" for g in range(n_genes)]
    obs = pd.DataFrame(
        {
            "ground_truth": pd.Categorical.from_codes(labels, categories=names),
            "in_tissue": np.ones(n_spots, dtype=np.int64),
            "array_row": array_row.astype(np.int64),
            "array_col": array_col.astype(np.int64),
        },
        index=pd.Index([f"spot_{i:06d}-1" for i in range(n_spots)]),
    )
    var = pd.DataFrame(
        {"gene_ids": gene_names, "marker_of": pd.Categorical.from_codes(marker_of, categories=names)},
        index=pd.Index(gene_names),
    )
    adata = AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {
        library_id: {
            "images": images,
            "scalefactors": scalefactors,
            "metadata": {
                "generator": "mihd.data.synthetic_slice",
                "seed": int(seed),
                "layout": layout,
                "pattern": pattern,
            },
        }
    }
    return adata


def _check_args(
    n_spots: int, n_genes: int, n_domains: int, layout: str, pattern: str, image_size: int | None
) -> None:
    if layout not in ("hex", "random"):
        raise ValueError(f"layout={layout!r}; use 'hex' (Visium lattice) or 'random'.")
    if pattern not in ("layers", "blobs"):
        raise ValueError(f"pattern={pattern!r}; use 'layers' or 'blobs'.")
    if n_domains < 1 or n_spots < n_domains:
        raise ValueError(f"Need 1 <= n_domains <= n_spots; got n_domains={n_domains}, n_spots={n_spots}.")
    if n_genes < n_domains:
        raise ValueError(f"n_genes={n_genes} < n_domains={n_domains}: each domain needs at least one marker gene.")
    if image_size is not None and image_size < 16:
        raise ValueError(f"image_size={image_size} is too small; use at least 16 px (or None for the default).")


# --------------------------------------------------------------------------- layouts


def _hex_layout(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, RegionFn]:
    """The n lattice spots innermost in an irregular round tissue outline."""
    n_cand = int(np.ceil(n * 4 / np.pi * 1.6)) + 16  # lattice large enough to hold the distorted disc
    n_rows = int(np.ceil(np.sqrt(n_cand * 2 / np.sqrt(3))))
    n_cols = int(np.ceil(n_cand / n_rows))
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    x = c * PITCH + (r % 2) * PITCH / 2
    y = r * _HEX_ROW
    centre = np.array([x.max() / 2, y.max() / 2])
    phase = rng.uniform(0, 2 * np.pi, size=2)

    def shape_radius(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        theta = np.arctan2(py - centre[1], px - centre[0])
        wobble = 1 + 0.12 * np.sin(3 * theta + phase[0]) + 0.06 * np.cos(5 * theta + phase[1])
        return np.hypot(px - centre[0], py - centre[1]) / wobble

    rho = shape_radius(x, y)
    keep = np.sort(np.argsort(rho, kind="stable")[:n])
    cutoff = rho[keep].max()
    x, y, r, c = x[keep], y[keep], r[keep], c[keep]
    shift = np.array([MARGIN - x.min(), MARGIN - y.min()])
    xy = np.round(np.column_stack([x, y]) + shift)

    def in_tissue(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        return shape_radius(px - shift[0], py - shift[1]) <= cutoff + PITCH / 2

    return xy.astype(np.float64), r, 2 * c + r % 2, in_tissue


def _random_layout(n: int, rng: np.random.Generator) -> tuple[np.ndarray, RegionFn]:
    side = np.sqrt(n * PITCH * _HEX_ROW)  # same spot density as the lattice
    xy = np.round(MARGIN + rng.uniform(0, side, size=(n, 2)))

    def in_tissue(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        lo, hi = MARGIN - PITCH / 2, MARGIN + side + PITCH / 2
        return (px >= lo) & (px <= hi) & (py >= lo) & (py <= hi)

    return xy.astype(np.float64), in_tissue


# --------------------------------------------------------------------------- domains


def _unit_coords(xy: np.ndarray) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    lo = xy.min(axis=0)
    span = float(np.ptp(xy, axis=0).max()) or 1.0
    return lambda px, py: ((px - lo[0]) / span, (py - lo[1]) / span)


def _layer_domains(xy: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, RegionFn]:
    """Bands of unequal width stacked along a curved (sine-bent) axis."""
    unit = _unit_coords(xy)
    amp, freq, phase = rng.uniform(0.08, 0.2), rng.uniform(0.6, 1.2), rng.uniform(0, np.pi)

    def depth(px, py):
        u, v = unit(px, py)
        return v + amp * np.sin(np.pi * freq * u + phase)

    t = depth(xy[:, 0], xy[:, 1])
    props = 0.5 / k + 0.5 * rng.dirichlet(np.full(k, 4.0))
    counts = _split_counts(len(t), props)
    order = np.argsort(t, kind="stable")
    labels = np.empty(len(t), dtype=np.int64)
    labels[order] = np.repeat(np.arange(k), counts)
    bounds = np.cumsum(counts)[:-1]
    cuts = (t[order][bounds - 1] + t[order][bounds]) / 2

    def domain_of(px, py):
        return np.searchsorted(cuts, depth(px, py), side="right")

    return labels, domain_of


def _blob_domains(xy: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, RegionFn]:
    """Domain 0 is background; domains 1..k-1 are warped discs centred on far-apart spots."""
    unit = _unit_coords(xy)
    phase = rng.uniform(0, 2 * np.pi, size=2)

    def warped(px, py):
        u, v = unit(px, py)
        return u + 0.05 * np.sin(4 * np.pi * v + phase[0]), v + 0.05 * np.sin(4 * np.pi * u + phase[1])

    wu, wv = warped(xy[:, 0], xy[:, 1])
    n_blobs = k - 1
    centres = _farthest_points(np.column_stack([wu, wv]), n_blobs, rng)
    radii = rng.uniform(0.8, 1.2, size=n_blobs) * np.sqrt(0.28 / (np.pi * max(n_blobs, 1)))

    def domain_of(px, py):
        if n_blobs == 0:
            return np.zeros(np.shape(px), dtype=np.int64)
        u, v = warped(px, py)
        out = np.zeros(np.shape(u), dtype=np.int64)
        best = np.full(np.shape(u), np.inf)
        for j, ((cu, cv), rj) in enumerate(zip(centres, radii)):  # loop over blobs, not spots
            s = np.hypot(u - cu, v - cv) / rj
            closer = (s < 1) & (s < best)
            out[closer], best[closer] = j + 1, s[closer]
        return out

    labels = domain_of(xy[:, 0], xy[:, 1])
    if n_blobs and not (labels == 0).any():  # tiny slices: keep a background spot
        u, v = wu[:, None] - centres[:, 0], wv[:, None] - centres[:, 1]
        labels[np.argmax((np.hypot(u, v) / radii).min(axis=1))] = 0
    return labels, domain_of


def _farthest_points(points: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    if m == 0:
        return np.empty((0, 2))
    # Keep blob centres off the rim so every blob is mostly in tissue.
    inner = np.flatnonzero(np.hypot(*(points - points.mean(axis=0)).T) <= 0.35) if len(points) > 4 * m else []
    pool = points[inner] if len(inner) >= m else points
    chosen = [int(rng.integers(len(pool)))]
    dist = np.hypot(*(pool - pool[chosen[0]]).T)
    for _ in range(m - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.hypot(*(pool - pool[chosen[-1]]).T))
    return pool[chosen]


def _split_counts(n: int, props: np.ndarray) -> np.ndarray:
    """Integer counts summing to n, proportional to props, each at least 1."""
    k = len(props)
    counts = np.ones(k, dtype=np.int64)
    extra = (props / props.sum()) * (n - k)
    counts += np.floor(extra).astype(np.int64)
    rest = n - counts.sum()
    counts[np.argsort(-(extra - np.floor(extra)), kind="stable")[:rest]] += 1
    return counts


# --------------------------------------------------------------------------- expression


def _expression(
    labels: np.ndarray, n_genes: int, k: int, rng: np.random.Generator, chunk: int = 8192
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Negative-binomial counts with per-domain marker programs; returns (CSR float32, marker codes)."""
    n_markers = max(1, min(10, n_genes // (2 * k)))
    perm = rng.permutation(n_genes)
    marker_of = np.full(n_genes, -1, dtype=np.int64)
    for d in range(k):
        marker_of[perm[d * n_markers : (d + 1) * n_markers]] = d

    base = np.exp(rng.normal(0.0, 1.0, size=n_genes))
    base[marker_of >= 0] = np.maximum(base[marker_of >= 0], np.median(base))
    base *= 8.0 * n_genes / base.sum()  # about 8 UMIs per gene per spot on average
    log_fold = rng.normal(0.0, 0.15, size=(k, n_genes))
    is_marker = marker_of >= 0
    log_fold[marker_of[is_marker], np.flatnonzero(is_marker)] += np.log(rng.uniform(3.0, 6.0, size=is_marker.sum()))
    rates = base * np.exp(log_fold)  # (k, n_genes)

    theta = 5.0  # NB dispersion: variance = mu + mu^2 / theta
    size_factor = rng.lognormal(0.0, 0.25, size=len(labels))
    data, indices, row_nnz = [], [], []
    for start in range(0, len(labels), chunk):
        mu = size_factor[start : start + chunk, None] * rates[labels[start : start + chunk]]
        gamma = rng.standard_gamma(theta, size=mu.shape, dtype=np.float32)  # gamma-Poisson = NB
        counts = rng.poisson(gamma * (mu / theta))
        rows, cols = np.nonzero(counts)
        data.append(counts[rows, cols].astype(np.float32))
        indices.append(cols.astype(np.int32))
        row_nnz.append(np.bincount(rows, minlength=mu.shape[0]))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(row_nnz))])
    X = sparse.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=(len(labels), n_genes))
    return X, marker_of


# --------------------------------------------------------------------------- image


def _paint_he(
    domain_of: RegionFn,
    in_tissue: RegionFn,
    k: int,
    size: int,
    scalef: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """H&E-like RGB image: per-domain stain mix and nucleus density, stain unevenness, noise."""
    centres = ((np.arange(size) + 0.5) / scalef).astype(np.float32)  # full-res position of each pixel centre
    px, py = np.meshgrid(centres, centres)  # rows = y, columns = x
    tissue = in_tissue(px, py)
    dom = domain_of(px, py)

    mix = rng.permutation(np.linspace(0.1, 0.75, k)) if k > 1 else np.array([0.35])
    colours = (1 - mix[:, None]) * _EOSIN + mix[:, None] * _HEMATOXYLIN
    colours *= rng.uniform(0.9, 1.05, size=(k, 1))
    density = 0.04 + 0.2 * mix  # more purple domains are more cellular

    img = np.where(tissue[..., None], colours[dom], _GLASS).astype(np.float32)
    nuclei = tissue & (rng.random((size, size), dtype=np.float32) < density[dom])
    img[nuclei] = 0.35 * img[nuclei] + 0.65 * _NUCLEUS

    block = 32  # low-frequency stain unevenness
    coarse = rng.normal(0.0, 0.03, size=(size // block + 2,) * 2).astype(np.float32)
    uneven = ndimage.zoom(coarse, block, order=1)[:size, :size]
    img += (uneven * tissue)[..., None]
    img += rng.normal(0.0, 0.02, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0, out=img)
