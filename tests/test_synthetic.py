"""The synthetic slice generator: shapes, determinism, domains, image, expression programs."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.spatial import cKDTree

from mihd.data import synthetic_slice

COMBOS = list(itertools.product(["hex", "random"], ["layers", "blobs"]))


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
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_slice(50, **kwargs)
