"""Run: OMP_NUM_THREADS=1 python benchmarks/compare/prototypes/covgmm.py 151676,151675,151674,151673,BZ9,BZ5

Tied GMM with a shared linear depth covariate (mixture of regressions): x_i ~ N(mu_k + b d_i, S)."""
import sys, logging, warnings
import numpy as np
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from mihd._config import compose
from mihd.train import train
from mihd.metrics import ari
from mihd.refine import refine_labels
import os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trend_gmm import trendgmm
DS = {"BZ5": ["data=starmap_mpfc", "data.slice=BZ5"], "BZ9": ["data=starmap_mpfc", "data.slice=BZ9"], "BZ14": ["data=starmap_mpfc", "data.slice=BZ14"]}
def covgmm(X, d, labels, K, iters=100):
    """The trend mixture of trend_gmm.py with log depth as its one covariate."""
    return trendgmm(X, d[:, None], labels, K, iters=iters)
for dname in sys.argv[1].split(","):
    over = DS.get(dname, ["data=dlpfc", f"data.slice={dname}"])
    for seed in sys.argv[2].split(",") if len(sys.argv) > 2 else ["0"]:
        cfg = compose("train", over + ["fusion=gated", f"seed={seed}", "cache_dir=/tmp/mihd_proto/cache", "trainer.progress_bar=false"])
        r = train(cfg, write=False); ad = r.adata
        key = f"{r.embedding_key}_reconstruction"
        X = np.asarray(ad.obsm[key] if key in ad.obsm else ad.obsm[r.embedding_key], float)
        truth = ad.obs[cfg.data.annotation_key].to_numpy(); xy = np.asarray(ad.obsm["spatial"], float)
        lab0 = ad.obs[r.label_key].astype(int).to_numpy()
        d = np.log1p(np.asarray(ad.X.sum(1)).ravel()); d = d - d.mean()
        K = int(cfg.data.n_domains)
        lab, it = covgmm(X, d, lab0, K)
        from mihd.cluster import cluster_embedding
        D = np.column_stack([np.ones_like(d), d]); beta, *_ = np.linalg.lstsq(D, X, rcond=None)
        lab1 = cluster_embedding(X - D @ beta, K, seed=int(seed))
        lab2, it2 = covgmm(X, d, lab1, K)
        print(f"{dname} seed{seed}: default {r.metrics['scores']['after_refinement']['ari']:.3f} covgmm {ari(truth, refine_labels(xy, lab, n_neighbors=6)):.3f} (iters {it}) | regressed gmm {ari(truth, refine_labels(xy, lab1, n_neighbors=6)):.3f} -> covgmm {ari(truth, refine_labels(xy, lab2, n_neighbors=6)):.3f} ({it2})", flush=True)
