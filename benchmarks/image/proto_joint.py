"""Prototype: cluster the smoothed [gene, w * image] inputs with the default tied GMM + trend + refine.

No training: it asks whether a joint input space can carry the image where it matters (synthetic
morphology-only domains) without losing on DLPFC. Usage: python proto_joint.py <slice> ...
"""
import sys, time
import numpy as np
from mihd._config import compose
from mihd.train._runner import load_slice, prepare_slice_inputs, _standardise, gene_scaling, spatial_neighbors, _neighbourhood_mean, _truth, annotation_column
from mihd.graph import knn_indices, morans_i
from mihd.cluster import cluster_embedding, gmm_spatial_trend
from mihd.refine import refine_labels
from mihd.metrics import ari
from mihd.data import synthetic_slice


def synth(kind, seed=0):
    scale = 2.0 if kind.endswith("st") else 1.0
    n = 450 if scale == 2 else 2500
    return synthetic_slice(n, n_domains=6, pattern="layers", expression_of=[0, 1, 2, 3, 4, 4], morphology_of=[0, 1, 1, 3, 4, 5],
                           hires=True, spot_scale=scale, seed=seed)


def features(spec, seed=0):
    if spec.startswith("synth"):
        cfg = compose("train", ["data=synthetic", "data.n_domains=6"])
        adata = synth(spec, seed)
    else:
        ds, sl = spec.split(":")
        cfg = compose("train", [f"data={ds}", f"data.slice={sl}"])
        adata = load_slice(cfg["data"])
    key = annotation_column(cfg, adata)
    prep = prepare_slice_inputs(cfg, adata)
    f = _standardise(prep.features, gene_scaling(cfg))
    k = spatial_neighbors(cfg, adata)
    nb = knn_indices(prep.coords, k, include_self=True)
    sm = {m: _neighbourhood_mean(x, nb) for m, x in f.items()}
    return cfg, adata, prep, f, sm, _truth(cfg, adata, key)


def run(spec, weights=(0, 0.5, 1, 2), seeds=(0,)):
    cfg, adata, prep, f, sm, truth = features(spec)
    K = int(cfg.data.n_domains)
    nb6 = knn_indices(prep.coords, 6, include_self=True)
    out = {}
    if "image" in f:
        I = morans_i(f["image"], nb6)
        Ig = morans_i(f["gene"], nb6)
        print(spec, "moran image mean %.3f max %.3f | gene mean %.3f" % (I.mean(), I.max(), Ig.mean()))
    for w in weights:
        if w and "image" not in sm:
            continue
        X = sm["gene"] if not w else np.hstack([sm["gene"], w * sm["image"]])
        aris = []
        for s in seeds:
            lab = cluster_embedding(X, K, method="gmm", seed=s)
            lab2 = gmm_spatial_trend(X, prep.coords, lab, seed=s)
            ref = refine_labels(prep.coords, lab2, n_neighbors=6)
            aris.append(ari(ref, truth))
        out[w] = np.mean(aris)
        print(spec, "w=%s ARI %.3f" % (w, out[w]), flush=True)
    return out


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        run(spec)
