"""GMM restarts on the default embedding: likelihood vs ARI, Hungarian-vote consensus, medoid partition.

    OMP_NUM_THREADS=1 python benchmarks/compare/prototypes/consensus.py 151675,151676,151674
"""
import sys, logging, warnings
import numpy as np
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from mihd._config import compose
from mihd.train import train
from mihd.metrics import ari
from mihd.refine import refine_labels
from sklearn.mixture import GaussianMixture
from scipy.optimize import linear_sum_assignment
ds = sys.argv[1].split(",")
for d in ds:
    cfg = compose("train", ["data=dlpfc", f"data.slice={d}", "fusion=gated", "seed=0", "cache_dir=/tmp/mihd_proto/cache", "trainer.progress_bar=false"])
    r = train(cfg, write=False)
    ad = r.adata
    X = ad.obsm[f"{r.embedding_key}_reconstruction"] if f"{r.embedding_key}_reconstruction" in ad.obsm else ad.obsm[r.embedding_key]
    truth = ad.obs[cfg.data.annotation_key].to_numpy()
    coords = np.asarray(ad.obsm["spatial"], float)
    print(d, "default", round(r.metrics["scores"]["after_refinement"]["ari"], 3), X.shape, flush=True)
    labs, lls = [], []
    for s in range(20):
        gm = GaussianMixture(7, covariance_type="tied", n_init=1, random_state=s, reg_covar=1e-6).fit(X)
        l = gm.predict(X); labs.append(l); lls.append(gm.score(X))
    aris = [ari(truth, refine_labels(coords, l, n_neighbors=6)) for l in labs]
    order = np.argsort(lls)[::-1]
    print(" by ll:", " ".join(f"{lls[i]:.3f}:{aris[i]:.3f}" for i in order))
    # consensus: align to best-ll partition, vote
    ref = labs[order[0]]
    votes = np.zeros((len(ref), 7))
    for l in labs:
        C = np.zeros((7, 7)); np.add.at(C, (l, ref), 1)
        ri, ci = linear_sum_assignment(-C); m = dict(zip(ri, ci))
        votes[np.arange(len(l)), [m[x] for x in l]] += 1
    cons = votes.argmax(1)
    # pairwise agreement: medoid partition
    A = np.array([[ari(a, b) for b in labs] for a in labs]); med = A.sum(1).argmax()
    print(f" consensus {ari(truth, refine_labels(coords, cons, n_neighbors=6)):.3f} medoid {aris[med]:.3f} mean {np.mean(aris):.3f}", flush=True)
