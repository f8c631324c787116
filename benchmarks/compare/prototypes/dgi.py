"""Two-hop GCN encoder on the gene PCs with a reconstruction loss plus a DGI-style local contrastive term
(GraphST-like; lam=0: reconstruction only), then tied GMM + refinement.

    OMP_NUM_THREADS=1 python benchmarks/compare/prototypes/dgi.py ds=151675,151676 lam=1 [pcs=100]
"""
import sys, os, time, logging, warnings
import numpy as np, torch
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from mihd._config import compose
from mihd.train._runner import load_slice
from mihd.encoders.pca import PCAGeneEncoder
from mihd.graph import knn_indices
from mihd.cluster import cluster_embedding
from mihd.refine import refine_labels
from mihd.metrics import ari
torch.set_num_threads(1)
A = dict(a.split("=") for a in sys.argv[1:])
EP = int(A.get("ep", 300)); LAM = float(A.get("lam", 1.0)); HID = int(A.get("hid", 64)); NPC = int(A.get("pcs", 30)); SM = int(A.get("smooth", 0))
for d in A.get("ds", "151675,151676").split(","):
    cfg = compose("train", ["data=dlpfc", f"data.slice={d}"])
    ad = load_slice(cfg.data); truth = ad.obs[cfg.data.annotation_key].to_numpy()
    xy = np.asarray(ad.obsm["spatial"], float)
    cache = f"/tmp/mihd_proto/pcs_{d}_{NPC}.npy"
    if os.path.exists(cache): X = np.load(cache)
    else:
        X = PCAGeneEncoder(n_comps=NPC).encode(ad); os.makedirs(os.path.dirname(cache), exist_ok=True); np.save(cache, X)
    X = (X - X.mean(0)) / X.std(0).mean()
    nb = knn_indices(xy, 6, include_self=True)
    if SM: X = X[nb].mean(1)
    Xt = torch.tensor(X, dtype=torch.float32); NB = torch.tensor(nb.astype(np.int64))
    base = cluster_embedding(X[nb].mean(1).astype(float), 7, seed=0)
    print(d, "baseline smoothed PCs gmm", round(ari(truth, refine_labels(xy, base, n_neighbors=6)), 3), flush=True)
    for seed in [0, 1]:
        torch.manual_seed(seed)
        enc1 = torch.nn.Linear(X.shape[1], HID); enc2 = torch.nn.Linear(HID, 32)
        dec = torch.nn.Sequential(torch.nn.Linear(32, HID), torch.nn.ELU(), torch.nn.Linear(HID, X.shape[1]))
        W = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(32, 32)))
        params = list(enc1.parameters()) + list(enc2.parameters()) + list(dec.parameters()) + [W]
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
        def gcn(x):
            h = torch.nn.functional.elu(enc1(x)[NB].mean(1))
            return enc2(h)[NB].mean(1)
        t = time.time()
        for ep in range(EP):
            opt.zero_grad()
            z = gcn(Xt)
            perm = torch.randperm(len(Xt))
            zc = gcn(Xt[perm])
            s = torch.sigmoid(z[NB[:, 1:]].mean(1))  # local summary of neighbours
            pos = ((z @ W) * s).sum(1); neg = ((zc @ W) * s).sum(1)
            dgi = torch.nn.functional.binary_cross_entropy_with_logits(torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]))
            rec = ((dec(z) - Xt) ** 2).mean()
            loss = rec + LAM * dgi
            loss.backward(); opt.step()
        with torch.no_grad(): z = gcn(Xt).numpy().astype(float)
        lab = cluster_embedding(z, 7, seed=seed)
        print(f"{d} seed{seed} ep{EP} lam{LAM} hid{HID} pcs{NPC} sm{SM}: {ari(truth, refine_labels(xy, lab, n_neighbors=6)):.3f} rec {rec.item():.3f} dgi {dgi.item():.3f} {time.time()-t:.0f}s", flush=True)
