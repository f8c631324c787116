"""Spatial majority-vote refinement (`mihd.refine`) against a per-spot Python reference."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mihd.graph import knn_indices, radius_neighbors
from mihd.refine import _as_csr_arrays, _vote_torch, majority_vote, refine_labels

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- reference


def reference_refine(coords, labels, *, n_neighbors=None, radius=None, order=None):
    """One spot at a time: voters are self + k nearest others, or everything within radius.

    ``order`` is the label order behind "smallest label" in the tie rule (sorted by default).
    """
    coords = np.asarray(coords, float)
    labels = list(labels)
    rank = {lab: i for i, lab in enumerate(order if order is not None else sorted(set(labels)))}
    out = []
    for i in range(len(coords)):
        d2 = ((coords - coords[i]) ** 2).sum(1)
        if radius is not None:
            voters = np.flatnonzero(d2 <= radius**2)
        else:
            d2[i] = -1.0  # self first
            voters = np.argsort(d2, kind="stable")[: n_neighbors + 1]
        counts = Counter(labels[j] for j in voters)
        top = max(counts.values())
        if counts[labels[i]] == top:
            out.append(labels[i])
        else:
            out.append(min((lab for lab, c in counts.items() if c == top), key=rank.__getitem__))
    return out


def noisy_bands(n=400, n_labels=4, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    coords = rng.random((n, 2)) * 100.0
    labels = np.minimum((coords[:, 0] / 100.0 * n_labels).astype(int), n_labels - 1)
    flip = rng.random(n) < noise
    labels[flip] = rng.integers(0, n_labels, flip.sum())
    return coords, labels


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("k", [1, 4, 6, 11])
@pytest.mark.parametrize("engine", ["kdtree", "grid"])
def test_knn_vote_matches_reference(k, engine):
    # few labels and even voter counts (k odd -> k + 1 voters) give many ties
    coords, labels = noisy_bands(n_labels=3, noise=0.5, seed=k)
    got = refine_labels(coords, labels, n_neighbors=k, engine=engine)
    np.testing.assert_array_equal(got, reference_refine(coords, labels, n_neighbors=k))


@pytest.mark.parametrize("radius", [4.0, 9.0])
def test_radius_vote_matches_reference(radius):
    coords, labels = noisy_bands(seed=2)
    got = refine_labels(coords, labels, radius=radius)
    np.testing.assert_array_equal(got, reference_refine(coords, labels, radius=radius))


def test_tie_rule():
    # rows list the voters (self first); labels: 0 1 1 2 2 0
    codes = np.array([0, 1, 1, 2, 2, 0])
    neighbors = np.array(
        [
            [0, 1, 3, 5],  # 0:2, 1:1, 2:1 -> clear majority 0
            [1, 3, 4, 0],  # 1:1, 2:2, 0:1 -> majority 2
            [2, 3, 0, 5],  # 1:1, 2:1, 0:2 -> majority 0
            [3, 1, 2, 4],  # 2:2, 1:2 tie, own (2) among the top -> keep 2
            [4, 0, 5, 1],  # 2:1, 0:2, 1:1 -> 0
            [5, 1, 2, 3],  # 0:1, 1:2, 2:1 -> 1
        ]
    )
    np.testing.assert_array_equal(majority_vote(neighbors, codes), [0, 2, 0, 2, 0, 1])
    # own label not among the tied maxima -> smallest tied code
    np.testing.assert_array_equal(majority_vote(np.array([[0, 1, 2, 3, 4]]).repeat(5, 0), [2, 1, 1, 0, 0])[0], 0)


def test_string_labels_keep_dtype():
    coords, codes = noisy_bands(seed=3)
    names = np.array(["WM", "Layer_1", "Layer_2", "Layer_3"])[codes]
    got = refine_labels(coords, names, n_neighbors=6)
    assert isinstance(got, np.ndarray) and got.dtype == names.dtype
    np.testing.assert_array_equal(got, reference_refine(coords, names, n_neighbors=6))
    # a list in gives an array out
    np.testing.assert_array_equal(refine_labels(coords, list(names), n_neighbors=6), got)


def test_int_dtype_preserved():
    coords, codes = noisy_bands(seed=4)
    for dtype in (np.int8, np.uint16, np.int64, np.float32):
        got = refine_labels(coords, codes.astype(dtype))
        assert got.dtype == dtype


def test_categorical_keeps_categories_and_order():
    coords, codes = noisy_bands(n_labels=3, noise=0.5, seed=5)
    categories = ["z", "a", "m", "unused"]  # category order, not alphabetical, decides ties
    cat = pd.Categorical.from_codes(codes, categories=categories)
    got = refine_labels(coords, cat, n_neighbors=5)
    assert isinstance(got, pd.Categorical)
    assert list(got.categories) == categories
    expected = reference_refine(coords, list(cat), n_neighbors=5, order=categories)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_series_keeps_index_and_name():
    coords, codes = noisy_bands(seed=6)
    series = pd.Series(codes, index=[f"spot{i}" for i in range(len(codes))], name="domain")
    got = refine_labels(coords, series)
    assert isinstance(got, pd.Series) and got.name == "domain" and got.index.equals(series.index)
    assert got.dtype == series.dtype
    cat_got = refine_labels(coords, series.astype("category"))
    assert isinstance(cat_got.dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(cat_got.astype(int).to_numpy(), got.to_numpy())


def test_constant_labelling_is_unchanged():
    coords, _ = noisy_bands(seed=7)
    labels = np.full(len(coords), "L3")
    np.testing.assert_array_equal(refine_labels(coords, labels), labels)
    np.testing.assert_array_equal(refine_labels(coords, labels, radius=5.0), labels)


def test_refinement_removes_salt_and_pepper():
    coords, truth = noisy_bands(n=2000, noise=0.0, seed=8)
    noisy = truth.copy()
    rng = np.random.default_rng(8)
    flip = rng.random(len(noisy)) < 0.1
    noisy[flip] = (noisy[flip] + 1) % 4
    refined = refine_labels(coords, noisy, n_neighbors=8)
    assert (refined == truth).mean() > (noisy == truth).mean() + 0.05


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c, lab: refine_labels(c, lab[:-1]), "labels has 399"),
        (lambda c, lab: refine_labels(np.vstack([c[:-1], [np.nan, 0]]), lab), "NaN"),
        (lambda c, lab: refine_labels(c, lab, n_neighbors=3, radius=5.0), "not both"),
        (lambda c, lab: refine_labels(c, lab, n_neighbors=None), "n_neighbors .* or radius"),
        (lambda c, lab: refine_labels(c, lab, n_neighbors=400), "n_neighbors <= 399"),
        (lambda c, lab: refine_labels(c), "labels is required"),
        (lambda c, lab: refine_labels(c, lab, key_added="x"), "AnnData input only"),
        (lambda c, lab: refine_labels(c, np.where(lab == 0, np.nan, lab)), "missing values"),
        (lambda c, lab: refine_labels(c, lab, device="tpu"), "tpu"),
    ],
)
def test_array_errors(call, match):
    coords, labels = noisy_bands()
    with pytest.raises((ValueError, TypeError), match=match):
        call(coords, labels)


# --------------------------------------------------------------------------- AnnData


@pytest.fixture
def adata():
    anndata = pytest.importorskip("anndata")
    coords, codes = noisy_bands(seed=9)
    obs = pd.DataFrame(
        {"domain": pd.Categorical.from_codes(codes, ["D0", "D1", "D2", "D3"]), "plain": codes},
        index=[f"s{i}" for i in range(len(codes))],
    )
    ad = anndata.AnnData(obs=obs)
    ad.obsm["spatial"] = coords
    return ad


def test_anndata_writes_obs_and_uns(adata):
    assert refine_labels(adata, "domain", n_neighbors=6) is None
    refined = adata.obs["domain_refined"]
    assert isinstance(refined.dtype, pd.CategoricalDtype)
    assert list(refined.cat.categories) == ["D0", "D1", "D2", "D3"]
    expected = refine_labels(adata.obsm["spatial"], adata.obs["domain"].to_numpy(), n_neighbors=6)
    np.testing.assert_array_equal(refined.to_numpy(), expected)
    params = adata.uns["domain_refined"]["params"]
    assert params == {
        "label_key": "domain",
        "n_neighbors": 6,
        "engine": "auto",
        "device": "cpu",
        "spatial_key": "spatial",
    }
    assert adata.uns["domain_refined"]["n_changed"] == int((refined.to_numpy() != adata.obs["domain"].to_numpy()).sum())


def test_anndata_key_added_radius_and_copy(adata):
    out = refine_labels(adata, "plain", radius=6.0, key_added="smooth", copy=True)
    assert "smooth" not in adata.obs and "smooth" not in adata.uns, "copy=True leaves the input alone"
    assert out is not adata and "smooth" in out.obs
    assert out.uns["smooth"]["params"]["radius"] == 6.0
    assert "n_neighbors" not in out.uns["smooth"]["params"]
    assert isinstance(out.obs["smooth"].dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(
        out.obs["smooth"].to_numpy().astype(int),
        reference_refine(adata.obsm["spatial"], adata.obs["plain"], radius=6.0),
    )


def test_anndata_errors(adata):
    with pytest.raises(KeyError, match=r"columns are: \['domain', 'plain'\]"):
        refine_labels(adata, "leiden")
    with pytest.raises(TypeError, match="name of an obs column"):
        refine_labels(adata, adata.obs["domain"].to_numpy())
    adata.obsm["X_umap"] = adata.obsm.pop("spatial")
    with pytest.raises(KeyError, match=r"obsm keys are: \['X_umap'\]"):
        refine_labels(adata, "domain")
    coords = adata.obsm["X_umap"].copy()
    coords[3] = np.nan
    adata.obsm["spatial"] = coords
    with pytest.raises(ValueError, match=r"adata.obsm\['spatial'\] has 1 of 400 rows"):
        refine_labels(adata, "domain")


# --------------------------------------------------------------------------- torch / import


@pytest.mark.parametrize("mode", ["knn", "radius"])
def test_torch_vote_matches_numba_on_cpu(mode):
    pytest.importorskip("torch")
    coords, codes = noisy_bands(n=600, n_labels=5, noise=0.5, seed=10)
    voters = knn_indices(coords, 7) if mode == "knn" else radius_neighbors(coords, 7.0)
    indptr, indices = _as_csr_arrays(voters, len(codes))
    expected = majority_vote(voters, codes)
    got = _vote_torch(indptr, indices, codes.astype(np.int32), 5, "cpu")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.gpu
def test_cuda_vote_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    coords, codes = noisy_bands(n=5000, n_labels=7, noise=0.3, seed=11)
    np.testing.assert_array_equal(
        refine_labels(coords, codes, n_neighbors=10, device="cuda"),
        refine_labels(coords, codes, n_neighbors=10, device="cpu"),
    )


def test_top_level_import_and_no_heavy_imports():
    import mihd

    assert mihd.refine_labels is refine_labels
    code = (
        "import sys, mihd.graph, mihd.refine, numpy as np;"
        "mihd.refine.refine_labels(np.random.rand(50, 2), np.arange(50) % 3);"
        "bad = [m for m in ('torch', 'anndata') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.parametrize("k", [2, 6])
def test_many_labels_matches_reference(k):
    # more labels than voters exercises the vote's sparse per-row path
    coords, _ = noisy_bands(seed=12)
    labels = np.random.default_rng(12).integers(0, 40, len(coords)) // 2 * 3  # gaps in the values
    got = refine_labels(coords, labels, n_neighbors=k)
    np.testing.assert_array_equal(got, reference_refine(coords, labels, n_neighbors=k))
