"""STAGATE (``stagate-modern`` 1.0.0.post1, imports as ``STAGATE_pyG``) with its DLPFC tutorial recipe.

Run in benchmarks/peers/.venv-peers. Steps as the STAGATE tutorial "10x Visium DLPFC" (PyG version):
read the slice (in-tissue spots, counts); ``sc.pp.highly_variable_genes(flavor="seurat_v3",
n_top_genes=3000)`` on counts; ``normalize_total(target_sum=1e4)``; ``log1p``;
``Cal_Spatial_Net(rad_cutoff=150)`` on full-resolution pixel coordinates; ``train_STAGATE`` with its defaults
(hidden [512, 30], 1,000 epochs, lr 1e-3, weight decay 1e-4, gradient clipping 5); then R ``Mclust(G=K,
"EEE")`` on the 30-d STAGATE embedding (the tutorial's ``mclust_R``, seed 2020; ``stagate-modern`` dropped
that helper, so ``_peer_common.mclust_R`` is the same code). The tutorial does not refine:
``label == label_before``.

STARmap mPFC sections (166 genes, single cells, no image): all genes (fewer than 3,000), same
normalisation, and ``rad_cutoff=400`` pixels: chosen from the coordinates alone (median nearest-neighbour
distance ~165 px) to give 6.6-7.6 neighbours per cell on the three sections, about the ~6 of the Visium
setting. Nothing is tuned on labels.

Seed: ``--seed`` -> ``train_STAGATE(random_seed=...)`` (tutorial default 0); mclust keeps its seed 2020.
"""
from __future__ import annotations

import time

t_import = time.perf_counter()
import numpy as np  # noqa: E402
import scanpy as sc  # noqa: E402
import torch  # noqa: E402
import STAGATE_pyG as STAGATE  # noqa: E402

from _peer_common import is_visium, mclust_R, parse_args, read_input, package_versions, write_outputs  # noqa: E402

import_seconds = time.perf_counter() - t_import


def main() -> None:
    args = parse_args("STAGATE")
    t0 = time.perf_counter()
    adata = read_input(args)
    visium = is_visium(args)
    adata.var_names_make_unique()
    t_read = time.perf_counter()
    n_hvg = 3000
    if adata.n_vars > n_hvg:
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_hvg)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    rad_cutoff = 150 if visium else 400
    STAGATE.Cal_Spatial_Net(adata, rad_cutoff=rad_cutoff)
    stats = STAGATE.Stats_Spatial_Net(adata)
    n_epochs = 1000
    adata = STAGATE.train_STAGATE(adata, n_epochs=n_epochs, random_seed=args.seed, verbose=False, device="cpu")
    t_train = time.perf_counter()
    labels = mclust_R(adata.obsm["STAGATE"], args.n_domains, "EEE", random_seed=2020)
    t_end = time.perf_counter()

    timings = {"total": t_end - t0, "read": t_read - t0, "train": t_train - t_read, "cluster": t_end - t_train, "import": import_seconds}
    params = {"epochs": n_epochs, "random_seed": args.seed, "hidden_dims": [512, 30], "lr": 1e-3, "weight_decay": 1e-4,
              "n_hvg": n_hvg if adata.n_vars > n_hvg else "all", "n_genes": int(adata.n_vars), "rad_cutoff": rad_cutoff,
              "mean_neighbours": round(stats["mean_neighbors"], 2), "cluster": "mclust", "modelNames": "EEE",
              "mclust_seed": 2020, "refinement": False, "device": "cpu"}
    versions = package_versions("stagate-modern", "torch", "torch-geometric", "scanpy", "numpy", "rpy2")
    lab = [str(x) for x in labels]
    write_outputs(args, tool="STAGATE", cluster="mclust", barcodes=adata.obs_names, label=lab, label_before=lab,
                  timings=timings, params=params, versions=versions)
    print(f"STAGATE {args.slice_name} seed {args.seed}: {len(set(lab))} clusters, {stats['mean_neighbors']:.2f} nbrs, "
          f"{timings['total']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
