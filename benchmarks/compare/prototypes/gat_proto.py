"""STAGATE-like graph-attention autoencoder (tied weights, attention shared by encoder and decoder),
full batch over the 6-NN graph, on 3,000 HVG log-expression or their top PCs; tied GMM / mclust + refinement.

    OMP_NUM_THREADS=2 python benchmarks/compare/prototypes/gat_proto.py slices=151675 pcs=200 hid=256 epochs=500 lr=1e-3 sel=seurat cl=gmm,mclust
"""
import sys, time, os
import numpy as np, scipy.sparse as sp, torch, scanpy as sc
from mihd._config import compose
from mihd.train._runner import load_slice
from mihd.graph import knn_indices
from mihd.cluster import cluster_embedding
from mihd.refine import refine_labels
from mihd.metrics import ari

def args(): 
    d = dict(a.split("=") for a in sys.argv[1:])
    return d
A = args()
slices = A.get("slices", "151675").split(",")
ngenes = int(A.get("genes", 3000)); npc = int(A.get("pcs", 0)); hid = int(A.get("hid", 512)); out = int(A.get("out", 30))
epochs = int(A.get("epochs", 500)); lr = float(A.get("lr", 1e-3)); k = int(A.get("k", 6)); seeds = [int(s) for s in A.get("seeds", "0").split(",")]
cl = A.get("cl", "gmm"); sel = A.get("sel", "seurat_v3"); att = int(A.get("att", 1))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))

class GATAE(torch.nn.Module):
    def __init__(s, d, hid, out):
        super().__init__()
        s.W1 = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(d, hid)))
        s.W2 = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(hid, out)))
        s.vs = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(hid, 1)))
        s.vr = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(hid, 1)))
    def attn(s, h, src, dst, n):
        e = torch.sigmoid((h @ s.vs).squeeze(-1)[dst] + (h @ s.vr).squeeze(-1)[src])  # dst attends to src
        e = torch.exp(e)
        den = torch.zeros(n).index_add_(0, dst, e)
        return e / den[dst]
    def prop(s, h, a, src, dst, n):
        return torch.zeros(n, h.shape[1]).index_add_(0, dst, h[src] * a[:, None])
    def forward(s, x, src, dst):
        n = x.shape[0]
        h = x @ s.W1
        a = s.attn(h, src, dst, n) if att else torch.full((len(src),), 1.0) / torch.bincount(dst, minlength=n)[dst]
        h1 = torch.nn.functional.elu(s.prop(h, a, src, dst, n))
        z = h1 @ s.W2
        h3 = torch.nn.functional.elu(z @ s.W2.T)
        h4 = s.prop(h3 @ s.W1.T, a, src, dst, n)
        return z, h4

for sl in slices:
    cfg = compose("train", [f"data=dlpfc", f"data.slice={sl}"] if sl != "151673" else [])
    ad = load_slice(cfg.data)
    ad.var_names_make_unique()
    truth = ad.obs[cfg.data.annotation_key].to_numpy() if cfg.data.annotation_key in ad.obs else ad.obs["ground_truth"].to_numpy()
    t0 = time.time()
    if sel == "seurat_v3":
        sc.pp.highly_variable_genes(ad, flavor="seurat_v3", n_top_genes=ngenes)
    sc.pp.normalize_total(ad, target_sum=1e4); sc.pp.log1p(ad)
    if sel == "seurat":
        sc.pp.highly_variable_genes(ad, flavor="seurat", n_top_genes=ngenes)
    X = ad[:, ad.var.highly_variable].X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    if npc:
        from sklearn.decomposition import PCA
        X = PCA(npc, random_state=0).fit_transform(X)
    X = torch.tensor(X, dtype=torch.float32)
    nb = knn_indices(np.asarray(ad.obsm["spatial"], float), k, include_self=True)
    n = X.shape[0]
    dst = torch.tensor(np.repeat(np.arange(n), nb.shape[1])); src = torch.tensor(nb.reshape(-1).astype(np.int64))
    tprep = time.time() - t0
    for seed in seeds:
        torch.manual_seed(seed); np.random.seed(seed)
        m = GATAE(X.shape[1], hid, out)
        opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=1e-4)
        t1 = time.time()
        for ep in range(epochs):
            opt.zero_grad(); z, rec = m(X, src, dst); loss = ((rec - X) ** 2).mean(); loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0); opt.step()
        ttrain = time.time() - t1
        with torch.no_grad(): z = m(X, src, dst)[0].numpy().astype(np.float64)
        for c in cl.split(","):
            lab = cluster_embedding(z, 7, method=c, seed=seed)
            ref = refine_labels(ad.obsm["spatial"], lab, n_neighbors=6)
            print(f"{sl} seed{seed} genes{ngenes} pcs{npc} hid{hid} out{out} ep{epochs} lr{lr} k{k} att{att} sel{sel} cl{c}: raw {ari(truth, lab):.3f} refined {ari(truth, ref):.3f} loss {loss.item():.4f} prep {tprep:.1f}s train {ttrain:.1f}s", flush=True)
