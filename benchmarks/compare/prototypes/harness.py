"""Scratch harness for the research log (DIAGNOSIS.md section 6): features dumped by dump_features.py
to $EXP (default /tmp/exp) are smoothed over the 6-NN, clustered by a tied GMM and scored (refined ARI)."""
import os, numpy as np, warnings
EXP = os.environ.get("EXP", "/tmp/exp")
warnings.filterwarnings("ignore")
from sklearn.mixture import GaussianMixture
from sklearn.metrics import adjusted_rand_score as ARI
from mihd.refine import refine_labels
ALL = ["151673","151674","151675","151676","BZ5","BZ9","BZ14"]
def load(d, suf=""):
    z = np.load(f"{EXP}/{d}{suf}.npz", allow_pickle=True)
    return {k: z[k] for k in z.files}
def smooth(x, nb):
    return x[nb].mean(1)
def gmm(X, K, seed, n_init=10, cov="tied", means_init=None):
    g = GaussianMixture(K, covariance_type=cov, n_init=n_init, random_state=seed, reg_covar=1e-6, max_iter=300, means_init=means_init)
    g.fit(X); return g.predict(X), g
def score(D, lab):
    t = D["truth"]; m = (t != "nan") & (t != "NA") & (t != "") & (t != "None")
    r = refine_labels(D["coords"], lab, n_neighbors=6)
    return ARI(t[m], r[m]), ARI(t[m], lab[m])
