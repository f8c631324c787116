"""GraphST 1.1.1 with its DLPFC tutorial defaults (GraphST docs, "Tutorial 1: 10X Visium (DLPFC dataset)").

Run in benchmarks/peers/.venv-peers. Steps as the tutorial: read the Visium slice (in-tissue
spots, counts), ``GraphST.GraphST(adata, device=cpu)`` with its defaults (600 epochs, 3,000
seurat_v3 HVGs, learning rate 0.001, dim_output 64), ``model.train()``, then
``clustering(adata, n_clusters=K, radius=50, method="mclust", refinement=True)`` (PCA 20 of the
embedding -> R mclust EEE -> GraphST's refine_label with 50 nearest spots).
The tutorial then computes ARI against the annotation only to report it; nothing is chosen by ARI.

``label_before`` = ``adata.obs["mclust"]`` (unrefined), ``label`` = ``adata.obs["domain"]``
(refined, the tutorial's output). Seed: ``random_seed=--seed`` of ``GraphST.GraphST`` (the
tutorial leaves its default 41); mclust_R keeps its own fixed ``random_seed=2020`` (clustering()
does not expose it).

On an h5ad section (STARmap mPFC, 166 genes, single cells, no image) the same calls run unchanged
(``datatype`` left at its default; the 3,000-HVG step keeps all 166 genes); ``refinement=True`` as in
the DLPFC tutorial (refine_label over the 50 nearest cells), and the unrefined labels are scored too.
"""
from __future__ import annotations

import time

t_import = time.perf_counter()
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402
import torch  # noqa: E402
from GraphST import GraphST  # noqa: E402
from GraphST.utils import clustering  # noqa: E402

from _peer_common import parse_args, read_input, package_versions, write_outputs  # noqa: E402

import_seconds = time.perf_counter() - t_import


def main() -> None:
    args = parse_args("GraphST")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    adata = read_input(args)
    adata.var_names_make_unique()
    t_read = time.perf_counter()
    model = GraphST.GraphST(adata, device=device, random_seed=args.seed)
    adata = model.train()
    t_train = time.perf_counter()
    radius = 50
    tool = "mclust"
    clustering(adata, args.n_domains, radius=radius, method=tool, refinement=True)
    t_end = time.perf_counter()

    timings = {"total": t_end - t0, "read": t_read - t0, "train": t_train - t_read, "cluster": t_end - t_train, "import": import_seconds}
    params = {"epochs": model.epochs, "random_seed": args.seed, "dim_output": model.dim_output, "learning_rate": model.learning_rate,
              "cluster": tool, "modelNames": "EEE", "radius": radius, "refinement": True, "device": str(device)}
    versions = package_versions("GraphST", "torch", "scanpy", "numpy", "pandas", "POT", "rpy2")
    write_outputs(args, tool="GraphST", cluster=tool, barcodes=adata.obs_names, label=adata.obs["domain"].astype(str).tolist(),
                  label_before=adata.obs["mclust"].astype(str).tolist(), timings=timings, params=params, versions=versions)
    print(f"GraphST {args.slice_name} seed {args.seed}: {timings['total']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
