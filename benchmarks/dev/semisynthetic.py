"""Semi-synthetic DLPFC slices for choosing defaults without the scored slices' labels.

Real geometry, synthetic expression: the spot positions, lowres H&E image and manual
layer map of a DLPFC slice that is *not* scored in the peers comparison (151507-151510,
151669-151672, 151675, 151676; those have no counts here), with counts simulated per
layer. The expression model is built to be hard in the ways real cortex is:

- weak layer markers (log fold 0.3-0.9 on a few genes per layer);
- cortical-depth gradients: a share of genes change monotonically with the layer order
  L1 -> WM (so adjacent layers differ little);
- spots mix cell types of *adjacent* layers (a 55 µm spot straddles borders);
- smooth spatial nuisance programs independent of the layers (batch-like, gradients);
- per-spot library size (log-normal) and negative-binomial noise (theta 5).

Used only to choose mihd's defaults (``benchmarks/dev/run_dev.py``); the scored slices
151673 / 151674 are never touched here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

SCORED_SLICES = frozenset({"151673", "151674"})  # issue 6 scores these: never used here
DEV_SLICES = ("151507", "151508", "151509", "151510", "151669", "151670", "151671", "151672", "151675", "151676")
# Named generator settings (run_dev.py --preset): v1 = the defaults; v2 adds within-layer
# subtypes and finer nuisance fields so the PCA spectrum decays gradually like the real slices'.
PRESETS = {
    "v1": {},
    "v2": {"subtypes": 2, "subtype_markers": 15, "subtype_fold": (0.15, 0.4), "fine_programs": 8, "fine_strength": 0.07,
           "depth_slope": 0.12},
    # v3: v2 calibrated to the real slices' label-free statistics (benchmarks/dev/calibrate.py):
    # ~1,300 UMI per spot, a strong white-matter program (PC1, heavy-tailed), a spatially structured
    # library size (PC2, Moran's I ~0.5-0.6), mixing of adjacent layers at borders only.
    "v3": {"subtypes": 2, "subtype_markers": 15, "subtype_fold": (0.15, 0.4), "fine_programs": 8, "fine_strength": 0.07,
           "depth_slope": 0.12, "counts_per_spot": 1300.0, "markers_per_layer": 30, "program_strength": 0.12,
           "wm_markers": 300, "wm_fold": (1.5, 3.5), "library_sd": 0.25, "library_layer_sd": 0.3, "library_field_sd": 0.2,
           "border_mixing": True},
}
# v4: v3 plus rare local programs (vessel-like hotspots), calibrated on the kurtosis of the real slices'
# Pearson-residual PCs (calibrate.py --encoder pearson), which v3 lacked.
PRESETS["v4"] = {**PRESETS["v3"], "hotspot_programs": 3, "hotspot_genes": 8, "hotspot_fold": (2.0, 4.0), "hotspot_frac": 0.02}


def preset_options(preset: str, overrides=()) -> dict:
    """A preset's generator options with ``KEY=VALUE`` overrides (``a:b`` for a range; integers stay
    integers; true / false for switches). Unknown presets or keys are refused with what exists."""
    import inspect

    if preset not in PRESETS:
        raise SystemExit(f"unknown --preset {preset!r}; presets: {', '.join(PRESETS)}")
    accepted = [p for p in inspect.signature(dlpfc_geometry_slice).parameters if p not in ("folder", "seed")]

    def parse(v: str):
        if v.lower() in ("true", "false"):
            return v.lower() == "true"
        return int(v) if v.lstrip("-").isdigit() else float(v)

    opts = dict(PRESETS[preset])
    for item in overrides:
        key, _, val = item.partition("=")
        if key not in accepted or not val:
            raise SystemExit(f"--gen {item!r}: use KEY=VALUE with KEY one of {', '.join(accepted)}")
        try:
            opts[key] = tuple(parse(x) for x in val.split(":")) if ":" in val else parse(val)
        except ValueError:
            raise SystemExit(f"--gen {item!r}: {key} takes a number, a range a:b, or true / false") from None
    return opts


LAYER_ORDER = ("Layer_1", "Layer_2", "Layer_3", "Layer_4", "Layer_5", "Layer_6", "WM")


def _read_geometry(folder: Path):
    pos = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    pos = pos[pos[1] == 1]
    truth = pd.read_csv(folder / "truth.tsv", sep="\t", index_col=0)["layer"]
    truth = truth.reindex(pos.index)
    xy = pos[[5, 4]].to_numpy(float)  # (x = col, y = row) full-res pixels, as Space Ranger
    scale = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    from matplotlib.image import imread

    img = imread(folder / "spatial" / "tissue_lowres_image.png")[..., :3].astype(np.float32)
    return pos, truth, xy, scale, img


def _smooth_field(u: np.ndarray, rng: np.random.Generator, cycles: tuple[float, float]) -> np.ndarray:
    """(n,) standardised smooth random field: 3 plane waves of ``cycles`` per tissue span."""
    f = np.zeros(len(u))
    for _ in range(3):
        fr, d, ph = rng.uniform(*cycles), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        f += np.cos(2 * np.pi * fr * (u[:, 0] * np.cos(d) + u[:, 1] * np.sin(d)) + ph)
    return (f - f.mean()) / f.std()


def _nuisance_program(u: np.ndarray, rng: np.random.Generator, cycles: tuple[float, float], strength: float, n_genes: int):
    """(n, genes) log-fold effect of one smooth random field (``_smooth_field``) on a random
    quarter of the genes, loadings N(0, strength)."""
    f = _smooth_field(u, rng, cycles)
    load = (rng.random(n_genes) < 0.25) * rng.normal(0.0, strength, n_genes)
    return f[:, None] * load[None, :]


def dlpfc_geometry_slice(
    folder: str | Path,
    *,
    seed: int = 0,
    n_genes: int = 3000,
    counts_per_spot: float = 3000.0,
    marker_fold: tuple[float, float] = (0.3, 0.9),
    markers_per_layer: int = 15,
    depth_genes: float = 0.15,
    depth_slope: float = 0.2,
    adjacent_mixing: float = 0.25,
    programs: int = 4,
    program_strength: float = 0.15,
    library_sd: float = 0.3,
    theta: float = 5.0,
    subtypes: int = 0,
    subtype_markers: int = 30,
    subtype_fold: tuple[float, float] = (0.2, 0.6),
    fine_programs: int = 0,
    fine_strength: float = 0.2,
    wm_markers: int = 0,
    wm_fold: tuple[float, float] = (1.0, 2.5),
    library_layer_sd: float = 0.0,
    library_field_sd: float = 0.0,
    border_mixing: bool = False,
    hotspot_programs: int = 0,
    hotspot_genes: int = 8,
    hotspot_fold: tuple[float, float] = (2.0, 4.0),
    hotspot_frac: float = 0.01,
) -> AnnData:
    """One semi-synthetic slice: real DLPFC geometry + layer map, simulated counts.

    ``subtypes`` > 0 gives every layer that many cell subtypes, each with its own weak markers
    (``subtype_markers`` genes, log fold ``subtype_fold``), one per spot at random: within-layer
    heterogeneity. ``fine_programs`` adds that many nuisance fields of higher spatial frequency
    (1.5-6 cycles per tissue span) with strengths decaying as 1/sqrt(p). Both draw from their own
    random stream, so the default (0, 0) slices are exactly the earlier ones; the ``PRESETS``
    name the settings used in ``results.csv``.

    ``wm_markers`` > 0 gives the white matter (the last layer) a strong program of that many genes
    (log fold ``wm_fold``), as oligodendrocyte genes mark it in real cortex. ``library_layer_sd`` and
    ``library_field_sd`` make the library size spatially structured like the real slices' (a log
    offset per layer and a smooth field, besides the per-spot ``library_sd``). ``border_mixing``
    replaces the i.i.d. mixing of adjacent layers (any spot, anywhere in its layer) by mixing at
    borders only: each spot takes the layer of a random one of itself and its 6 nearest spots, as a
    55 µm spot straddles a border. All four draw from a third stream, so v1 / v2 slices are unchanged.

    ``hotspot_programs`` > 0 adds that many rare, strong, local programs, as blood vessels
    (haemoglobin genes) or meninges mark a few real spots: each lifts ``hotspot_genes`` genes by a
    log fold in ``hotspot_fold`` (divided by sqrt(p + 1) for the p-th program) in small patches (a
    seed spot and its 6 nearest) covering about ``hotspot_frac`` of the spots, anywhere in the tissue. They draw from a fourth stream, so v1-v3
    slices are unchanged.
    """
    folder = Path(folder)
    pos, truth, xy, scale, img = _read_geometry(folder)
    rng = np.random.default_rng([seed, int(folder.name)])
    layers = [l for l in LAYER_ORDER if l in set(truth.dropna())]
    # Unannotated (NA) spots still need an expression: the nearest annotated spot's layer.
    known = truth.notna().to_numpy()
    depth_of = {l: i for i, l in enumerate(layers)}
    lab = np.full(len(truth), -1)
    lab[known] = truth[known].map(depth_of).to_numpy()
    if (~known).any():
        _, j = cKDTree(xy[known]).query(xy[~known])
        lab[~known] = lab[known][j]
    k = len(layers)
    n = len(lab)

    # Cell type of each spot: its layer, or (with prob adjacent_mixing) an adjacent layer.
    types = lab.copy()
    mix = rng.random(n) < adjacent_mixing
    step = np.where(rng.random(n) < 0.5, -1, 1)
    types[mix] = np.clip(lab[mix] + step[mix], 0, k - 1)
    third = np.random.default_rng([seed, int(folder.name), 3])
    if border_mixing:
        _, nb = cKDTree(xy).query(xy, 7)
        types = lab[nb[np.arange(n), third.integers(7, size=n)]]

    log_base = rng.normal(0.0, 1.0, n_genes)
    log_base += np.log(counts_per_spot) - np.log(np.exp(log_base).sum())
    effect = np.zeros((k, n_genes))
    for d in range(k):  # weak markers per layer
        g = rng.choice(n_genes, markers_per_layer, replace=False)
        effect[d, g] += rng.uniform(*marker_fold, markers_per_layer)
    graded = rng.random(n_genes) < depth_genes  # monotone with cortical depth
    slope = rng.normal(0.0, depth_slope, n_genes) * graded
    effect += np.arange(k)[:, None] * slope[None, :]

    u = (xy - xy.mean(0)) / np.ptp(xy, 0).max()
    nuisance = np.zeros((n, n_genes))
    for _ in range(programs):
        nuisance += _nuisance_program(u, rng, (0.5, 1.5), program_strength, n_genes)
    lib = rng.normal(0.0, library_sd, n)
    log_mu = log_base[None, :] + effect[types] + nuisance + lib[:, None]
    extra = np.random.default_rng([seed, int(folder.name), 2])
    if subtypes > 0:
        sub_effect = np.zeros((k * subtypes, n_genes))
        for t in range(k * subtypes):
            g = extra.choice(n_genes, subtype_markers, replace=False)
            sub_effect[t, g] = extra.uniform(*subtype_fold, subtype_markers)
        log_mu += sub_effect[types * subtypes + extra.integers(subtypes, size=n)]
    for p in range(fine_programs):
        log_mu += _nuisance_program(u, extra, (1.5, 6.0), fine_strength / np.sqrt(p + 1), n_genes)
    if wm_markers > 0:
        g = third.choice(n_genes, wm_markers, replace=False)
        log_mu[np.ix_(types == k - 1, g)] += third.uniform(*wm_fold, wm_markers)
    if library_layer_sd > 0 or library_field_sd > 0:
        field = _smooth_field(u, third, (0.5, 2.0))
        log_mu += (third.normal(0.0, library_layer_sd, k)[lab] + library_field_sd * field)[:, None]
    if hotspot_programs > 0:
        fourth = np.random.default_rng([seed, int(folder.name), 4])
        _, nb7 = cKDTree(xy).query(xy, 7)
        for p in range(hotspot_programs):
            g = fourth.choice(n_genes, hotspot_genes, replace=False)
            seeds = fourth.choice(n, max(1, int(round(hotspot_frac * n / 7))), replace=False)
            spots = np.unique(nb7[seeds])
            fold = fourth.uniform(*hotspot_fold, hotspot_genes) / np.sqrt(p + 1)  # one dominant program, weaker others
            log_mu[np.ix_(spots, g)] += fold[None, :]
    mu = np.exp(log_mu)
    counts = rng.negative_binomial(theta, theta / (theta + mu)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "in_tissue": 1,
            "array_row": pos[2].to_numpy(),
            "array_col": pos[3].to_numpy(),
            "ground_truth": pd.Categorical(truth.to_numpy(), categories=layers),
        },
        index=pos.index,
    )
    names = [f"g{i:04d}" for i in range(n_genes)]
    adata = AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame({"gene_ids": names}, index=names))
    adata.obsm["spatial"] = xy
    lib_id = f"semisyn_{folder.name}"
    adata.uns["spatial"] = {lib_id: {"images": {"lowres": img}, "scalefactors": scale, "metadata": {"semisynthetic": True}}}
    return adata
