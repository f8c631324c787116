"""Shared helpers of the run_<tool>.py scripts (run in the peers venv, never imported by mihd).

Reads a Space Ranger-style Visium folder the way the peers' tutorials do (``sc.read_visium``:
counts from ``filtered_feature_bc_matrix.h5``, in-tissue spots, ``obsm["spatial"]`` =
(pxl_col, pxl_row) in full-resolution pixels), or an ``.h5ad`` (raw counts in X,
``obsm["spatial"]``; any ``obs`` columns, e.g. the truth, are dropped before a tool sees it),
runs R mclust through rpy2 for the tools whose recipe ends with it, and writes the labels + a
run JSON atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path


def parse_args(tool: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"Run {tool} with its tutorial defaults on one Visium slice or one h5ad section.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--slice-dir", type=Path, help="Space Ranger-style folder (filtered_feature_bc_matrix.h5, spatial/)")
    src.add_argument("--h5ad", type=Path, help="AnnData file: raw counts in X, obsm['spatial'] (no image)")
    p.add_argument("--slice-name", required=True, help="name written to the run JSON, e.g. dlpfc_151673")
    p.add_argument("--n-domains", required=True, type=int, help="number of domains K")
    p.add_argument("--seed", type=int, default=0, help="passed to the tool's own seed argument(s)")
    p.add_argument("--out", required=True, type=Path, help="labels CSV (barcode,label,label_before); <out>.json is written beside it")
    return p.parse_args()


def read_positions(slice_dir: Path):
    import pandas as pd

    pos = pd.read_csv(
        slice_dir / "spatial" / "tissue_positions_list.csv", header=None, index_col=0,
        names=["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"],
    )
    return pos


def read_visium_like_scanpy(slice_dir: Path):
    """What ``sc.read_visium(slice_dir, count_file="filtered_feature_bc_matrix.h5")`` gives, minus the images.

    (scanpy 1.11 reads the positions only when it also loads the hires and lowres images, and this
    folder has no hires image.)
    """
    import numpy as np
    import scanpy as sc

    adata = sc.read_10x_h5(slice_dir / "filtered_feature_bc_matrix.h5")
    adata.var_names_make_unique()
    pos = read_positions(slice_dir)
    missing = adata.obs_names.difference(pos.index)
    if len(missing):
        raise ValueError(f"{len(missing)} barcodes of {slice_dir}/filtered_feature_bc_matrix.h5 are not in tissue_positions_list.csv")
    pos = pos.loc[adata.obs_names]
    adata.obs = adata.obs.join(pos)
    adata = adata[adata.obs["in_tissue"] == 1].copy()
    adata.obsm["spatial"] = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.int64)
    return adata


def is_visium(args) -> bool:
    return args.slice_dir is not None


def read_input(args):
    """The Visium slice (as ``sc.read_visium``) or the h5ad section, counts in X, ``obsm["spatial"]`` float."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    if is_visium(args):
        return read_visium_like_scanpy(args.slice_dir)
    adata = ad.read_h5ad(args.h5ad)
    adata = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names.astype(str)),
                       var=pd.DataFrame(index=adata.var_names.astype(str)),
                       obsm={"spatial": np.asarray(adata.obsm["spatial"], dtype=np.float64)})  # no truth, no uns
    adata.var_names_make_unique()
    return adata


def mclust_R(embedding, n_clusters: int, model_names: str = "EEE", random_seed: int = 2020):
    """R ``Mclust(embedding, G=n_clusters, modelNames)`` after ``set.seed`` (the mclust_R helper of STAGATE / GraphST)."""
    import numpy as np
    import rpy2.robjects as robjects
    import rpy2.robjects.numpy2ri

    np.random.seed(random_seed)
    robjects.r.library("mclust")
    rpy2.robjects.numpy2ri.activate()
    robjects.r["set.seed"](random_seed)
    res = robjects.r["Mclust"](rpy2.robjects.numpy2ri.numpy2rpy(np.asarray(embedding, dtype=np.float64)), n_clusters, model_names)
    return np.asarray(res[-2]).astype(int)


def package_versions(*names: str) -> dict:
    """Installed versions of the named distributions, for the run JSON."""
    import importlib.metadata as md

    return {n: md.version(n) for n in names}


def peak_rss_mib() -> dict:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mib": round(self_kib / 1024, 1), "peak_rss_children_mib": round(child_kib / 1024, 1)}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(args, *, tool: str, cluster: str, barcodes, label, label_before, timings: dict, params: dict, versions: dict) -> None:
    """labels CSV first, then the JSON (its presence marks a finished run, as metrics.json in mihd)."""
    import pandas as pd

    args.out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"barcode": list(barcodes), "label": list(label), "label_before": list(label_before)})
    _atomic_write_text(args.out, df.to_csv(index=False))
    info = {
        "tool": tool, "cluster": cluster, "slice": args.slice_name, "slice_dir": str(args.slice_dir or args.h5ad),
        "n_domains": args.n_domains, "seed": args.seed, "n_spots": int(len(df)),
        "n_labels_found": int(pd.Series(list(label)).nunique()),
        "n_labels_found_before": int(pd.Series(list(label_before)).nunique()),
        "timing_seconds": timings, "memory": peak_rss_mib(), "params": params, "versions": versions,
        "device": "cpu", "command": " ".join([sys.executable] + sys.argv),
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "processor": platform.processor(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write_text(Path(str(args.out) + ".json"), json.dumps(info, indent=2, default=str))
