"""mihd.metrics: label scores match scikit-learn on annotated spots; CHAOS / PAS match
brute-force references (full distance matrices are fine here, at <= 300 points)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mihd import metrics

LABEL_METRICS = {
    "ari": skm.adjusted_rand_score,
    "nmi": skm.normalized_mutual_info_score,
    "ami": skm.adjusted_mutual_info_score,
    "homogeneity": skm.homogeneity_score,
    "completeness": skm.completeness_score,
}


# --------------------------------------------------------------- brute-force references


def _pairwise(coords: np.ndarray) -> np.ndarray:
    return np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))


def chaos_reference(coords: np.ndarray, labels: np.ndarray) -> float:
    """SpatialPCA's fx_CHAOS: R scale(), then per-cluster 1-NN distances, sum / N."""
    z = (coords - coords.mean(0)) / coords.std(0, ddof=1)
    total = 0.0
    for k in np.unique(labels):
        pts = z[labels == k]
        if len(pts) < 2:
            continue
        d = _pairwise(pts)
        np.fill_diagonal(d, np.inf)
        total += d.min(1).sum()
    return total / len(labels)


def pas_reference(coords: np.ndarray, labels: np.ndarray, k: int = 10, min_different: int = 6) -> float:
    """SpatialPCA's fx_PAS: abnormal if >= min_different of the k nearest others differ."""
    d = _pairwise(coords)
    np.fill_diagonal(d, np.inf)
    neigh = np.argsort(d, axis=1, kind="stable")[:, :k]
    n_diff = (labels[neigh] != labels[:, None]).sum(1)
    return float(np.mean(n_diff >= min_different))


# --------------------------------------------------------------------- label metrics


@pytest.mark.parametrize("name", sorted(LABEL_METRICS))
def test_label_metrics_match_sklearn(name):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 400)
    pred = np.where(rng.random(400) < 0.7, truth, rng.integers(0, 6, 400))
    assert getattr(metrics, name)(truth, pred) == pytest.approx(LABEL_METRICS[name](truth, pred))


def _truth_with_gaps(rng: np.random.Generator, n: int):
    """String annotation with every kind of gap, and the mask of real labels."""
    truth = rng.choice(np.array(["L1", "L2", "L3", "WM"], dtype=object), n)
    gaps = rng.choice(n, size=n // 5, replace=False)
    fillers = [None, np.nan, "NA", "nan", "", "  NA ", float("nan"), "NaN"]
    for i, g in enumerate(gaps):
        truth[g] = fillers[i % len(fillers)]
    keep = np.ones(n, dtype=bool)
    keep[gaps] = False
    return truth, keep


@pytest.mark.parametrize("name", sorted(LABEL_METRICS))
def test_unannotated_spots_are_excluded(name):
    rng = np.random.default_rng(1)
    truth, keep = _truth_with_gaps(rng, 300)
    pred = rng.integers(0, 4, 300)
    expected = LABEL_METRICS[name](truth[keep].astype(str), pred[keep])
    assert getattr(metrics, name)(truth, pred) == pytest.approx(expected)


def test_annotated_mask_on_common_containers():
    assert metrics.annotated_mask(np.array([1, 2, 3])).all()
    np.testing.assert_array_equal(metrics.annotated_mask(np.array([1.0, np.nan, 2.0])), [True, False, True])
    np.testing.assert_array_equal(metrics.annotated_mask(np.array(["a", "NA", "", "nan"])), [True, False, False, False])
    np.testing.assert_array_equal(metrics.annotated_mask(pd.Categorical(["a", None, "b"])), [True, False, True])
    np.testing.assert_array_equal(metrics.annotated_mask(pd.Series(["a", pd.NA], dtype="string")), [True, False])
    # Real labels that merely contain the markers stay annotated.
    assert metrics.annotated_mask(np.array(["NA_region", "nano", "Layer_NA"], dtype=object)).all()


def test_float_truth_with_nan():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, 200).astype(float)
    truth[::7] = np.nan
    pred = rng.integers(0, 3, 200)
    keep = ~np.isnan(truth)
    assert metrics.ari(truth, pred) == pytest.approx(skm.adjusted_rand_score(truth[keep], pred[keep]))


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"truth has 5 and pred has 4"):
        metrics.ari(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match=r"coords has 6 and labels has 5"):
        metrics.chaos(np.zeros((6, 2)), np.zeros(5))


def test_truth_without_annotation_is_an_error():
    with pytest.raises(ValueError, match="no annotated spot"):
        metrics.nmi(np.array(["NA", None, np.nan], dtype=object), np.array([0, 1, 0]))


# ------------------------------------------------------------------- spatial coherence


@pytest.fixture
def scattered():
    rng = np.random.default_rng(3)
    coords = rng.random((300, 2)) * np.array([100.0, 40.0])  # anisotropic: standardising matters
    labels = rng.integers(0, 6, 300)
    labels[17] = 99  # a single-spot cluster contributes 0 to CHAOS
    return coords, labels


def test_chaos_matches_reference(scattered):
    coords, labels = scattered
    assert metrics.chaos(coords, labels) == pytest.approx(chaos_reference(coords, labels))


@pytest.mark.parametrize(("k", "min_different"), [(10, None), (5, 2), (8, 8)])
def test_pas_matches_reference(scattered, k, min_different):
    coords, labels = scattered
    expected = pas_reference(coords, labels, k, k // 2 + 1 if min_different is None else min_different)
    assert metrics.pas(coords, labels, n_neighbors=k, min_different=min_different) == pytest.approx(expected)


def test_pas_excludes_self_with_duplicate_coordinates():
    coords = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.1]])
    labels = np.array([0, 1, 0, 0])
    # Spots 0 and 1 share a position: each one's neighbour is the other, which differs.
    assert metrics.pas(coords, labels, n_neighbors=1, min_different=1) == 0.5


def test_coherent_labels_score_better_than_random():
    xx, yy = np.meshgrid(np.arange(20.0), np.arange(15.0))
    coords = np.column_stack([xx.ravel(), yy.ravel()])
    bands = (coords[:, 0] // 5).astype(int)  # four vertical stripes
    shuffled = np.random.default_rng(4).permutation(bands)
    assert metrics.chaos(coords, bands) < metrics.chaos(coords, shuffled)
    assert metrics.pas(coords, bands) < metrics.pas(coords, shuffled)
    assert metrics.pas(coords, bands) == 0.0


def test_coherence_input_errors():
    coords = np.random.default_rng(5).random((12, 2))
    labels = np.arange(12) % 3
    with pytest.raises(ValueError, match=r"n_neighbors must be in 1..n_spots-1 = 1..11"):
        metrics.pas(coords, labels, n_neighbors=12)
    with pytest.raises(ValueError, match="min_different must be in 1..n_neighbors"):
        metrics.pas(coords, labels, n_neighbors=4, min_different=5)
    with pytest.raises(ValueError, match="2-D"):
        metrics.chaos(coords[:, 0], labels)
    bad = coords.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.chaos(bad, labels)


# ------------------------------------------------------------------------ score_labels


def test_score_labels_keys_follow_inputs(scattered):
    coords, pred = scattered
    truth, keep = _truth_with_gaps(np.random.default_rng(6), len(pred))

    only_truth = metrics.score_labels(pred, truth=truth)
    assert set(only_truth) == {"ari", "nmi", "ami", "homogeneity", "completeness", "n_scored"}
    assert only_truth["n_scored"] == keep.sum()
    assert only_truth["ari"] == pytest.approx(metrics.ari(truth, pred))

    only_coords = metrics.score_labels(pred, coords=coords)
    assert set(only_coords) == {"chaos", "pas"}

    both = metrics.score_labels(pred, truth=truth, coords=coords)
    assert set(both) == set(only_truth) | set(only_coords)
    assert both["chaos"] == pytest.approx(chaos_reference(coords, pred))
    assert metrics.score_labels(pred) == {}
