"""Prototype: a tied Gaussian mixture over gene and image blocks, the image log-likelihood tempered by beta.

log p(x | k) = log N(g; mu_k^g, S_g) + beta * log N(i; mu_k^i, S_i): domains shared by both modalities,
each with its own tied covariance (conditionally independent given the domain). beta = 0 is the gene
mixture exactly. Usage: python proto_tempered.py <slice> ...
"""
import sys
import numpy as np
from sklearn.cluster import KMeans

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from proto_joint import features  # noqa: E402
from mihd.cluster import cluster_embedding, gmm_spatial_trend
from mihd.refine import refine_labels
from mihd.metrics import ari


def _block_logpdf(X, means, prec_chol):
    # tied covariance: (N, K) log densities up to the shared constant
    Y = X @ prec_chol
    M = means @ prec_chol
    d2 = (Y**2).sum(1)[:, None] - 2 * Y @ M.T + (M**2).sum(1)[None, :]
    return -0.5 * d2 + np.log(np.diag(prec_chol)).sum()


def _mstep(blocks, R, reg=1e-6):
    nk = R.sum(0) + 1e-10
    out = []
    for X in blocks:
        mu = (R.T @ X) / nk[:, None]
        cov = X.T @ X - (mu * nk[:, None]).T @ mu
        cov = cov / len(X) + reg * np.eye(X.shape[1])
        prec_chol = np.linalg.cholesky(np.linalg.inv(cov))
        out.append((mu, prec_chol))
    return nk / nk.sum(), out


def tempered_gmm(blocks, betas, labels0, max_iter=200, tol=1e-4):
    K = labels0.max() + 1
    R = np.eye(K)[labels0]
    prev = -np.inf
    for it in range(max_iter):
        pi, params = _mstep(blocks, R)
        logp = np.log(pi)[None, :] + sum(b * _block_logpdf(X, mu, pc) for X, b, (mu, pc) in zip(blocks, betas, params))
        m = logp.max(1, keepdims=True)
        ll = (m[:, 0] + np.log(np.exp(logp - m).sum(1))).mean()
        R = np.exp(logp - m); R /= R.sum(1, keepdims=True)
        if ll - prev < tol:
            break
        prev = ll
    return R.argmax(1), ll


def fit(blocks, betas, K, seed, n_init=10, init=None):
    best = (None, -np.inf)
    starts = [init] if init is not None else []
    Z = np.hstack([X / X.std() * np.sqrt(b) for X, b in zip(blocks, betas) if b > 0])
    rng = np.random.default_rng(seed)
    for s in range(n_init):
        starts.append(KMeans(K, n_init=1, random_state=int(rng.integers(2**31))).fit_predict(Z))
    for l0 in starts:
        lab, ll = tempered_gmm(blocks, betas, l0)
        if ll > best[1]:
            best = (lab, ll)
    return best[0]


if __name__ == "__main__":
    betas = [float(b) for b in sys.argv[1].split(",")]
    for spec in sys.argv[2:]:
        cfg, adata, prep, f, sm, truth = features(spec)
        K = int(cfg.data.n_domains)
        for beta in betas:
            blocks, bs = [sm["gene"].astype(np.float64), sm["image"].astype(np.float64)], [1.0, beta]
            lab = fit(blocks, bs, K, seed=0)
            ref = refine_labels(prep.coords, lab, n_neighbors=6)
            print(spec, "beta=%s ARI %.3f" % (beta, ari(ref, truth)), flush=True)
