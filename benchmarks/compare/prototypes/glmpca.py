"""NB GLM-PCA prototype: log mu_ij = log s_i + b_j + z_i . w_j on raw counts of the top Moran genes."""
import sys, os, time, numpy as np, warnings, logging, torch
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
torch.set_num_threads(1)
from mihd._config import compose
from mihd.train._runner import load_slice, spatial_neighbors, annotation_column
from mihd.graph import knn_indices
import mihd.encoders.pca as P
import scanpy as sc
DS = {d: (["data=dlpfc", f"data.slice={d}"] if d.startswith("15") else ["data=starmap_mpfc", f"data.slice={d}"]) for d in ["151673","151674","151675","151676","BZ5","BZ9","BZ14"]}
L = int(os.environ.get("L", "30")); ITERS = int(os.environ.get("ITERS", "300")); LIK = os.environ.get("LIK", "nb")
NG = int(os.environ.get("NG", "3000")); SUF = os.environ.get("SUF", "_glm")
for d in sys.argv[1].split(","):
    t0 = time.time()
    cfg = compose("train", DS[d] + ["encoder.image=none"])
    adata = load_slice(cfg["data"])
    a = P.working_copy(adata); sc.pp.normalize_total(a, target_sum=1e4); sc.pp.log1p(a)
    keep = P.spatially_variable_genes(a, min(NG, a.n_vars)) if NG < a.n_vars else np.arange(a.n_vars)
    Y = torch.tensor(np.asarray(adata.X[:, keep].todense() if hasattr(adata.X, "todense") else adata.X[:, keep]), dtype=torch.float32)
    n, g = Y.shape
    ls = torch.log(Y.sum(1, keepdim=True)); ls = ls - ls.mean()
    b = torch.log(Y.mean(0) + 1e-3).clone().requires_grad_(True)
    # init from the PCA of the log-normalised data
    Xl = np.asarray(a.X[:, keep].todense() if hasattr(a.X, "todense") else a.X[:, keep]); Xl = Xl - Xl.mean(0)
    U, S, Vt = np.linalg.svd(Xl, full_matrices=False)
    z = torch.tensor(U[:, :L] * S[:L] / np.sqrt(n), dtype=torch.float32).requires_grad_(True)
    w = torch.tensor(Vt[:L].T * np.sqrt(n) / S[:L] * 0.0 + Vt[:L].T * 0.1, dtype=torch.float32).requires_grad_(True)
    logtheta = torch.full((g,), 1.0).requires_grad_(True)
    opt = torch.optim.Adam([b, z, w, logtheta], lr=0.05)
    for it in range(ITERS):
        opt.zero_grad()
        eta = ls + b + z @ w.T
        mu = torch.exp(eta.clamp(max=15))
        if LIK == "poisson":
            nll = (mu - Y * eta).mean()
        else:
            th = torch.exp(logtheta)
            nll = -(torch.lgamma(Y + th) - torch.lgamma(th) + th * (logtheta - torch.log(th + mu)) + Y * (eta - torch.log(th + mu))).mean()
        nll = nll + 1e-4 * (z.pow(2).mean() + w.pow(2).mean())
        nll.backward(); opt.step()
    # orthogonalise: SVD of z w^T
    zz = z.detach().numpy(); ww = w.detach().numpy()
    Uz, Sz, Vz = np.linalg.svd(zz - zz.mean(0), full_matrices=False)
    M = (Uz * Sz) @ (Vz @ ww.T)  # n x g low-rank
    U2, S2, V2 = np.linalg.svd(M, full_matrices=False)
    pcs = U2[:, :L] * S2[:L]
    pcs = (pcs - pcs.mean(0)) / pcs[:, 0].std()
    nb = knn_indices(np.asarray(adata.obsm["spatial"], float), spatial_neighbors(cfg, adata), include_self=True)
    truth = adata.obs[annotation_column(cfg, adata)].astype(str).to_numpy()
    np.savez(f"{os.environ.get('EXP', '/tmp/exp')}/{d}{SUF}.npz", pcs=pcs.astype(np.float32), nb=nb, coords=np.asarray(adata.obsm["spatial"], float), truth=truth,
             depth=np.asarray(adata.X.sum(1)).ravel(), K=cfg["data"]["n_domains"])
    print(d, "nll %.4f" % nll.item(), "%.0fs" % (time.time() - t0), flush=True)
