"""BANKSY (pybanksy 1.3.5) with its domain-segmentation recipe, clustered to exactly K without R.

Run in benchmarks/peers/.venv-peers. Steps (Banksy_py README "General steps", its DLPFC and STARmap
notebooks, and the BANKSY paper's domain settings):

- Visium (DLPFC): ``sc.pp.normalize_total`` (median library size, as ``banksy_utils.filter_utils.normalize_total``),
  ``log1p``, 2,000 HVGs (``flavor="seurat"`` on the log data, as ``filter_utils.filter_hvg``);
  ``initialize_banksy(k_geom=18, nbr_weight_decay="scaled_gaussian", max_m=1)`` (AGF on), lambda = 0.2
  (the paper's / R vignette's Visium domain setting).
- STARmap (single cells, 166 genes): same normalisation, all genes, ``k_geom=15`` and ``max_m=1`` (its
  STARmap notebook), lambda = 0.8 (its domain-segmentation setting for single-cell data).
- ``generate_banksy_matrix`` -> ``pca_umap(pca_dims=[20])`` -> BANKSY's ``LeidenPartition`` on the 20 PCs
  (Giotto-style shared-NN graph, num_nn=50, as ``run_Leiden_partition``), resolution searched for K clusters:
  first BANKSY's own ``find_resolutions`` walk (start 0.6, step 0.05, up to 25 tries; what
  ``run_Leiden_partition(resolutions=[], max_labels=K)`` does), and where that walk oscillates around K
  without hitting it (it did on 151673: 6 <-> 8), a bisection between the bracketing resolutions (up to 30
  more tries). Leiden is the clustering the package documents without R (its mclust option needs rpy2 + R;
  not used here).
- Refinement: ``banksy_utils.refine_clusters.refine_once(num_neigh=6)`` (majority of the 6 nearest spots, as
  its DLPFC notebook) on Visium only -> ``label``; ``label_before`` = the Leiden labels. On STARmap the
  notebook does not refine, so ``label == label_before``.

Seed: ``--seed`` -> Leiden ``partition_seed`` (notebooks: 1234) and numpy/random. Nothing is tuned on labels.
"""
from __future__ import annotations

import time

t_import = time.perf_counter()
import os  # noqa: E402
import random  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")
import numpy as np  # noqa: E402
import scanpy as sc  # noqa: E402
import leidenalg  # noqa: E402
from banksy.main import LeidenPartition  # noqa: E402
from banksy.embed_banksy import generate_banksy_matrix  # noqa: E402
from banksy.initialize_banksy import initialize_banksy  # noqa: E402
from banksy_utils.refine_clusters import refine_once  # noqa: E402
from banksy_utils.umap_pca import pca_umap  # noqa: E402

from _peer_common import is_visium, parse_args, read_input, package_versions, write_outputs  # noqa: E402

import_seconds = time.perf_counter() - t_import


def leiden_to_k(pcs: np.ndarray, k: int, seed: int):
    """BANKSY's Leiden partition with a resolution giving k clusters (find_resolutions walk, then bisection)."""
    part = LeidenPartition(pcs, num_nn=50, nns_have_weights=True, compute_shared_nn=True, filter_shared_nn=True,
                           shared_nn_max_rank=3, shared_nn_min_shared_nbrs=5, verbose=False)
    tried = {}

    def run(res):
        label, _ = part.partition(resolution=res, partition_metric=leidenalg.RBConfigurationVertexPartition,
                                  n_iterations=-1, seed=seed)
        tried[round(res, 6)] = label.num_labels
        return label

    res = 0.6
    label = run(res)
    for _ in range(24):  # banksy.cluster_methods.find_resolutions
        if label.num_labels == k:
            break
        res = res + 0.05 if label.num_labels < k else res - 0.05
        label = run(res)
    if label.num_labels != k:
        for _ in range(30):
            below = [r for r, n in tried.items() if n < k]
            above = [r for r, n in tried.items() if n > k]
            if not below or not above:
                break
            lo = max(below)
            hi_cands = [r for r in above if r > lo]
            if not hi_cands:
                break
            res = (lo + min(hi_cands)) / 2
            label = run(res)
            if label.num_labels == k:
                break
    return np.asarray(label.dense), res, tried


def main() -> None:
    args = parse_args("BANKSY")
    random.seed(args.seed)
    np.random.seed(args.seed)
    t0 = time.perf_counter()
    adata = read_input(args)
    visium = is_visium(args)
    t_read = time.perf_counter()

    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    n_hvg = 2000 if visium else None
    if n_hvg and adata.n_vars > n_hvg:
        sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=n_hvg)
        adata = adata[:, adata.var["highly_variable"]].copy()
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adata.obs["x"], adata.obs["y"] = xy[:, 0], xy[:, 1]
    adata.obsm["coord_xy"] = xy
    coord_keys = ("x", "y", "coord_xy")
    k_geom, lam, max_m, pca_dim, decay = (18, 0.2, 1, 20, "scaled_gaussian") if visium else (15, 0.8, 1, 20, "scaled_gaussian")

    banksy_dict = initialize_banksy(adata, coord_keys, k_geom, nbr_weight_decay=decay, max_m=max_m,
                                    plt_edge_hist=False, plt_nbr_weights=False, plt_agf_angles=False, plt_theta=False)
    banksy_dict, _ = generate_banksy_matrix(adata, banksy_dict, [lam], max_m, verbose=False)
    pca_umap(banksy_dict, pca_dims=[pca_dim], plt_remaining_var=False, add_umap=False)
    t_embed = time.perf_counter()
    pcs = banksy_dict[decay][lam]["adata"].obsm[f"reduced_pc_{pca_dim}"]
    labels, resolution, tried = leiden_to_k(np.asarray(pcs), args.n_domains, args.seed)
    t_cluster = time.perf_counter()
    if visium:
        refined, _, _ = refine_once(adata, raw_labels=labels, truth_labels=None, coord_keys=coord_keys, num_neigh=6)
        refined = np.asarray(refined)
    else:
        refined = labels
    t_end = time.perf_counter()

    timings = {"total": t_end - t0, "read": t_read - t0, "train": t_embed - t_read, "cluster": t_end - t_embed,
               "leiden": t_cluster - t_embed, "refine": t_end - t_cluster, "import": import_seconds}
    params = {"lambda": lam, "k_geom": k_geom, "max_m": max_m, "nbr_weight_decay": decay, "pca_dims": pca_dim,
              "n_hvg": n_hvg if n_hvg and adata.n_vars <= n_hvg else "all", "n_genes_used": int(adata.n_vars),
              "normalise": "normalize_total (median) + log1p", "cluster": "leiden (banksy find_resolutions to K, num_nn 50)",
              "resolution": resolution, "resolutions_tried": tried, "partition_seed": args.seed,
              "refine": "refine_once num_neigh=6" if visium else "none"}
    versions = package_versions("pybanksy", "scanpy", "numpy", "leidenalg", "igraph", "scikit-learn")
    write_outputs(args, tool="BANKSY", cluster="leiden", barcodes=adata.obs_names, label=[str(x) for x in refined],
                  label_before=[str(x) for x in labels], timings=timings, params=params, versions=versions)
    print(f"BANKSY {args.slice_name} seed {args.seed}: {len(set(labels.tolist()))} clusters (res={resolution:.2f}), "
          f"{timings['total']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
