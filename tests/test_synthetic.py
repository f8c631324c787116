"""The synthetic slice generator: shapes, determinism, domains, image, expression programs,
the HD layouts (cells, bins), patterns, hires image, and the original output kept bit for bit."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.spatial import cKDTree

from mihd.data import synthetic_slice
from mihd.data._synthetic import MAX_HIRES, _nb_sparse

COMBOS = list(itertools.product(["hex", "random"], ["layers", "blobs"]))
HD_COMBOS = list(itertools.product(["cells", "bins"], ["layers", "blobs", "gradient", "mixed"]))


def _spot_pixels(adata, library_id="synthetic"):
    lib = adata.uns["spatial"][library_id]
    img = lib["images"]["lowres"]
    px = np.floor(adata.obsm["spatial"] * lib["scalefactors"]["tissue_lowres_scalef"]).astype(int)
    return img, px


def test_shapes_and_slots():
    adata = synthetic_slice(300, n_genes=40, n_domains=4)
    assert adata.shape == (300, 40)
    assert sparse.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert np.array_equal(adata.X.data, np.round(adata.X.data)) and adata.X.data.min() > 0
    assert adata.obsm["spatial"].shape == (300, 2) and adata.obsm["spatial"].dtype == np.float64
    gt = adata.obs["ground_truth"]
    assert isinstance(gt.dtype, pd.CategoricalDtype)
    assert list(gt.cat.categories) == [f"domain_{d}" for d in range(4)]
    assert {"in_tissue", "array_row", "array_col"} <= set(adata.obs)
    lib = adata.uns["spatial"]["synthetic"]
    assert {"tissue_lowres_scalef", "tissue_hires_scalef", "spot_diameter_fullres"} <= set(lib["scalefactors"])
    img = lib["images"]["lowres"]
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert adata.var["marker_of"].notna().sum() == 4 * max(1, min(10, 40 // 8))


def test_deterministic_per_seed():
    a, b, c = synthetic_slice(200, seed=7), synthetic_slice(200, seed=7), synthetic_slice(200, seed=8)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert (a.obs["ground_truth"] == b.obs["ground_truth"]).all()
    img_a, img_b = (s.uns["spatial"]["synthetic"]["images"]["lowres"] for s in (a, b))
    np.testing.assert_array_equal(img_a, img_b)
    assert (a.X != c.X).nnz > 0


@pytest.mark.parametrize(("layout", "pattern"), COMBOS)
@pytest.mark.parametrize("n_spots", [12, 800])
def test_all_domains_present(layout, pattern, n_spots):
    adata = synthetic_slice(n_spots, n_genes=20, n_domains=6, layout=layout, pattern=pattern, image_size=32)
    assert adata.obs["ground_truth"].value_counts().min() >= 1


def test_hex_pitch_like_visium():
    xy = synthetic_slice(500, image=False).obsm["spatial"]
    d, _ = cKDTree(xy).query(xy, k=2)
    assert np.median(d[:, 1]) == pytest.approx(100, abs=1)


@pytest.mark.parametrize(("layout", "pattern"), COMBOS)
def test_image_colour_follows_domain(layout, pattern):
    adata = synthetic_slice(1500, n_domains=5, layout=layout, pattern=pattern, seed=1)
    img, px = _spot_pixels(adata)
    assert (px >= 0).all() and (px[:, 0] < img.shape[1]).all() and (px[:, 1] < img.shape[0]).all()
    # 3x3 lowres patch around each spot, averaged per domain
    offsets = np.arange(-1, 2)
    rows = np.clip(px[:, 1, None, None] + offsets[None, :, None], 0, img.shape[0] - 1)
    cols = np.clip(px[:, 0, None, None] + offsets[None, None, :], 0, img.shape[1] - 1)
    patch_mean = img[rows, cols].mean(axis=(1, 2))
    glass = np.array([0.96, 0.95, 0.97])
    assert (np.abs(patch_mean - glass).max(axis=1) > 0.05).mean() > 0.99  # spots land on tissue, not glass
    per_domain = pd.DataFrame(patch_mean).groupby(adata.obs["ground_truth"].to_numpy()).mean().to_numpy()
    gaps = [np.abs(per_domain[i] - per_domain[j]).max() for i, j in itertools.combinations(range(5), 2)]
    assert min(gaps) > 0.02


def test_markers_up_in_their_domain():
    adata = synthetic_slice(1000, n_genes=100, n_domains=4, seed=2)
    X = adata.X.toarray()
    gt = adata.obs["ground_truth"].to_numpy()
    for dom in adata.obs["ground_truth"].cat.categories:
        markers = (adata.var["marker_of"] == dom).to_numpy()
        inside = X[gt == dom][:, markers].mean()
        outside = X[gt != dom][:, markers].mean()
        assert inside > 2 * outside


def test_no_image():
    adata = synthetic_slice(100, image=False)
    assert adata.uns["spatial"]["synthetic"]["images"] == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layout": "grid"}, "layout='grid'"),
        ({"pattern": "stripes"}, "pattern='stripes'"),
        ({"n_domains": 0}, "n_domains"),
        ({"n_genes": 2, "n_domains": 3}, "marker gene"),
        ({"image_size": 4}, "image_size"),
        ({"layout": "spots"}, "'cells'"),
        ({"pattern": "waves"}, "'gradient'"),
        ({"dispersion": -0.1}, "dispersion"),
        ({"mixing": 1.0}, "mixing"),
        ({"marker_strength": 0.5}, "marker_strength"),
        ({"marker_strength": (5, 2)}, "marker_strength"),
        ({"mean_counts": 0}, "mean_counts"),
        ({"programs": -1}, "programs"),
        ({"hires": True, "hires_size": 8}, "hires_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_slice(50, **kwargs)


# --------------------------------------------------------------------------- original output, bit for bit


def _sha1(a) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


# Recorded from the generator before the HD layouts were added (tests/conftest.py's tiny_slice
# and one random/blobs slice). A numpy release that changed its gamma / Poisson samplers
# would change these too.
LEGACY = [
    (
        dict(n_spots=300, n_genes=60, n_domains=3, seed=0),
        {
            "X.data": "1b34fcf118950546efc6db3bc1eb88a1f485ab39",
            "X.indices": "4927e26780a22dd4946e4542d6df11f4e6cd5a80",
            "X.indptr": "53cb939257cdb0b5423e3ede434eb2ddfa049b6c",
            "spatial": "9b8b07d3aeaccf877db86bc518439bdc782fc2cd",
            "ground_truth": "14f9b5fad07f29508df5708535749ada6522dff4",
            "lowres": "10956b07577e6373efc44483c60e8cf7b3438dea",
        },
    ),
    (
        dict(n_spots=800, n_genes=20, n_domains=6, layout="random", pattern="blobs", image_size=32),
        {
            "X.data": "b8ca83efa9bb77d13df328f3b2a9c0001a9bc322",
            "X.indices": "548a6a2ae9043fa5adf27ecb404478fd5efd0f9c",
            "X.indptr": "ecda879419279473ea0cb91e367abdcdd00ffbbf",
            "spatial": "fb7a7658842a674ebcb994edaf1845dbfc6001b2",
            "ground_truth": "9b36f5546d6d35c8608382466d2cffe5d933163a",
            "lowres": "92e2d97db08ae774a0a070c67d34922d632bc582",
        },
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), LEGACY)
def test_original_output_unchanged(kwargs, expected):
    adata = synthetic_slice(**kwargs)
    lib = adata.uns["spatial"]["synthetic"]
    got = {
        "X.data": _sha1(adata.X.data),
        "X.indices": _sha1(adata.X.indices),
        "X.indptr": _sha1(adata.X.indptr),
        "spatial": _sha1(adata.obsm["spatial"]),
        "ground_truth": _sha1(adata.obs["ground_truth"].cat.codes.to_numpy()),
        "lowres": _sha1(lib["images"]["lowres"]),
    }
    assert got == expected
    assert list(adata.obs.columns) == ["ground_truth", "in_tissue", "array_row", "array_col"]
    assert list(adata.obsm) == ["spatial"]
    assert set(lib["scalefactors"]) == {
        "tissue_lowres_scalef", "tissue_hires_scalef", "spot_diameter_fullres", "fiducial_diameter_fullres"
    }  # fmt: skip
    assert lib["metadata"]["microns_per_pixel"] == 1.0


# --------------------------------------------------------------------------- HD layouts and patterns


@pytest.mark.parametrize(("layout", "pattern"), HD_COMBOS)
@pytest.mark.parametrize("n_spots", [12, 3000])
def test_hd_layouts_every_domain_inside_the_frame(layout, pattern, n_spots):
    adata = synthetic_slice(n_spots, n_genes=30, n_domains=6, layout=layout, pattern=pattern, seed=3)
    assert adata.n_obs == n_spots and adata.obs_names.is_unique
    assert adata.obs["ground_truth"].value_counts().min() >= 1
    lib = adata.uns["spatial"]["synthetic"]
    img = lib["images"]["lowres"]
    xy = adata.obsm["spatial"]
    px = xy * lib["scalefactors"]["tissue_lowres_scalef"]
    assert (xy > 0).all() and (px[:, 0] < img.shape[1]).all() and (px[:, 1] < img.shape[0]).all()
    assert img.shape[0] <= 2000
    np.testing.assert_allclose(adata.obsm["spatial_um"], xy * 0.2125)


@pytest.mark.parametrize(("layout", "spacing_um"), [("cells", 10.0), ("bins", 8.0)])
def test_hd_spacing_and_pixel_size(layout, spacing_um):
    adata = synthetic_slice(4000, n_genes=20, layout=layout, image=False)
    sf = adata.uns["spatial"]["synthetic"]["scalefactors"]
    assert sf["microns_per_pixel"] == 0.2125
    assert sf["spot_diameter_fullres"] * sf["microns_per_pixel"] == pytest.approx(10.0 if layout == "cells" else 8.0)
    um = adata.obsm["spatial_um"]
    d, _ = cKDTree(um).query(um, k=2)
    assert np.median(d[:, 1]) == pytest.approx(spacing_um, rel=0.05)
    if layout == "bins":
        assert sf["bin_size_um"] == 8.0
        assert adata.obs_names[0].startswith("s_008um_")
        np.testing.assert_allclose(np.diff(np.unique(np.round(um[:, 0], 6)))[:5], 8.0)


@pytest.mark.parametrize("pattern", ["layers", "blobs", "gradient", "mixed"])
def test_domains_are_regions_at_any_size(pattern):
    """Domain geometry is relative to the tissue: neighbours share their domain at 10^3 and 2.10^4 cells."""
    for n in (1000, 20000):
        adata = synthetic_slice(n, n_genes=20, n_domains=5, layout="cells", pattern=pattern, image=False, seed=1)
        xy = adata.obsm["spatial"]
        gt = adata.obs["ground_truth"].cat.codes.to_numpy()
        _, nn = cKDTree(xy).query(xy, k=7)
        same = (gt[nn[:, 1:]] == gt[:, None]).mean()
        assert same > (0.8 if n == 1000 else 0.93), (n, same)


def test_hd_counts_sparse_deterministic_and_seeded():
    kw = dict(n_genes=50, n_domains=4, layout="cells", pattern="gradient", hires=True)
    a, b, c = (synthetic_slice(1500, seed=s, **kw) for s in (5, 5, 6))
    assert sparse.isspmatrix_csr(a.X) and a.X.dtype == np.float32 and a.X.indices.dtype == np.int32
    assert a.X.has_sorted_indices and np.array_equal(a.X.data, np.round(a.X.data)) and a.X.data.min() > 0
    assert a.X.nnz < 0.8 * np.prod(a.shape)  # HD depth: sparse
    assert (a.X != b.X).nnz == 0 and (a.X != c.X).nnz > 0
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert not np.array_equal(a.obsm["spatial"], c.obsm["spatial"])
    assert (a.obs["ground_truth"] == b.obs["ground_truth"]).all()
    for key in ("lowres", "hires"):
        np.testing.assert_array_equal(*(s.uns["spatial"]["synthetic"]["images"][key] for s in (a, b)))


def test_hd_markers_mixing_and_library_size():
    adata = synthetic_slice(6000, n_genes=100, n_domains=4, layout="cells", seed=2, image=False)
    meta = adata.uns["spatial"]["synthetic"]["metadata"]
    assert meta["mixing"] == 0.15 and meta["programs"] == 3
    own = (adata.obs["cell_type"].cat.codes.to_numpy() == adata.obs["ground_truth"].cat.codes.to_numpy()).mean()
    assert own == pytest.approx(0.85, abs=0.03)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 50 < np.median(totals) < 200 and totals.std() / totals.mean() > 0.3  # ~100 counts, varying
    X = adata.X.toarray()
    gt = adata.obs["ground_truth"].to_numpy()
    for dom in adata.obs["ground_truth"].cat.categories:
        markers = (adata.var["marker_of"] == dom).to_numpy()
        assert X[gt == dom][:, markers].mean() > 1.8 * X[gt != dom][:, markers].mean()


@pytest.mark.parametrize("layout", ["cells", "hex"])
def test_hires_image_bounded_and_follows_domain(layout):
    n = 2500 if layout == "cells" else 400
    adata = synthetic_slice(n, n_genes=20, n_domains=4, layout=layout, hires=True, seed=4)
    lib = adata.uns["spatial"]["synthetic"]
    img, sf = lib["images"]["hires"], lib["scalefactors"]
    assert img.dtype == np.uint8 and img.shape[0] == img.shape[1] <= MAX_HIRES and img.shape[2] == 3
    px = np.floor(adata.obsm["spatial"] * sf["tissue_hires_scalef"]).astype(int)
    assert (px >= 0).all() and (px < img.shape[0]).all()
    # mean colour of a one-cell patch around each observation, per domain
    half = max(1, int(sf["spot_diameter_fullres"] * sf["tissue_hires_scalef"] / 2))
    offsets = np.arange(-half, half + 1)
    rows = np.clip(px[:, 1, None, None] + offsets[None, :, None], 0, img.shape[0] - 1)
    cols = np.clip(px[:, 0, None, None] + offsets[None, None, :], 0, img.shape[1] - 1)
    patch_mean = img[rows, cols].astype(float).mean(axis=(1, 2))
    per_domain = pd.DataFrame(patch_mean).groupby(adata.obs["ground_truth"].to_numpy()).mean().to_numpy()
    gaps = [np.abs(per_domain[i] - per_domain[j]).max() for i, j in itertools.combinations(range(4), 2)]
    assert min(gaps) > 5  # of 255
    small = synthetic_slice(300, n_genes=20, layout=layout, hires=True, hires_size=256, image=False)
    assert small.uns["spatial"]["synthetic"]["images"]["hires"].shape == (256, 256, 3)
    assert "lowres" not in small.uns["spatial"]["synthetic"]["images"]


@pytest.mark.parametrize("dispersion", [0.2, 0.0])
def test_nb_sampler_moments(dispersion):
    """The inverse-CDF sampler (and its gamma-Poisson branch above mean 16) gives NB moments."""
    rng = np.random.default_rng(0)
    means = np.array([0.05, 0.7, 3.0, 40.0], dtype=np.float32)
    mu = np.tile(np.repeat(means, 50), (1000, 1))
    cols, values, row_nnz = _nb_sparse(mu, dispersion, rng)
    X = sparse.csr_matrix((values, cols, np.concatenate([[0], np.cumsum(row_nnz)])), shape=mu.shape).toarray()
    for j, m in enumerate(means):
        block = X[:, j * 50 : (j + 1) * 50]
        assert block.mean() == pytest.approx(m, rel=0.03)
        assert block.var() == pytest.approx(m + dispersion * m**2, rel=0.06)
