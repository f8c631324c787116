"""Ground truth reaches scoring only: no training, clustering, refinement or selection path sees it.

Behavioural check, parametrized over the registry: a run on a slice whose annotation is
shuffled, and a run on the same slice with no annotation at all, must give bit-identical
embeddings, domains and refined domains. Anything that read the labels to choose an epoch,
a resolution, a seed or a hyperparameter would make them differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from mihd.cli import compose
from mihd.fusion import list_fusions
from mihd.train import train

OVERRIDES = ["trainer=fast", "encoder.gene_options.n_top_genes=50", "encoder.gene_options.n_comps=10",
             "data.n_domains=3"]


def _run(adata, fusion: str, cluster: str = "gmm"):
    # A slice without labels runs with data.annotation_key=null (a named column that is absent is an error).
    unlabelled = ["data.annotation_key=null"] if "ground_truth" not in adata.obs else []
    cfg = compose("train", [f"fusion={fusion}", f"cluster={cluster}", *OVERRIDES, *unlabelled], stamp_run_dir=False)
    result = train(cfg, adata=adata, write=False, progress=False)
    return result, (result.adata.obsm[result.embedding_key], result.adata.obs[result.label_key].to_numpy(),
                    result.adata.obs[result.refined_key].to_numpy())


@pytest.fixture(scope="module")
def slices(tiny_slice):
    shuffled = tiny_slice.copy()
    shuffled.obs["ground_truth"] = np.random.default_rng(0).permutation(shuffled.obs["ground_truth"].to_numpy())
    unlabelled = tiny_slice.copy()
    del unlabelled.obs["ground_truth"]
    return shuffled, unlabelled


@pytest.mark.parametrize("fusion", list_fusions())
def test_outputs_do_not_depend_on_the_annotation(fusion, slices):
    shuffled, unlabelled = slices
    scored, a = _run(shuffled.copy(), fusion)
    unscored, b = _run(unlabelled.copy(), fusion)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # The annotation was really there to score (and the shuffled one scores near zero) ...
    assert scored.metrics["annotated"] and not unscored.metrics["annotated"]
    assert abs(scored.metrics["scores"]["after_refinement"]["ari"]) < 0.2
    # ... and without it nothing is scored against it.
    assert "ari" not in unscored.metrics["scores"]["after_refinement"]


@pytest.mark.parametrize("cluster", ["leiden", "kmeans"])
def test_clustering_searches_never_see_the_annotation(cluster, slices):
    """Leiden's resolution search targets K, never a score against the labels."""
    shuffled, unlabelled = slices
    _, a = _run(shuffled.copy(), "genes_only", cluster)
    _, b = _run(unlabelled.copy(), "genes_only", cluster)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_evaluation_plans_have_no_option_that_reads_scores(tmp_path):
    """The planner's choices are names and seeds; nothing in it selects by a score."""
    from mihd.evaluate import build_plan

    cfg = compose("evaluate", [f"out_dir={tmp_path}"])
    keys = set(cfg.keys())
    words = {"best", "select", "selection", "metric", "metrics", "score", "scores", "ari", "nmi", "truth"}
    assert not {k for k in keys if set(str(k).lower().split("_")) & words}
    plan = build_plan(cfg)
    assert all("select" not in str(r.config).lower() for r in plan.runs)
