"""CellCharter 0.3.7 (+ scvi-tools) with its documented spatial-clustering recipe, K given.

Run in benchmarks/peers/.venv-peers. Steps (CellCharter README / tutorials and the ``cc.tl.Cluster``
docstring example):

- scVI on raw counts: ``scvi.model.SCVI.setup_anndata(layer="counts")``, ``SCVI(adata)`` with its
  defaults (10 latent dims, ZINB), ``train(early_stopping=True)``; ``obsm["X_scVI"]`` = latent mean.
  Cost cap on DLPFC (2 cores): 2,000 ``seurat_v3`` HVGs and ``max_epochs=50`` (scVI's default, 400 epochs
  on 5,000 genes, takes ~30 min per slice here). STARmap mPFC: all 166 genes, scVI's default epochs.
- ``sq.gr.spatial_neighbors(coord_type="generic", delaunay=True)`` on ``obsm["spatial"]``,
  ``cc.gr.remove_long_links()`` (99th distance percentile), ``cc.gr.aggregate_neighbors(n_layers=3,
  use_rep="X_scVI")`` -> ``obsm["X_cellcharter"]``.
- ``cc.tl.Cluster(n_clusters=K)`` (TorchGMM, full covariance, k-means init) fit + predict. No refinement:
  ``label == label_before``.

Seed: ``--seed`` -> ``scvi.settings.seed`` (seeds torch/numpy/random) and ``torch.manual_seed`` right before
the GMM: ``Cluster(random_state=...)`` is passed too but is ignored in 0.3.7. Nothing is tuned on labels.
"""
from __future__ import annotations

import time

t_import = time.perf_counter()
import os  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402
import scanpy as sc  # noqa: E402
import torch  # noqa: E402
import scvi  # noqa: E402
import squidpy as sq  # noqa: E402
import cellcharter as cc  # noqa: E402

from _peer_common import is_visium, parse_args, read_input, package_versions, write_outputs  # noqa: E402

import_seconds = time.perf_counter() - t_import


def main() -> None:
    args = parse_args("CellCharter")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    scvi.settings.seed = args.seed
    t0 = time.perf_counter()
    adata = read_input(args)
    visium = is_visium(args)
    t_read = time.perf_counter()

    adata.layers["counts"] = adata.X.copy()
    n_hvg = 2000 if visium else None
    if n_hvg and adata.n_vars > n_hvg:
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_hvg, layer="counts")
        adata = adata[:, adata.var["highly_variable"]].copy()
    max_epochs = 50 if visium else None
    scvi.model.SCVI.setup_anndata(adata, layer="counts")
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=max_epochs, early_stopping=True, enable_progress_bar=False)
    epochs_run = len(model.history["elbo_train"]) if "elbo_train" in model.history else None
    adata.obsm["X_scVI"] = model.get_latent_representation(adata).astype(np.float32)
    t_train = time.perf_counter()

    sq.gr.spatial_neighbors(adata, coord_type="generic", delaunay=True, spatial_key="spatial")
    cc.gr.remove_long_links(adata)
    cc.gr.aggregate_neighbors(adata, n_layers=3, use_rep="X_scVI", out_key="X_cellcharter")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    gmm = cc.tl.Cluster(n_clusters=args.n_domains, random_state=args.seed)
    gmm.fit(adata, use_rep="X_cellcharter")
    labels = np.asarray(gmm.predict(adata, use_rep="X_cellcharter")).astype(str)
    t_end = time.perf_counter()

    timings = {"total": t_end - t0, "read": t_read - t0, "train": t_train - t_read, "cluster": t_end - t_train, "import": import_seconds}
    params = {"scvi": {"n_hvg": n_hvg if n_hvg else "all", "n_genes": int(adata.n_vars), "max_epochs": max_epochs or "scvi default",
                       "epochs_run": epochs_run, "early_stopping": True, "n_latent": model.module.n_latent},
              "epochs": epochs_run, "spatial_neighbors": "generic, delaunay", "remove_long_links": "99th percentile",
              "aggregate_neighbors": {"n_layers": 3, "aggregations": "mean"}, "cluster": "cc.tl.Cluster (TorchGMM full)",
              "n_clusters": args.n_domains, "seed": args.seed, "refinement": False}
    versions = package_versions("cellcharter", "scvi-tools", "squidpy", "torch", "torchgmm", "scanpy", "numpy")
    lab = labels.tolist()
    write_outputs(args, tool="CellCharter", cluster="gmm", barcodes=adata.obs_names, label=lab, label_before=lab,
                  timings=timings, params=params, versions=versions)
    print(f"CellCharter {args.slice_name} seed {args.seed}: {len(set(lab))} clusters, scVI {epochs_run} epochs, "
          f"{timings['total']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
