"""SpaGCN 1.2.7 with its DLPFC tutorial defaults (SpaGCN/tutorial/tutorial.md, slice 151673).

Run in benchmarks/peers/.venv-peers. Steps as the tutorial: in-tissue spots; adjacency from
full-resolution pixel coordinates plus histology (beta=49, alpha=1); prefilter genes (min_cells=3)
and special genes; normalize_per_cell + log1p; search_l(p=0.5); search_res to K clusters
(start=0.7, step=0.1, tol=5e-3, lr=0.05, max_epochs=20); train (init louvain, tol=5e-3, lr=0.05,
max_epochs=200); refine on the array-coordinate adjacency with shape="hexagon".

Differences forced by this machine / data, nothing tuned:
- Histology: only the 600 x 600 lowres H&E exists here; it is resized (bilinear) by
  1 / tissue_lowres_scalef to full-resolution size, so the tutorial's full-resolution pixel
  coordinates and beta=49 keep their meaning. The tutorial reads its image with cv2 (BGR); the
  channels are put in BGR order too (SpaGCN weights channels by their variance).
- SciPy >= 1.14 removed ``spmatrix.A`` which SpaGCN calls on a sparse ``adata.X``: X is made dense
  after normalisation (same values).
- Seeds: the tutorial's r_seed = t_seed = n_seed = 100 are all set to --seed.

On an h5ad section without image (STARmap mPFC): the adjacency is built from ``obsm["spatial"]`` with
``histology=False`` (SpaGCN's documented no-image mode), the rest as above; refinement uses the same
pixel-distance matrix with ``shape="hexagon"`` (majority of the 6 nearest cells; SpaGCN has no
single-cell shape). ``label_before`` keeps the unrefined labels, so both are scored.
"""
from __future__ import annotations

import time

t_import = time.perf_counter()
import json  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402
import SpaGCN as spg  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from _peer_common import is_visium, parse_args, read_input, write_outputs  # noqa: E402

import_seconds = time.perf_counter() - t_import


def histology_fullres(slice_dir) -> np.ndarray:
    """The lowres H&E resized to full-resolution pixel size, channels in BGR order (as cv2.imread)."""
    scale = json.loads((slice_dir / "spatial" / "scalefactors_json.json").read_text())["tissue_lowres_scalef"]
    img = Image.open(slice_dir / "spatial" / "tissue_lowres_image.png").convert("RGB")
    size = (int(round(img.width / scale)), int(round(img.height / scale)))
    big = np.asarray(img.resize(size, Image.BILINEAR))
    return np.ascontiguousarray(big[:, :, ::-1])


def main() -> None:
    args = parse_args("SpaGCN")
    t0 = time.perf_counter()
    adata = read_input(args)
    visium = is_visium(args)
    if visium:
        # tutorial: x_array = array_row, y_array = array_col, x_pixel = pxl_row, y_pixel = pxl_col
        x_array = adata.obs["array_row"].tolist()
        y_array = adata.obs["array_col"].tolist()
        x_pixel = adata.obs["pxl_row_in_fullres"].astype(int).tolist()
        y_pixel = adata.obs["pxl_col_in_fullres"].astype(int).tolist()
    else:
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        x_pixel, y_pixel = xy[:, 0].tolist(), xy[:, 1].tolist()
    adata.var_names = [i.upper() for i in list(adata.var_names)]
    adata.var["genename"] = adata.var.index.astype("str")
    img = histology_fullres(args.slice_dir) if visium else None
    t_read = time.perf_counter()

    s, b = 1, 49
    if visium:
        adj = spg.calculate_adj_matrix(x=x_pixel, y=y_pixel, x_pixel=x_pixel, y_pixel=y_pixel, image=img, beta=b, alpha=s, histology=True)
    else:
        adj = spg.calculate_adj_matrix(x=x_pixel, y=y_pixel, histology=False)
    del img
    adata.var_names_make_unique()
    spg.prefilter_genes(adata, min_cells=3)
    spg.prefilter_specialgenes(adata)
    sc.pp.normalize_per_cell(adata)
    sc.pp.log1p(adata)
    if hasattr(adata.X, "toarray"):
        adata.X = adata.X.toarray()
    p = 0.5
    l = spg.search_l(p, adj, start=0.01, end=1000, tol=0.01, max_run=100)
    n_clusters = args.n_domains
    r_seed = t_seed = n_seed = args.seed
    res = spg.search_res(adata, adj, l, n_clusters, start=0.7, step=0.1, tol=5e-3, lr=0.05, max_epochs=20,
                         r_seed=r_seed, t_seed=t_seed, n_seed=n_seed)
    t_search = time.perf_counter()
    clf = spg.SpaGCN()
    clf.set_l(l)
    random.seed(r_seed)
    torch.manual_seed(t_seed)
    np.random.seed(n_seed)
    clf.train(adata, adj, init_spa=True, init="louvain", res=res, tol=5e-3, lr=0.05, max_epochs=200)
    y_pred, prob = clf.predict()
    t_train = time.perf_counter()
    adj_2d = spg.calculate_adj_matrix(x=x_array, y=y_array, histology=False) if visium else adj
    refined_pred = spg.refine(sample_id=adata.obs.index.tolist(), pred=list(y_pred), dis=adj_2d, shape="hexagon")
    t_end = time.perf_counter()

    timings = {"total": t_end - t0, "read": t_read - t0, "search": t_search - t_read, "train": t_train - t_search,
               "refine": t_end - t_train, "import": import_seconds}
    params = {"p": p, "l": float(l), "res": float(res), "beta": b, "alpha": s,
              "histology": "lowres resized to fullres" if visium else False,
              "search_res": {"start": 0.7, "step": 0.1, "tol": 5e-3, "lr": 0.05, "max_epochs": 20},
              "train": {"init": "louvain", "tol": 5e-3, "lr": 0.05, "max_epochs": 200}, "refine_shape": "hexagon",
              "refine_adjacency": "array coordinates" if visium else "pixel coordinates (obsm spatial)"}
    versions = {"SpaGCN": "1.2.7", "torch": torch.__version__, "scanpy": sc.__version__, "numpy": np.__version__, "pandas": pd.__version__}
    write_outputs(args, tool="SpaGCN", cluster="louvain", barcodes=adata.obs_names, label=refined_pred, label_before=list(y_pred),
                  timings=timings, params=params, versions=versions)
    print(f"SpaGCN {args.slice_name} seed {args.seed}: {len(set(y_pred))} clusters (res={res}), {timings['total']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
