"""Synthetic spatial transcriptomics slices with known domains, from 10^2 to 10^6+ observations.

Four layouts, all in "full-resolution" pixel coordinates:

- ``"hex"``: Visium spots on a hexagonal lattice (55 µm spots, 100 µm pitch; here 100 px
  pitch and 55 px spots, i.e. 1 µm per pixel) cut to an irregular round tissue;
  ``"random"``: uniform in a square at the same spot density.
- ``"cells"``: Xenium-like single cells about 10 µm apart (a 12 µm hexagonal lattice
  jittered by 10% of its pitch: median nearest-neighbour distance 10 µm) inside an
  irregular tissue outline; 0.2125 µm per pixel as in Xenium morphology images.
- ``"bins"``: Visium HD-like 8 µm square bins on a square grid, same pixel size.

Domains are large regions whose geometry is set in tissue-relative coordinates, so it does
not depend on the number of observations: bands along a curved axis (``"layers"``),
blobs on a background (``"blobs"``), quantiles of a smooth random field along a
direction (``"gradient"``), or layers with blobs embedded (``"mixed"``). Each domain
up-regulates its own marker genes; optional cell-type mixing and shared smooth spatial
programs make the domains not trivially separable; counts are negative-binomial with
per-observation library sizes. The H&E-like lowres image (and, on request, a bounded
uint8 hires image with nuclei) is painted from the same domain map, so colour and
texture differ by domain.

Counts are generated chunk by chunk straight into CSR (float32 data, int32 indices): no
dense observations x genes array exists at any size. Measured on a shared 2-core AMD
EPYC (``benchmarks/synthetic/results.md``, ``OMP_NUM_THREADS=1``, default 200 genes,
7 domains, lowres image): ``layout="cells"`` 10^5 cells in 1.0 s with a peak RSS of
0.35 GB, 10^6 cells in 10 s with 1.0 GB (the hires image adds about 4 s and 0.1 GB);
``"bins"`` 10^6 in 7 s with 0.8 GB; the Visium ``"hex"`` layout, with its much denser
counts (about 1,900 per spot), 10^5 spots in 3.9 s with 0.7 GB and 10^6 in 26 s with 2.0 GB.
"""

from __future__ import annotations

from collections.abc import Sequence
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

HD_MICRONS_PER_PIXEL = 0.2125  # Xenium morphology image pixel size; used for "cells" and "bins"
CELL_SPACING_UM = 12.0  # lattice pitch of "cells"; with the jitter, nearest neighbours are ~10 µm apart
CELL_JITTER = 0.1  # sd of the jitter, as a fraction of the pitch
CELL_DIAMETER_UM = 10.0  # "spot" size of a cell (image patches are sized from it)
BIN_SIZE_UM = 8.0  # Visium HD bin side
HD_MARGIN_UM = 100.0  # blank glass around an HD tissue
_WALK_MAX_MEAN = 16.0  # _nb_sparse: larger means are drawn as gamma-Poisson, not by inverse CDF
MAX_HIRES = 6000  # largest hires side, px (uint8: at most 108 MB)
HIRES_MICRONS_PER_PX = 1.0  # default hires resolution, before the MAX_HIRES cap
NUCLEUS_MAX_UM_PER_PX = 2.5  # coarser hires pixels get per-pixel nucleus speckle, not drawn nuclei

_LEGACY_LAYOUTS = ("hex", "random")
_LAYOUTS = ("hex", "random", "cells", "bins")
_PATTERNS = ("layers", "blobs", "gradient", "mixed")
_IMAGE_SIGNALS = ("domains", "shuffled", "noise")

#: Per-layout defaults of the options left as ``None`` (``mean_counts`` is per gene).
#: "hex"/"random" keep the original Visium-like model exactly (same numbers for the same seed).
LAYOUT_DEFAULTS = {
    "hex": {"counts_per_gene": 8.0, "library_sd": 0.25, "mixing": 0.0, "programs": 0},
    "random": {"counts_per_gene": 8.0, "library_sd": 0.25, "mixing": 0.0, "programs": 0},
    "cells": {"counts_per_gene": 0.5, "library_sd": 0.4, "mixing": 0.15, "programs": 3},
    "bins": {"counts_per_gene": 0.25, "library_sd": 0.4, "mixing": 0.3, "programs": 3},
}

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
    layout: Literal["hex", "random", "cells", "bins"] = "hex",
    pattern: Literal["layers", "blobs", "gradient", "mixed"] = "layers",
    image: bool = True,
    image_size: int | None = None,
    hires: bool = False,
    hires_size: int | None = None,
    marker_strength: float | Sequence[float] = (3.0, 6.0),
    dispersion: float = 0.2,
    mean_counts: float | None = None,
    library_sd: float | None = None,
    mixing: float | None = None,
    programs: int | None = None,
    program_strength: float = 0.5,
    expression_of: Sequence[int] | None = None,
    morphology_of: Sequence[int] | None = None,
    spot_scale: float = 1.0,
    image_signal: Literal["domains", "shuffled", "noise"] = "domains",
    seed: int = 0,
    library_id: str = "synthetic",
) -> AnnData:
    """Generate a synthetic spatial transcriptomics slice with ground-truth domains.

    Small slices are test fixtures; 10^6 cells take about 10 s and 1 GB peak (measured
    numbers in the module docstring and ``benchmarks/synthetic/results.md``).

    Parameters
    ----------
    n_spots
        Number of observations (spots, cells or bins; all in tissue).
    n_genes
        Number of genes; each domain gets ``max(1, min(10, n_genes // (2 * n_domains)))``
        marker genes of its own.
    n_domains
        Number of spatial domains; every one is present.
    layout
        ``"hex"``: Visium hexagonal lattice (100 px pitch, 1 µm per px) cut to an irregular
        round tissue; ``"random"``: uniform in a square at the same spot density;
        ``"cells"``: Xenium-like cells, a 12 µm hexagonal lattice jittered by 1.2 µm (sd),
        so nearest neighbours are a median 10 µm apart, inside an irregular outline,
        0.2125 µm per px; ``"bins"``: Visium HD-like 8 µm square bins, 0.2125 µm per px.
    pattern
        ``"layers"``: bands of unequal width along a curved axis; ``"blobs"``: domain 0 is
        background, domains 1.. are irregular blobs; ``"gradient"``: bands cut at quantiles
        of a smooth random field (a random direction plus low-frequency waves), so borders
        wander and may close into islands; ``"mixed"``: layers with blobs embedded (the last
        ``max(1, n_domains // 3)`` domains are blobs). Geometry is relative to the tissue,
        so domains stay large regions at any ``n_spots``.
    image
        Paint an H&E-like lowres image, float32 in [0, 1].
    image_size
        Side of the (square) lowres image in pixels; default about 12.5 µm per pixel,
        at least 64 and at most 2000.
    hires
        Also paint a hires image, uint8 ``(S, S, 3)``: per-domain stain colour plus nuclei
        (for ``"cells"`` one at every cell, its size and darkness set by the cell type)
        that patch-based image encoders can see (they prefer hires over lowres when both
        exist). Painted in row blocks; memory is the image itself (at most 108 MB).
    hires_size
        Side of the hires image in pixels; default 1 µm per pixel, at most 6000.
    marker_strength
        Fold change of each marker gene in its own domain (cell type): a pair ``(low, high)``
        draws it uniformly per gene; a single number fixes it.
    dispersion
        Negative-binomial dispersion ``phi``: variance = mean + phi * mean^2 (0 gives Poisson;
        the default 0.2 is a shape ``theta`` of 5).
    mean_counts
        Mean total counts per observation before marker up-regulation; default
        ``8 * n_genes`` for ``"hex"``/``"random"`` (Visium-like), ``0.5 * n_genes`` for
        ``"cells"`` (100 per cell at 200 genes), ``0.25 * n_genes`` for ``"bins"``.
    library_sd
        Standard deviation of the log-normal per-observation library size factor;
        default 0.25 (``"hex"``/``"random"``), 0.4 (``"cells"``/``"bins"``).
    mixing
        Fraction of observations whose expression comes from another domain's cell type
        (each domain has its own random composition of the other types); the label stays
        the region's. Default 0 (``"hex"``/``"random"``), 0.15 (``"cells"``), 0.3 (``"bins"``).
    programs
        Number of shared expression programs: smooth random spatial fields, independent of
        the domains, each scaling a random quarter of the genes up or down.
        Default 0 (``"hex"``/``"random"``), 3 (``"cells"``/``"bins"``).
    program_strength
        Largest log-fold effect of a program on a gene per unit (sd) of its field.
    expression_of
        Per domain, the domain whose expression it has (length ``n_domains``): ``[0, 1, 2, 2]``
        makes domains 2 and 3 identical in expression, so only the image can tell them apart
        (a morphology-only domain). ``None``: every domain its own. Draws no random numbers,
        so the rest of the slice is the same as without it.
    morphology_of
        Per domain, the domain whose appearance (stain colour, cellularity, nucleus size) it
        has in the image: ``[0, 1, 1, 2]`` makes domains 1 and 2 look alike, so only the
        expression tells them apart. ``None``: every domain its own.
    spot_scale
        ``"hex"`` / ``"random"`` only: multiply the spot pitch and diameter (2.0: legacy-ST-like
        110 µm spots 200 µm apart); the lowres image keeps about 12.5 µm per pixel and the
        hires image 1 µm per pixel.
    image_signal
        What the images show: ``"domains"`` (default) the domains' appearance; ``"shuffled"`` every
        spot's neighbourhood (its Voronoi cell) in the appearance of a randomly chosen spot's domain,
        so the image carries no spatial information; ``"noise"`` every 4 µm block in a random domain's
        appearance, so every patch looks alike. Controls for image fusion: a method should ignore both.
    seed
        Random seed; the same seed gives the same slice.
    library_id
        Key under ``uns["spatial"]``.

    Returns
    -------
    AnnData laid out like :func:`~mihd.data.read_visium` output:

    - ``X``: negative-binomial counts, float32 CSR (int32 indices); ``var["gene_ids"]``,
      ``var["marker_of"]`` (categorical domain name, NaN for non-markers).
    - ``obs["ground_truth"]``: categorical ``domain_0`` .. ``domain_{n_domains-1}``;
      ``obs["in_tissue"]``, ``obs["array_row"]``, ``obs["array_col"]`` (lattice indices; for
      ``"bins"`` the bin's row / column counted from the image origin, as Space Ranger and
      :func:`~mihd.data.write_visium_hd_folder` grid them); ``obs["cell_type"]`` (``type_j``
      is the program of domain j) when ``mixing > 0``. Names: ``spot_000000-1`` (Visium),
      ``cell_0000000``, ``s_008um_{row:05d}_{col:05d}-1`` (bins).
    - ``obsm["spatial"]``: float64 ``(x, y)`` full-resolution pixels (integer-valued for
      ``"hex"``/``"random"``, as Space Ranger writes); ``obsm["spatial_um"]`` in µm for
      ``"cells"``/``"bins"`` (as the Xenium and Visium HD readers give).
    - ``uns["spatial"][library_id]``: ``"images"`` (``"lowres"`` float32 (S, S, 3) in [0, 1]
      when ``image``; ``"hires"`` uint8 when ``hires``), ``"scalefactors"``
      (``tissue_lowres_scalef``, ``tissue_hires_scalef``, ``spot_diameter_fullres``,
      ``fiducial_diameter_fullres``; for ``"cells"``/``"bins"`` also ``microns_per_pixel``,
      and ``bin_size_um`` for ``"bins"``), ``"metadata"`` (generator parameters, with
      ``microns_per_pixel`` for every layout; for ``"hex"``/``"random"`` (1 µm per px) it is
      only there, so their scale factors, and caches keyed on them, are as before).

    Raises
    ------
    ValueError
        For an unknown layout or pattern, too few spots or genes for the domains, or an
        option out of range (the message names it and what would work).
    """
    _check_args(n_spots, n_genes, n_domains, layout, pattern, image_size)
    expression_map = _domain_map(expression_of, n_domains, "expression_of")
    morphology_map = _domain_map(morphology_of, n_domains, "morphology_of")
    if not (np.isfinite(spot_scale) and 0.25 <= spot_scale <= 10):
        raise ValueError(f"spot_scale={spot_scale!r}; use a factor in [0.25, 10] (2.0: legacy-ST-like spots).")
    if image_signal not in _IMAGE_SIGNALS:
        raise ValueError(f"image_signal={image_signal!r}; use one of {', '.join(_IMAGE_SIGNALS)}.")
    if spot_scale != 1.0 and layout not in _LEGACY_LAYOUTS:
        raise ValueError(f"spot_scale applies to the 'hex' and 'random' layouts only; layout={layout!r}.")
    defaults = LAYOUT_DEFAULTS[layout]
    fold = _marker_range(marker_strength)
    mean_counts = defaults["counts_per_gene"] * n_genes if mean_counts is None else float(mean_counts)
    library_sd = defaults["library_sd"] if library_sd is None else float(library_sd)
    mixing = defaults["mixing"] if mixing is None else float(mixing)
    programs = defaults["programs"] if programs is None else int(programs)
    _check_model(dispersion, mean_counts, library_sd, mixing, programs, program_strength, hires_size)
    legacy = layout in _LEGACY_LAYOUTS
    rng = np.random.default_rng(seed)
    # New features draw from their own streams, so the legacy stream (and hence the
    # "hex"/"random" output for the original arguments) is unchanged.
    aux = np.random.default_rng([seed, 1])

    if layout == "hex":
        xy, array_row, array_col, in_tissue = _hex_layout(n_spots, rng)
    elif layout == "random":
        xy, in_tissue = _random_layout(n_spots, rng)
        array_row, array_col = _array_indices_from_pixels(xy, SPOT_DIAMETER)
    else:
        xy, array_row, array_col, in_tissue = _hd_layout(n_spots, rng, cells=layout == "cells")
    mpp = 1.0 if legacy else HD_MICRONS_PER_PIXEL
    margin = MARGIN if legacy else HD_MARGIN_UM / mpp
    if spot_scale != 1.0:  # a coarser lattice: every full-res distance times spot_scale
        xy, margin, in_tissue = np.round(xy * spot_scale), margin * spot_scale, _scaled_region(in_tissue, spot_scale)

    if pattern == "layers":
        labels, domain_of = _layer_domains(xy, n_domains, rng)
    elif pattern == "blobs":
        labels, domain_of = _blob_domains(xy, n_domains, rng)
    elif pattern == "gradient":
        labels, domain_of = _gradient_domains(xy, n_domains, rng)
    else:
        labels, domain_of = _mixed_domains(xy, n_domains, rng)

    types = _cell_types(labels, n_domains, mixing, aux) if mixing > 0 else labels
    if expression_map is not None:
        types = expression_map[types]
    effect = _program_effect(xy, programs, program_strength, n_genes, aux) if programs > 0 else None
    X, marker_of = _expression(
        labels, n_genes, n_domains, rng,
        types=types, effect=effect, mean_counts=mean_counts, fold=fold,
        dispersion=float(dispersion), library_sd=library_sd, legacy=legacy,
    )  # fmt: skip

    frame = float(xy.max()) + margin  # square full-res frame; tissue starts at the margin
    size = image_size or int(min(MAX_LOWRES, max(64, round(frame * mpp * LOWRES_PX_PER_PITCH / PITCH))))
    lowres_scalef = size / frame
    spot_diameter = SPOT_DIAMETER * spot_scale if legacy else (CELL_DIAMETER_UM if layout == "cells" else BIN_SIZE_UM) / mpp
    scalefactors = {
        "tissue_lowres_scalef": lowres_scalef,
        "tissue_hires_scalef": max(lowres_scalef, min(1.0, MAX_LOWRES / frame)),
        "spot_diameter_fullres": spot_diameter,
        "fiducial_diameter_fullres": spot_diameter * 1.5,
    }
    if not legacy:
        scalefactors["microns_per_pixel"] = mpp
    if layout == "bins":
        scalefactors["bin_size_um"] = BIN_SIZE_UM
    images = {}
    looks_like = domain_of if image_signal == "domains" else _control_image(image_signal, xy, labels, n_domains, mpp, seed)
    if image or hires:
        palette = _palette(n_domains, rng)
        if morphology_map is not None:
            palette = (palette[0][morphology_map], palette[1][morphology_map])
    if image:
        images["lowres"] = _paint_he(looks_like, in_tissue, palette, size, lowres_scalef, rng)
    if hires:
        side = hires_size or int(min(MAX_HIRES, max(64, round(frame * mpp / HIRES_MICRONS_PER_PX))))
        scalefactors["tissue_hires_scalef"] = side / frame
        nuclei = (xy, types if image_signal == "domains" else looks_like(xy[:, 0], xy[:, 1])) if layout == "cells" else None
        images["hires"] = _paint_hires(
            looks_like, in_tissue, palette, side, side / frame, mpp, nuclei, np.random.default_rng([seed, 2])
        )

    names = [f"domain_{d}" for d in range(n_domains)]
    gene_names = [f"gene_{g:0{len(str(n_genes - 1))}d}" for g in range(n_genes)]
    columns = {
        "ground_truth": pd.Categorical.from_codes(labels, categories=names),
        "in_tissue": np.ones(n_spots, dtype=np.int64),
        "array_row": array_row.astype(np.int64),
        "array_col": array_col.astype(np.int64),
    }
    if mixing > 0:
        columns["cell_type"] = pd.Categorical.from_codes(types, categories=[f"type_{d}" for d in range(n_domains)])
    obs = pd.DataFrame(columns, index=pd.Index(_obs_names(layout, array_row, array_col)))
    var = pd.DataFrame(
        {"gene_ids": gene_names, "marker_of": pd.Categorical.from_codes(marker_of, categories=names)},
        index=pd.Index(gene_names),
    )
    adata = AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = xy
    if not legacy:
        adata.obsm["spatial_um"] = xy * mpp
    adata.uns["spatial"] = {
        library_id: {
            "images": images,
            "scalefactors": scalefactors,
            "metadata": {
                "generator": "mihd.data.synthetic_slice",
                "seed": int(seed),
                "layout": layout,
                "pattern": pattern,
                "microns_per_pixel": mpp,
                "n_domains": int(n_domains),
                "marker_strength": [float(f) for f in fold],
                "dispersion": float(dispersion),
                "mean_counts": float(mean_counts),
                "library_sd": float(library_sd),
                "mixing": float(mixing),
                "programs": int(programs),
                "program_strength": float(program_strength),
                **({"expression_of": expression_map.tolist()} if expression_map is not None else {}),
                **({"morphology_of": morphology_map.tolist()} if morphology_map is not None else {}),
                **({"spot_scale": float(spot_scale)} if spot_scale != 1.0 else {}),
                **({"image_signal": image_signal} if image_signal != "domains" else {}),
            },
        }
    }
    return adata


def _check_args(
    n_spots: int, n_genes: int, n_domains: int, layout: str, pattern: str, image_size: int | None
) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(
            f"layout={layout!r}; use 'hex' (Visium lattice), 'random', 'cells' (Xenium-like) "
            "or 'bins' (Visium HD 8 µm)."
        )
    if pattern not in _PATTERNS:
        raise ValueError(f"pattern={pattern!r}; use 'layers', 'blobs', 'gradient' or 'mixed'.")
    if n_domains < 1 or n_spots < n_domains:
        raise ValueError(f"Need 1 <= n_domains <= n_spots; got n_domains={n_domains}, n_spots={n_spots}.")
    if n_genes < n_domains:
        raise ValueError(f"n_genes={n_genes} < n_domains={n_domains}: each domain needs at least one marker gene.")
    if image_size is not None and image_size < 16:
        raise ValueError(f"image_size={image_size} is too small; use at least 16 px (or None for the default).")


def _check_model(
    dispersion: float, mean_counts: float, library_sd: float, mixing: float, programs: int, strength: float,
    hires_size: int | None,
) -> None:  # fmt: skip
    if not dispersion >= 0:
        raise ValueError(f"dispersion={dispersion}; use >= 0 (variance = mean + dispersion * mean^2; 0 is Poisson).")
    if not mean_counts > 0:
        raise ValueError(f"mean_counts={mean_counts}; use a positive mean number of counts per observation.")
    if not library_sd >= 0:
        raise ValueError(f"library_sd={library_sd}; use >= 0 (sd of the log library size).")
    if not 0 <= mixing < 1:
        raise ValueError(f"mixing={mixing}; use a fraction in [0, 1) of observations expressing another domain's type.")
    if programs < 0 or not strength >= 0:
        raise ValueError(f"programs={programs}, program_strength={strength}; use programs >= 0 and strength >= 0.")
    if hires_size is not None and not 16 <= hires_size <= MAX_HIRES:
        raise ValueError(f"hires_size={hires_size}; use 16 to {MAX_HIRES} px (or None for the default).")


def _domain_map(mapping: Sequence[int] | None, k: int, name: str) -> np.ndarray | None:
    """``expression_of`` / ``morphology_of`` checked: one domain index in [0, k) per domain."""
    if mapping is None:
        return None
    arr = np.asarray(mapping)
    if arr.shape != (k,) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= k:
        raise ValueError(f"{name}={list(np.ravel(mapping))!r}: give one domain index in 0..{k - 1} per domain "
                         f"({k} entries), e.g. {list(range(k - 1)) + [k - 2]} to make the last two domains share it.")
    return arr.astype(np.int64)


def _control_image(kind: str, xy: np.ndarray, labels: np.ndarray, k: int, mpp: float, seed: int) -> RegionFn:
    """The domain whose appearance each image position takes in a control image (``image_signal``)."""
    rng = np.random.default_rng([seed, 3])  # its own stream: the counts stay those of image_signal="domains"
    if kind == "shuffled":
        from scipy.spatial import cKDTree

        tree, shuffled = cKDTree(xy), rng.permutation(labels)

        def looks_like(px, py):
            return shuffled[tree.query(np.column_stack([np.ravel(px), np.ravel(py)]))[1]].reshape(np.shape(px))

        return looks_like
    table = rng.integers(0, k, size=4099)
    block = 4.0 / mpp  # 4 µm blocks, in full-res pixels

    def looks_like(px, py):
        bx, by = np.floor(np.asarray(px) / block).astype(np.int64), np.floor(np.asarray(py) / block).astype(np.int64)
        return table[(bx * 7919 + by * 104729) % len(table)]

    return looks_like


def _scaled_region(fn: RegionFn, factor: float) -> RegionFn:
    """A region function of the original full-res pixels, asked in pixels ``factor`` times larger."""
    return lambda px, py: fn(px / factor, py / factor)


def _marker_range(strength: float | Sequence[float]) -> tuple[float, float]:
    lo, hi = (strength, strength) if np.ndim(strength) == 0 else tuple(strength)
    if not 1 <= float(lo) <= float(hi):
        raise ValueError(
            f"marker_strength={strength!r}; use a fold change >= 1, or a pair (low, high) with 1 <= low <= high."
        )
    return float(lo), float(hi)


def _obs_names(layout: str, array_row: np.ndarray, array_col: np.ndarray) -> list[str]:
    n = len(array_row)
    if layout == "cells":
        return [f"cell_{i:07d}" for i in range(n)]
    if layout == "bins":  # as Space Ranger names 8 µm bins
        return [f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(array_row.tolist(), array_col.tolist())]
    return [f"spot_{i:06d}-1" for i in range(n)]


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


def _hd_layout(n: int, rng: np.random.Generator, *, cells: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, RegionFn]:
    """The n innermost cells (jittered hex lattice) or bins (square grid) of an irregular outline."""
    pitch = (CELL_SPACING_UM if cells else BIN_SIZE_UM) / HD_MICRONS_PER_PIXEL
    row_step = pitch * np.sqrt(3) / 2 if cells else pitch
    harmonic = np.arange(2, 8)
    amp = rng.uniform(0.3, 1.0, size=len(harmonic)) * 0.16 / harmonic**0.8
    phase = rng.uniform(0, 2 * np.pi, size=len(harmonic))

    def wobble(theta: np.ndarray) -> np.ndarray:
        out = np.ones_like(theta)
        for h, a, p in zip(harmonic, amp, phase):
            out += a * np.cos(h * theta + p)
        return out

    # Lattice just large enough to hold the outline: its area is R^2 * pi * mean(wobble^2).
    w = wobble(np.linspace(0, 2 * np.pi, 2048, endpoint=False))
    radius = np.sqrt(n * pitch * row_step / (np.pi * np.mean(w**2)))
    half = radius * w.max() * 1.05 + 2 * pitch
    n_cols, n_rows = int(np.ceil(2 * half / pitch)) + 1, int(np.ceil(2 * half / row_step)) + 1
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    x = c * pitch + ((r % 2) * pitch / 2 if cells else 0.0)
    y = r * row_step
    centre = np.array([(n_cols - 1) * pitch / 2, (n_rows - 1) * row_step / 2])

    def shape_radius(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        dx, dy = px - centre[0], py - centre[1]
        return np.hypot(dx, dy) / wobble(np.arctan2(dy, dx))

    rho = shape_radius(x, y)
    keep = np.sort(np.argsort(rho, kind="stable")[:n])
    cutoff = rho[keep].max()
    del rho
    x, y, r, c = x[keep], y[keep], r[keep], c[keep]
    margin = HD_MARGIN_UM / HD_MICRONS_PER_PIXEL
    if cells:
        x = x + rng.normal(0.0, CELL_JITTER * pitch, size=n)
        y = y + rng.normal(0.0, CELL_JITTER * pitch, size=n)
        shift = np.array([margin - x.min(), margin - y.min()])
        array_row, array_col = r - r.min(), 2 * c + r % 2  # Visium-style half-pitch columns
        array_col -= array_col.min()
    else:
        # Bin (row, col) covers [col, col + 1) x [row, row + 1) bin sides from the image origin, as
        # write_visium_hd_folder / Space Ranger grid them; the names follow from it.
        offset = int(np.ceil(margin / pitch))
        array_row, array_col = r - r.min() + offset, c - c.min() + offset
        shift = np.array([(offset - c.min() + 0.5) * pitch, (offset - r.min() + 0.5) * pitch])
    xy = np.column_stack([x, y]) + shift

    def in_tissue(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        return shape_radius(px - shift[0], py - shift[1]) <= cutoff + pitch

    return xy, array_row, array_col, in_tissue


# --------------------------------------------------------------------------- domains


def _unit_coords(xy: np.ndarray) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    lo = xy.min(axis=0)
    span = float(np.ptp(xy, axis=0).max()) or 1.0
    return lambda px, py: ((px - lo[0]) / span, (py - lo[1]) / span)


def _quantile_labels(t: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut t into k bands of unequal, random size (each at least one spot); returns labels and cuts."""
    props = 0.5 / k + 0.5 * rng.dirichlet(np.full(k, 4.0))
    counts = _split_counts(len(t), props)
    order = np.argsort(t, kind="stable")
    labels = np.empty(len(t), dtype=np.int64)
    labels[order] = np.repeat(np.arange(k), counts)
    bounds = np.cumsum(counts)[:-1]
    cuts = (t[order][bounds - 1] + t[order][bounds]) / 2
    return labels, cuts


def _curved_depth(xy: np.ndarray, rng: np.random.Generator) -> RegionFn:
    unit = _unit_coords(xy)
    amp, freq, phase = rng.uniform(0.08, 0.2), rng.uniform(0.6, 1.2), rng.uniform(0, np.pi)

    def depth(px, py):
        u, v = unit(px, py)
        return v + amp * np.sin(np.pi * freq * u + phase)

    return depth


def _layer_domains(xy: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, RegionFn]:
    """Bands of unequal width stacked along a curved (sine-bent) axis."""
    depth = _curved_depth(xy, rng)
    labels, cuts = _quantile_labels(depth(xy[:, 0], xy[:, 1]), k, rng)

    def domain_of(px, py):
        return np.searchsorted(cuts, depth(px, py), side="right")

    return labels, domain_of


def _gradient_domains(xy: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, RegionFn]:
    """Bands cut at quantiles of a smooth field: a random direction plus low-frequency waves."""
    unit = _unit_coords(xy)
    angle = rng.uniform(0, 2 * np.pi)
    n_waves = 4
    freq = rng.uniform(0.6, 1.6, size=n_waves)  # cycles per tissue span: large-scale wander only
    direction = rng.uniform(0, 2 * np.pi, size=n_waves)
    phase = rng.uniform(0, 2 * np.pi, size=n_waves)
    amp = rng.uniform(0.04, 0.09, size=n_waves)

    def field(px, py):
        u, v = unit(px, py)
        t = u * np.cos(angle) + v * np.sin(angle)
        for f, d, p, a in zip(freq, direction, phase, amp):
            t = t + a * np.sin(2 * np.pi * f * (u * np.cos(d) + v * np.sin(d)) + p)
        return t

    labels, cuts = _quantile_labels(field(xy[:, 0], xy[:, 1]), k, rng)

    def domain_of(px, py):
        return np.searchsorted(cuts, field(px, py), side="right")

    return labels, domain_of


def _mixed_domains(xy: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, RegionFn]:
    """Layers with blobs embedded: the last max(1, k // 3) domains are blobs over the layers."""
    n_blobs = max(1, k // 3) if k > 1 else 0
    n_layers = k - n_blobs
    blob, blob_of = _blob_domains(xy, n_blobs + 1, rng, area=0.12)
    background = blob == 0
    while background.sum() < n_layers:  # tiny slices: give a blob spot back to the layers
        fullest = np.argmax(np.bincount(blob, minlength=n_blobs + 1)[1:]) + 1
        background[np.flatnonzero(blob == fullest)[-1]] = True
    depth = _curved_depth(xy, rng)
    layer, cuts = _quantile_labels(depth(xy[background, 0], xy[background, 1]), n_layers, rng)
    labels = n_layers + blob - 1
    labels[background] = layer

    def domain_of(px, py):
        b = blob_of(px, py)
        return np.where(b > 0, n_layers + b - 1, np.searchsorted(cuts, depth(px, py), side="right"))

    return labels, domain_of


def _blob_domains(
    xy: np.ndarray, k: int, rng: np.random.Generator, *, area: float = 0.28
) -> tuple[np.ndarray, RegionFn]:
    """Domain 0 is background; domains 1..k-1 are warped discs centred on far-apart spots.

    ``area`` is the blobs' total area as a fraction of the squared tissue span.
    """
    unit = _unit_coords(xy)
    phase = rng.uniform(0, 2 * np.pi, size=2)

    def warped(px, py):
        u, v = unit(px, py)
        return u + 0.05 * np.sin(4 * np.pi * v + phase[0]), v + 0.05 * np.sin(4 * np.pi * u + phase[1])

    wu, wv = warped(xy[:, 0], xy[:, 1])
    n_blobs = k - 1
    centres = _farthest_points(np.column_stack([wu, wv]), n_blobs, rng)
    radii = rng.uniform(0.8, 1.2, size=n_blobs) * np.sqrt(area / (np.pi * max(n_blobs, 1)))

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


def _cell_types(labels: np.ndarray, k: int, mixing: float, rng: np.random.Generator) -> np.ndarray:
    """Per-observation cell type: the domain's own with probability 1 - mixing, else one of the
    others by a random per-domain composition."""
    if k == 1:
        return labels.copy()
    comp = np.zeros((k, k))
    others = rng.dirichlet(np.ones(k - 1), size=k) * mixing
    for d in range(k):
        comp[d, d] = 1.0 - mixing
        comp[d, np.arange(k) != d] = others[d]
    cum = np.cumsum(comp, axis=1)
    cum[:, -1] = 1.0
    u = rng.random(len(labels))
    types = np.empty(len(labels), dtype=np.int64)
    step = 1 << 18  # bounds the (step, k) comparison
    for s in range(0, len(labels), step):
        types[s : s + step] = (u[s : s + step, None] >= cum[labels[s : s + step]]).sum(axis=1)
    return types


def _program_effect(
    xy: np.ndarray, m: int, strength: float, n_genes: int, rng: np.random.Generator
) -> Callable[[int, int], np.ndarray]:
    """Shared smooth programs: m standardised random fields (3 plane waves of 0.5-1.5 cycles per
    tissue span each) times sparse gene loadings; returns rows -> (rows, genes) log-fold effect."""
    u, v = _unit_coords(xy)(xy[:, 0], xy[:, 1])
    fields = np.empty((len(xy), m), dtype=np.float32)
    for p in range(m):
        f = np.zeros(len(xy))
        for _ in range(3):
            freq, d, ph = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
            f += np.cos(2 * np.pi * freq * (u * np.cos(d) + v * np.sin(d)) + ph)
        fields[:, p] = (f - f.mean()) / (f.std() or 1.0)
    hit = rng.random((m, n_genes)) < 0.25
    sign = rng.choice(np.array([-1.0, 1.0]), size=(m, n_genes))
    loadings = (hit * sign * rng.uniform(0.5, 1.0, size=(m, n_genes)) * strength).astype(np.float32)
    return lambda start, stop: fields[start:stop] @ loadings


def _expression(
    labels: np.ndarray,
    n_genes: int,
    k: int,
    rng: np.random.Generator,
    *,
    types: np.ndarray,
    effect: Callable[[int, int], np.ndarray] | None,
    mean_counts: float,
    fold: tuple[float, float],
    dispersion: float,
    library_sd: float,
    legacy: bool,
    chunk: int = 8192,
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Negative-binomial counts with per-type marker programs; returns (CSR float32, marker codes).

    ``legacy`` keeps the original gamma-Poisson draws (same numbers for the same seed); otherwise
    counts are drawn by inverse CDF, which touches only the non-zero entries after one uniform.
    """
    n_markers = max(1, min(10, n_genes // (2 * k)))
    perm = rng.permutation(n_genes)
    marker_of = np.full(n_genes, -1, dtype=np.int64)
    for d in range(k):
        marker_of[perm[d * n_markers : (d + 1) * n_markers]] = d

    base = np.exp(rng.normal(0.0, 1.0, size=n_genes))
    base[marker_of >= 0] = np.maximum(base[marker_of >= 0], np.median(base))
    base *= mean_counts / base.sum()
    log_fold = rng.normal(0.0, 0.15, size=(k, n_genes))
    is_marker = marker_of >= 0
    log_fold[marker_of[is_marker], np.flatnonzero(is_marker)] += np.log(rng.uniform(*fold, size=is_marker.sum()))
    rates = base * np.exp(log_fold)  # (k, n_genes)

    size_factor = rng.lognormal(0.0, library_sd, size=len(labels))
    if not legacy:  # float32 means: half the memory traffic, and SIMD exp/log
        rates, size_factor = rates.astype(np.float32), size_factor.astype(np.float32)
    out = _CsrBuilder(len(labels), n_genes)
    for start in range(0, len(labels), chunk):
        stop = min(start + chunk, len(labels))
        mu = size_factor[start:stop, None] * rates[types[start:stop]]
        if effect is not None:
            mu *= np.exp(effect(start, stop))
        if legacy:
            if dispersion > 0:
                theta = 1.0 / dispersion
                gamma = rng.standard_gamma(theta, size=mu.shape, dtype=np.float32)  # gamma-Poisson = NB
                counts = rng.poisson(gamma * (mu / theta))
            else:
                counts = rng.poisson(mu)
            rows, cols = np.nonzero(counts)
            out.append(cols, counts[rows, cols].astype(np.float32), np.bincount(rows, minlength=stop - start))
        else:
            out.append(*_nb_sparse(mu, dispersion, rng))
    return out.finish(), marker_of


def _nb_sparse(mu: np.ndarray, dispersion: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Negative-binomial (Poisson when dispersion is 0) counts with means ``mu``, sparse.

    One float32 uniform per entry against P(0) decides zero / non-zero; only the non-zero
    entries walk up the CDF in float64 (P(k) from P(k-1) by the recurrence, the uniform
    refined to full precision), so the work beyond the first pass is O(total counts).
    Entries with a mean above ``_WALK_MAX_MEAN`` (rare at HD depths) are drawn as
    gamma-Poisson instead, which keeps the walk short. Returns the non-zero entries as
    (int32 column, float32 count, per-row count), row-major.
    """
    n_rows, n_cols = mu.shape
    mu = mu.astype(np.float32, copy=False)
    u = rng.random(mu.shape, dtype=np.float32)
    theta = 1.0 / dispersion if dispersion > 0 else 0.0
    if theta:
        p0 = np.exp(np.float32(-theta) * np.log(np.float32(1.0) + mu * np.float32(dispersion)))
    else:
        p0 = np.exp(-mu)
    nonzero = u > p0
    big = mu > _WALK_MAX_MEAN
    has_big = bool(big.any())
    if has_big:
        nonzero &= ~big
        big_flat = np.flatnonzero(big)
        m = mu.ravel()[big_flat].astype(np.float64)
        big_counts = rng.poisson(rng.standard_gamma(theta, size=m.size) * (m / theta) if theta else m)
        big_flat, big_counts = big_flat[big_counts > 0], big_counts[big_counts > 0].astype(np.float32)
    flat = np.flatnonzero(nonzero)
    row_nnz = None if has_big else np.count_nonzero(nonzero, axis=1)
    del nonzero, big, p0

    uf = u.ravel()[flat] + rng.random(len(flat)) * 2.0**-24
    m = mu.ravel()[flat].astype(np.float64)
    if theta:
        q = m / (m + theta)
        pk = np.exp(theta * np.log1p(-q))  # P(0) again, in float64 so the CDF sums to 1
    else:
        q, pk = m, np.exp(-m)
    cdf = pk.copy()
    values = np.ones(len(flat), dtype=np.float32)
    idx = np.arange(len(flat))
    k = 1
    while idx.size:
        # NB: P(k) = P(k-1) (k - 1 + theta) / k * q;  Poisson: P(k) = P(k-1) mu / k.
        pk *= q
        pk *= ((k - 1 + theta) if theta else 1.0) / k
        cdf += pk
        go = uf > cdf
        go &= pk > 1e-30  # P(0) >= 1e-7 here, so this is past the mode: the tail left is negligible
        sel = np.flatnonzero(go)
        idx, uf, q, pk, cdf = idx[sel], uf[sel], q[sel], pk[sel], cdf[sel]
        values[idx] += 1
        k += 1

    if has_big:  # merge the two sets of entries back into row-major order
        flat = np.concatenate([flat, big_flat])
        values = np.concatenate([values, big_counts])
        order = np.argsort(flat, kind="stable")
        flat, values = flat[order], values[order]
        row_nnz = np.bincount(flat // n_cols, minlength=n_rows)
    return (flat % n_cols).astype(np.int32), values, row_nnz


class _CsrBuilder:
    """Appends row chunks into growing float32 / int32 buffers; no dense matrix, no final concatenation.

    Buffers grow (and shrink at the end) with ``ndarray.resize``, i.e. ``realloc``: large blocks
    are remapped in place, so the peak stays near the final size of the matrix.
    """

    def __init__(self, n_rows: int, n_cols: int):
        self.shape = (n_rows, n_cols)
        self.nnz = 0
        self.rows_done = 0
        capacity = min(n_rows * n_cols, 1 << 20)
        self.data = np.empty(capacity, dtype=np.float32)
        self.indices = np.empty(capacity, dtype=np.int32)
        self.row_nnz = np.zeros(n_rows, dtype=np.int64)

    def append(self, cols: np.ndarray, values: np.ndarray, row_nnz: np.ndarray) -> None:
        """Add the next ``len(row_nnz)`` rows: their non-zeros (row-major) and per-row counts."""
        n_rows = len(row_nnz)
        need = self.nnz + len(values)
        if need > len(self.data):
            done = self.rows_done + n_rows
            projected = int(need / done * self.shape[0] * 1.02) + 1024  # from the density so far
            capacity = min(self.shape[0] * self.shape[1], max(need, projected, int(len(self.data) * 1.25)))
            self.data.resize(capacity, refcheck=False)
            self.indices.resize(capacity, refcheck=False)
        self.data[self.nnz : need] = values
        self.indices[self.nnz : need] = cols
        self.row_nnz[self.rows_done : self.rows_done + n_rows] = row_nnz
        self.nnz, self.rows_done = need, self.rows_done + n_rows

    def finish(self) -> sparse.csr_matrix:
        self.data.resize(self.nnz, refcheck=False)
        self.indices.resize(self.nnz, refcheck=False)
        index_dtype = np.int32 if self.nnz < np.iinfo(np.int32).max else np.int64
        indptr = np.zeros(self.shape[0] + 1, dtype=index_dtype)
        np.cumsum(self.row_nnz, out=indptr[1:])
        indices = self.indices if index_dtype == np.int32 else self.indices.astype(np.int64)
        return sparse.csr_matrix((self.data, indices, indptr), shape=self.shape)


# --------------------------------------------------------------------------- images


def _palette(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain haematoxylin fraction ``mix`` and stain colour (more purple = more cellular)."""
    mix = rng.permutation(np.linspace(0.1, 0.75, k)) if k > 1 else np.array([0.35])
    colours = (1 - mix[:, None]) * _EOSIN + mix[:, None] * _HEMATOXYLIN
    colours *= rng.uniform(0.9, 1.05, size=(k, 1))
    return mix, colours


def _paint_he(
    domain_of: RegionFn,
    in_tissue: RegionFn,
    palette: tuple[np.ndarray, np.ndarray],
    size: int,
    scalef: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """H&E-like RGB lowres image: per-domain stain mix and nucleus density, stain unevenness, noise."""
    centres = ((np.arange(size) + 0.5) / scalef).astype(np.float32)  # full-res position of each pixel centre
    px, py = np.meshgrid(centres, centres)  # rows = y, columns = x
    tissue = in_tissue(px, py)
    dom = domain_of(px, py)

    mix, colours = palette
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


def _paint_hires(
    domain_of: RegionFn,
    in_tissue: RegionFn,
    palette: tuple[np.ndarray, np.ndarray],
    size: int,
    scalef: float,
    microns_per_pixel: float,
    cells: tuple[np.ndarray, np.ndarray] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """H&E-like uint8 hires image painted in row blocks, then nuclei drawn as discs.

    Nuclei sit at the cells (``cells`` = (xy, type)) or, for spot / bin layouts, on a jittered
    10 µm lattice thinned by the domain's cellularity; their radius (2-3.5 µm) and darkness
    follow the (cell) type. Where a hires pixel is coarser than 2.5 µm nuclei are per-pixel
    speckle instead, as in the lowres image.
    """
    mix, colours = palette
    density = 0.04 + 0.2 * mix
    um_per_px = microns_per_pixel / scalef
    draw_nuclei = um_per_px <= NUCLEUS_MAX_UM_PER_PX
    # Tissue and domain maps on a grid of at most ~1500 px, looked up per pixel: the region
    # functions are the costly part and their borders need no finer steps than that.
    step = max(1, round(size / 1500))
    grid = ((np.arange(0, size, step) + step / 2) / scalef).astype(np.float32)
    gx, gy = np.meshgrid(grid, grid)
    dom_map = np.where(in_tissue(gx, gy), domain_of(gx, gy), -1).astype(np.int8 if len(mix) < 127 else np.int64)
    del gx, gy
    fill = np.vstack([colours, _GLASS]).astype(np.float32)  # index -1 = glass
    img = np.empty((size, size, 3), dtype=np.uint8)
    block = 32  # low-frequency stain unevenness on a coarse grid, interpolated per row block
    coarse = rng.normal(0.0, 0.03, size=(size // block + 2,) * 2).astype(np.float32)
    pos = (np.arange(size) + 0.5) / block
    j0 = np.minimum(pos.astype(np.int64), coarse.shape[1] - 2)
    fj = (pos - j0).astype(np.float32)
    cols = np.arange(size) // step
    rows_per_block = max(1, (1 << 20) // size)
    for r0 in range(0, size, rows_per_block):
        r1 = min(size, r0 + rows_per_block)
        dom = dom_map[(np.arange(r0, r1) // step)[:, None], cols[None, :]]
        tissue = dom >= 0
        tile = fill[dom]
        if not draw_nuclei:
            speck = tissue & (rng.random(tissue.shape, dtype=np.float32) < density[dom])
            tile[speck] = 0.35 * tile[speck] + 0.65 * _NUCLEUS
        i0, fi = j0[r0:r1], fj[r0:r1, None]
        along = coarse[i0] * (1 - fi) + coarse[i0 + 1] * fi  # (rows, coarse columns)
        shade = along[:, j0] * (1 - fj) + along[:, j0 + 1] * fj
        shade *= tissue
        shade += rng.normal(0.0, 0.02, size=shade.shape).astype(np.float32)  # grain, same in every channel
        tile += shade[..., None]
        np.clip(tile, 0.0, 1.0, out=tile)
        img[r0:r1] = np.rint(tile * 255)
    if not draw_nuclei:
        return img

    if cells is not None:
        xy, kind = cells
    else:  # nuclei on a jittered 10 µm lattice over the frame, thinned by cellularity
        pitch = CELL_SPACING_UM / microns_per_pixel
        frame = size / scalef
        g = np.arange(0.0, frame, pitch)
        gx, gy = np.meshgrid(g, np.arange(0.0, frame, pitch * np.sqrt(3) / 2))
        gx = gx + (np.arange(gx.shape[0])[:, None] % 2) * pitch / 2
        xy = np.column_stack([gx.ravel(), gy.ravel()]) + rng.normal(0.0, CELL_JITTER * pitch, size=(gx.size, 2))
        kind = domain_of(xy[:, 0], xy[:, 1])
        keep = in_tissue(xy[:, 0], xy[:, 1]) & (rng.random(len(xy)) < (density / density.max())[kind])
        xy, kind = xy[keep], kind[keep]
    radius = (2.0 + 2.0 * mix) / um_per_px  # per type, hires px
    nucleus_rgb = (_NUCLEUS * (1.15 - 0.3 * mix[:, None]) * 255).astype(np.float32)  # (k, 3)
    reach = int(np.ceil(radius.max())) + 1
    dy, dx = (a.ravel() for a in np.mgrid[-reach : reach + 1, -reach : reach + 1])
    per_chunk = max(1, (1 << 21) // dy.size)
    for s in range(0, len(xy), per_chunk):
        cx, cy = xy[s : s + per_chunk, 0] * scalef - 0.5, xy[s : s + per_chunk, 1] * scalef - 0.5  # pixel indices
        t = kind[s : s + per_chunk]
        rr, cc = np.rint(cy)[:, None] + dy, np.rint(cx)[:, None] + dx
        inside = (rr - cy[:, None]) ** 2 + (cc - cx[:, None]) ** 2 <= radius[t, None] ** 2
        inside &= (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        r, c = rr[inside].astype(np.int64), cc[inside].astype(np.int64)
        colour = np.broadcast_to(nucleus_rgb[t][:, None, :], (*inside.shape, 3))[inside]
        blended = 0.3 * img[r, c] + 0.7 * colour + rng.normal(0.0, 6.0, size=(len(r), 1))
        img[r, c] = np.clip(blended, 0, 255).astype(np.uint8)
    return img
