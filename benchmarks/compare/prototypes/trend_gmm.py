"""Tied GMM with a shared spatial trend, x_i ~ N(mu_k + B^T c_i, S), c_i = a polynomial of the coordinates
(DIAGNOSIS.md section 7). On the harness features (dump_features.py): `DEG=1 python trend_gmm.py ""`;
env DEG (1 linear, 2 quadratic), RIDGE, RANK (reduced-rank B), FIELD=<k> (k-NN mean of log depth as covariate),
UDIR=1 (trend fixed along the within-domain depth direction), DEP=1 (add smoothed log depth)."""
import sys, os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *
from scipy.special import logsumexp
CEM = bool(os.environ.get('CEM'))
RANK = int(os.environ.get('RANK', '0'))
RIDGE = float(os.environ.get('RIDGE', '0'))
def feats(xy, deg, d=None):
    z = (xy - xy.mean(0)) / xy.std(0).mean()
    cols = [z[:, 0], z[:, 1]]
    if deg >= 2: cols += [z[:, 0]**2, z[:, 1]**2, z[:, 0]*z[:, 1]]
    if deg >= 3: cols += [z[:, 0]**3, z[:, 1]**3, z[:, 0]**2*z[:, 1], z[:, 0]*z[:, 1]**2]
    if d is not None: cols.append(d)
    C = np.column_stack(cols); return C - C.mean(0)
def within_slope(X, d, labels, K):
    R = np.eye(K)[labels]; w = R.sum(0) + 1e-10
    xk = (R.T @ X) / w[:, None]; dk = (R.T @ d) / w
    dc = d - dk[labels]; xc = X - xk[labels]
    return (dc @ xc) / (dc @ dc)
def trendgmm(X, C, labels, K, iters=200, reg=1e-6, u=None, nb=None):
    n, f = X.shape; R = np.eye(K)[labels]
    for it in range(iters):
        w = R.sum(0) + 1e-10
        xk = (R.T @ X) / w[:, None]; ck = (R.T @ C) / w[:, None]
        # within-cluster scatter of C and cross with X
        A = C.T @ C - (ck * w[:, None]).T @ ck
        Bx = C.T @ X - (ck * w[:, None]).T @ xk
        if nb is not None:   # slope from interior spots only (all neighbours in the spot's domain)
            lab = labels if os.environ.get("INTERIOR_FIXED") else R.argmax(1)   # fixed: from the start partition
            Wt = R * (lab[nb] == lab[:, None]).all(1)[:, None]
            w2 = Wt.sum(0) + 1e-10; xk2 = (Wt.T @ X) / w2[:, None]; ck2 = (Wt.T @ C) / w2[:, None]
            wi = Wt.sum(1)
            A = (C * wi[:, None]).T @ C - (ck2 * w2[:, None]).T @ ck2
            Bx = (C * wi[:, None]).T @ X - (ck2 * w2[:, None]).T @ xk2
        B = np.linalg.solve(A + (RIDGE * n + 1e-9) * np.eye(len(A)), Bx)
        if u is not None and it > 0:
            Si = Li.T @ Li; q = Si @ u / (u @ Si @ u)      # projection onto u in the Mahalanobis metric
            a = np.linalg.solve(A + 1e-9 * np.eye(len(A)), Bx @ q); B = np.outer(a, u)
        elif u is not None:
            B = np.zeros_like(B)
        if RANK and it > 0:
            W = B @ Li.T; ev, V = np.linalg.eigh(W.T @ A @ W); V = V[:, -RANK:]
            B = W @ V @ V.T @ L.T
        mu = xk - ck @ B
        Xr = X - C @ B
        S = np.zeros((f, f))
        for k in range(K):
            Z = Xr - mu[k]; S += (Z * R[:, k:k+1]).T @ Z
        S = S / n + reg * np.eye(f)
        L = np.linalg.cholesky(S); Li = np.linalg.inv(L)
        logp = np.empty((n, K))
        for k in range(K):
            Z = (Xr - mu[k]) @ Li.T; logp[:, k] = -0.5 * (Z**2).sum(1)
        logp += np.log(w / n)
        Rn = np.exp(logp - logsumexp(logp, 1, keepdims=True))
        if CEM: Rn = np.eye(K)[Rn.argmax(1)]
        done = np.abs(Rn - R).max() < 1e-4; R = Rn
        if done: break
    ll = logsumexp(logp, 1).sum() / n - np.log(np.diag(L)).sum()
    return R.argmax(1), float(ll)
if __name__ == "__main__":
    suf = sys.argv[1]; deg = int(os.environ.get("DEG", "1")); dss = sys.argv[2].split(",") if len(sys.argv) > 2 else ALL
    res = {"def": [], "a": [], "b": [], "pick": []}
    for dn in dss:
        D = load(dn, suf); X = smooth(D["pcs"], D["nb"]).astype(float); K = int(D["K"])
        dep = np.log(D["depth"]) if os.environ.get("DEP") else None
        if dep is not None: dep = smooth(dep[:, None], D["nb"])[:, 0]; dep = (dep - dep.mean())
        C = feats(D["coords"].astype(float), deg, dep)
        if os.environ.get("FIELD"):
            from mihd.graph import knn_indices
            kf = int(os.environ["FIELD"]); nbf = knn_indices(D["coords"].astype(float), kf, include_self=True)
            ld = np.log(D["depth"]); fld = ld[nbf].mean(1); fld = (fld - fld.mean()) / fld.std()
            C = np.column_stack([fld]) if deg < 0 else np.column_stack([C, fld]); C = C - C.mean(0)
        beta, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(C)), C]), X, rcond=None)
        Xd = X - C @ beta[1:]
        r = {k: [] for k in res}
        for s in range(3):
            l0 = gmm(X, K, s)[0]; l1 = gmm(Xd, K, s)[0]
            u = None
            if os.environ.get("UDIR"):
                dsm = smooth(np.log(D["depth"])[:, None], D["nb"])[:, 0]
                u = within_slope(X, dsm - dsm.mean(), l0, K)
            nbi = None
            if os.environ.get("INTERIOR"):
                from mihd.graph import knn_indices
                nbi = knn_indices(D["coords"].astype(float), int(os.environ["INTERIOR"]), include_self=False)
            la, lla = trendgmm(X, C, l0, K, u=u, nb=nbi); lb, llb = trendgmm(X, C, l1, K)
            sa, sb = score(D, la)[0], score(D, lb)[0]
            r["def"].append(score(D, l0)[0]); r["a"].append(sa); r["b"].append(sb); r["pick"].append(sa if lla >= llb else sb)
        for k in res: res[k].append(np.mean(r[k]))
        print(" ", dn, {k: np.round(v, 3).tolist() for k, v in r.items()}, flush=True)
    for k, v in res.items(): print(suf, deg, k, np.round(v, 3), "dl mean %.3f worst %.3f" % (np.mean(v[:4]), min(v[:4])), flush=True)
