"""Label-free checks of the shared spatial trend (DIAGNOSIS.md section 7): for the plain tied GMM's partition and
the trend EM started from it, the refined ARI (scoring only), the gain in log-likelihood per spot against BIC's
penalty, and the spatial coherence (share of each spot's 6 nearest neighbours in its own domain), on the harness
features and on synthetic straight bands (tests/test_cluster.py's `_section_with_drift`).

    cd <repo> && OMP_NUM_THREADS=1 EXP=/tmp/exp python benchmarks/compare/prototypes/trend_checks.py
"""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); sys.path.insert(0, "tests")
from harness import *
from scipy.special import logsumexp
from mihd.cluster import _trend_em, _trend_design, _trend_logp
from mihd.graph import knn_indices
from test_cluster import _section_with_drift
def ll_trend(X, C, info):
    Lc = info["chol"]; lp = _trend_logp(X, C, info["B"], Lc, info["mu"], np.log(info["weights"]))
    return logsumexp(lp, 1).mean() - np.log(np.diag(Lc)).sum() - 0.5 * X.shape[1] * np.log(2 * np.pi), lp.argmax(1)
def coh(xy, lab):
    nb = knn_indices(xy, 6, include_self=False); return (lab[nb] == lab[:, None]).mean()
def report(name, X, xy, K, t=None, D=None):
    lab, g = gmm(X, K, 0); C = _trend_design(xy)
    info = _trend_em(X, C, lab, K, reg_covar=1e-6, max_iter=200, tol=1e-4)
    lt, labt = ll_trend(X, C, info); lp = g.score(X); n, f = X.shape
    s = (score(D, lab)[0], score(D, labt)[0]) if D is not None else (ARI(t, lab), ARI(t, labt))
    print(f"{name:14s} ARI plain {s[0]:.3f} trend {s[1]:.3f} | dLL/spot {lt - lp:.3f} (BIC penalty {f * np.log(n) / n:.3f}) | "
          f"coherence {coh(xy, lab):.3f} -> {coh(xy, labt):.3f} | ARI(plain, trend) {ARI(lab, labt):.3f}", flush=True)
for noise in [0.25, 0.5]:
    X, xy, t = _section_with_drift(curved=False, drift=0.0, noise=noise); report(f"straight n{noise}", X, xy, 3, t)
    X, xy, t = _section_with_drift(curved=True, drift=0.9, noise=noise); report(f"curved+drift n{noise}", X, xy, 3, t)
for dn in ALL:
    D = load(dn, ""); X = smooth(D["pcs"], D["nb"]).astype(float); report(dn, X, D["coords"].astype(float), int(D["K"]), D=D)
