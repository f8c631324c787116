"""The mixture over genes and image (mihd.joint) and the runner's use of it (issue 25)."""

from __future__ import annotations

import numpy as np
import pytest

from mihd._config import compose
from mihd.joint import block_covariance, image_weight, joint_mixture
from mihd.metrics import ari
from mihd.train import train


def _blocks(seed: int = 0, n_per: int = 150):
    """Three domains: the genes see {0, 1} vs {2} only, the image sees all three."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1, 2], n_per)
    gene_means = np.array([[0.0] * 5, [0.0] * 5, [3.0] * 5])
    image_means = np.array([[0.0] * 4, [3.0] * 4, [-3.0] * 4])
    genes = gene_means[truth] + rng.normal(size=(len(truth), 5))
    image = image_means[truth] + rng.normal(size=(len(truth), 4))
    return truth, genes, image


def test_image_weight_follows_the_agreement_of_the_partitions():
    a = np.repeat([0, 1, 2], 50)
    beta, agreement = image_weight(a, a)
    assert agreement == pytest.approx(1.0) and beta == 1.0
    rng = np.random.default_rng(0)
    beta, agreement = image_weight(a, rng.permutation(a))
    assert abs(agreement) < 0.05 and beta == 0.0
    with pytest.raises(ValueError, match="same spots"):
        image_weight(a, a[:-1])
    with pytest.raises(ValueError, match="agreement_range"):
        image_weight(a, a, agreement_range=(0.7, 0.2))


def test_block_covariance_drops_cross_terms_and_tempers_each_block():
    S = np.arange(16, dtype=float).reshape(4, 4)
    out = block_covariance(S, [1, 3], [1.0, 0.5])
    assert out[0, 0] == S[0, 0] and np.all(out[0, 1:] == 0) and np.all(out[1:, 0] == 0)
    np.testing.assert_allclose(out[1:, 1:], S[1:, 1:] / 0.5)
    with pytest.raises(ValueError, match="> 0"):
        block_covariance(S, [1, 3], [1.0, 0.0])
    with pytest.raises(ValueError, match="add up"):
        block_covariance(S, [2, 3], [1.0, 1.0])


def test_joint_mixture_splits_what_only_the_image_sees():
    truth, genes, image = _blocks()
    from mihd.cluster import cluster_embedding

    gene_only = cluster_embedding(genes, 3, method="gmm", seed=0)
    assert ari(gene_only, truth) < 0.75  # the genes cannot tell domain 0 from 1
    labels, info = joint_mixture([genes, image], [1.0, 1.0], [gene_only], n_init=5, seed=0, return_info=True)
    assert ari(labels, truth) > 0.95
    assert len(info["loglik"]) == 6 and 0 <= info["start"] < 6
    again = joint_mixture([genes, image], [1.0, 1.0], [gene_only], n_init=5, seed=0)
    np.testing.assert_array_equal(labels, again)  # same seed, same labels


def test_joint_mixture_on_a_subsample_labels_every_spot():
    truth, genes, image = _blocks(n_per=400)
    labels = joint_mixture([genes, image], [1.0, 0.8], n_clusters=3, n_init=3, seed=1, fit_max_samples=300)
    assert labels.shape == truth.shape and ari(labels, truth) > 0.9


def test_joint_mixture_refuses_bad_input():
    truth, genes, image = _blocks()
    with pytest.raises(ValueError, match="one row per spot"):
        joint_mixture([genes, image[:-1]], [1.0, 1.0], [truth])
    with pytest.raises(ValueError, match="start partitions"):
        joint_mixture([genes, image], [1.0, 1.0])
    bad = genes.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        joint_mixture([bad, image], [1.0, 1.0], [truth])


# --------------------------------------------------------------------------- the runner


def _morphology_slice(image_signal: str = "domains", seed: int = 0):
    from mihd.data import synthetic_slice

    return synthetic_slice(700, n_genes=80, n_domains=4, pattern="layers", hires=True, expression_of=[0, 1, 2, 2],
                           image_signal=image_signal, seed=seed)


_BASE = ["data=h5ad", "data.path=unused", "data.n_domains=4", "trainer.max_epochs=15", "trainer.progress_bar=false"]


def test_the_image_moves_the_domains_where_only_it_sees_them():
    adata = _morphology_slice()
    with_image = train(compose("train", ["fusion=gated", *_BASE]), adata=adata.copy(), write=False)
    without = train(compose("train", ["fusion=gated", "encoder.image=none", *_BASE]), adata=adata.copy(), write=False)
    image = with_image.metrics["image"]
    assert image["weight"] > 0 and image["used"] and 0 < image["share"] <= 1.5
    assert with_image.metrics["scores"]["after_refinement"]["ari"] > without.metrics["scores"]["after_refinement"]["ari"] + 0.1
    assert with_image.adata.uns["mihd"]["params"]["image_weight"] == image["weight"]
    from mihd.train._outputs import summary_table

    assert f"image: weight {image['weight']:.2f}" in summary_table(with_image.metrics)
    assert "image:" not in summary_table(without.metrics)


def test_an_image_without_spatial_information_is_left_out_exactly():
    adata = _morphology_slice("shuffled")
    shuffled = train(compose("train", ["fusion=gated", *_BASE]), adata=adata.copy(), write=False)
    none = train(compose("train", ["fusion=gated", "encoder.image=none", *_BASE]), adata=adata.copy(), write=False)
    assert shuffled.metrics["image"]["weight"] == 0 and shuffled.metrics["image"]["share"] == 0
    assert shuffled.metrics["modalities"] == none.metrics["modalities"] == {"gene": 30}
    from mihd.train._outputs import summary_table

    assert "left out: below 0.55" in summary_table(shuffled.metrics)
    np.testing.assert_array_equal(shuffled.adata.obs["mihd_gated"].to_numpy(), none.adata.obs["mihd_gated"].to_numpy())


def test_permute_image_is_a_null_control_and_a_fixed_weight_overrides_auto():
    adata = _morphology_slice()
    permuted = train(compose("train", ["fusion=concat", "+encoder.permute_image=true", *_BASE]), adata=adata.copy(), write=False)
    assert permuted.metrics["image"]["weight"] == 0 and abs(permuted.metrics["image"]["agreement"]) < 0.1
    fixed = train(compose("train", ["fusion=concat", "+encoder.permute_image=true", "cluster.image_weight=0.5", *_BASE]),
                  adata=adata.copy(), write=False)
    assert fixed.metrics["image"]["weight"] == 0.5 and fixed.metrics["image"]["setting"] == 0.5
    assert fixed.metrics["modalities"]["image"] > 0


@pytest.mark.parametrize(
    ("override", "named"),
    [("cluster.image_weight=2", "cluster.image_weight"), ("cluster.image_weight=some", "cluster.image_weight"),
     ("+encoder.permute_image=no", "encoder.permute_image")],
)
def test_bad_image_options_are_refused_before_reading(override, named, monkeypatch, capsys):
    import mihd.train._runner as runner
    from mihd.cli import main

    monkeypatch.setattr(runner, "load_slice", lambda *a, **k: pytest.fail("data was read"))
    assert main(["train", "trainer=fast", override]) == 1
    assert named in capsys.readouterr().err
