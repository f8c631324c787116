"""Monkeypatched variants of the gene recipe and input smoothing, selected by environment variables
(research prototypes; what won became a real option): BIL=raw|guided (+BW, ITER) edge-aware smoothing;
MW=<power> Moran-weighted genes; PARETO=<exponent> divide genes by sd**exponent (0.5 = the default now);
DEPTHREG=1 regress log depth out of the gene PCs; MORANRES=1 rank genes by Moran's I of their
depth residuals; DEPTHFIELD=<k> regress the k-NN mean of log depth (a smooth field) out of the PCs.
POOL=<k>/POOL2=<k> pool raw counts over the k-NN before normalising; THIN=<q> binomial thinning to the q depth
quantile; PSEUDO=<y0> shifted log with pseudocount y0 relative to the median depth (DIAGNOSIS.md section 6).
"""
import os, numpy as np
import mihd.train._runner as R
_orig = R._neighbourhood_mean
MODE = os.environ.get("BIL", "")
BW = float(os.environ.get("BW", "1"))
ITER = int(os.environ.get("ITER", "1"))
def _w(guide, nb):
    d = np.stack([((guide - guide[nb[:, j]]) ** 2).sum(1) for j in range(nb.shape[1])], 1)  # (N, k+1)
    h2 = np.median(d[:, 1:]) * BW
    return np.exp(-d / h2)
def bil(x, nb):
    x = np.asarray(x, np.float64)
    for _ in range(ITER):
        guide = x if MODE == "raw" else _orig(x, nb).astype(np.float64)
        w = _w(guide, nb)
        out = np.zeros_like(x)
        for j in range(nb.shape[1]):
            out += w[:, j:j+1] * x[nb[:, j]]
        x = out / w.sum(1, keepdims=True)
    return x.astype(np.float32)
if MODE:
    R._neighbourhood_mean = bil
    print("bilateral", MODE, BW, ITER)
def _pca(encoder, X, exponent, weights=1.0):
    """PCA of the genes divided by sd**exponent (mihd's exact column variance) times ``weights``."""
    import scanpy as sc
    from scipy import sparse

    from mihd.encoders.pca import _column_variance

    sd = np.sqrt(_column_variance(X))
    inv = (np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0) ** exponent, 0.0) * weights).astype(np.float32)
    X = sparse.csr_matrix(X).multiply(inv[None, :]).tocsr()
    return np.asarray(sc.pp.pca(X.astype(np.float32), n_comps=encoder.n_comps, random_state=encoder.seed, zero_center=True), dtype=np.float32)
def _log_genes(encoder, adata):
    """mihd's recipe up to the PCA: normalise, log1p, and the Moran-ranked gene columns to keep."""
    import scanpy as sc
    import mihd.encoders.pca as P
    a = P.working_copy(adata)
    sc.pp.normalize_total(a, target_sum=encoder.target_sum); sc.pp.log1p(a)
    n_top = min(encoder.n_top_genes, a.n_vars)
    return a, (P.spatially_variable_genes(a, n_top) if n_top < a.n_vars else np.arange(a.n_vars))
def _pool_counts(adata, k, weight=1.0):
    """Raw counts summed over each spot (weight 1) and its k nearest spots (``weight``)."""
    from scipy import sparse
    from mihd.graph import knn_indices
    nb = knn_indices(np.asarray(adata.obsm["spatial"], float), min(int(k), adata.n_obs - 1), include_self=True)
    n, k1 = nb.shape
    w = np.full((n, k1), weight, np.float32); w[:, 0] = 1.0
    A = sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k1), nb.ravel())), shape=(n, n))
    return sparse.csr_matrix(A @ sparse.csr_matrix(adata.X, dtype=np.float32))
MW = os.environ.get("MW", "")
if MW:
    import mihd.encoders.pca as P
    def encode(self, adata):
        import scanpy as sc
        from mihd.graph import knn_indices, morans_i
        a = P.working_copy(adata)
        sc.pp.normalize_total(a, target_sum=self.target_sum); sc.pp.log1p(a)
        nb = knn_indices(np.asarray(a.obsm["spatial"], dtype=np.float64), 6, include_self=True)
        I = np.asarray(morans_i(a.X, nb), float)
        n_top = min(self.n_top_genes, a.n_vars)
        keep = np.sort(np.argsort(-I, kind="stable")[:n_top])
        a = a[:, keep].copy(); I = I[keep]
        return _pca(self, a.X, 1.0, np.clip(I, 0, None) ** float(MW))
    P.PCAGeneEncoder.encode = encode
    print("moran weights power", MW)
PAR = os.environ.get("PARETO", "")
if PAR:
    import mihd.encoders.pca as P
    def encode2(self, adata):
        a, keep = _log_genes(self, adata)
        return _pca(self, a.X[:, keep], float(PAR))
    P.PCAGeneEncoder.encode = encode2
    print("pareto", PAR)
DR = os.environ.get("DEPTHREG", "")
if DR:
    import mihd.encoders.pca as P
    _enc = P.PCAGeneEncoder.encode
    def encode3(self, adata):
        pcs = _enc(self, adata).astype(np.float64)
        d = np.log1p(np.asarray(adata.X.sum(1)).ravel())
        D = np.column_stack([np.ones_like(d), d])
        beta, *_ = np.linalg.lstsq(D, pcs, rcond=None)
        return (pcs - D @ beta + pcs.mean(0)).astype(np.float32)
    P.PCAGeneEncoder.encode = encode3
    print("depth regressed from PCs")
MR = os.environ.get("MORANRES", "")
if MR:
    import mihd.encoders.pca as P
    from scipy import sparse as _sp
    def svg(adata, n_top, *, n_neighbors=6):
        from mihd.graph import knn_indices, morans_i
        nb = knn_indices(np.asarray(adata.obsm["spatial"], dtype=np.float64), min(n_neighbors, adata.n_obs - 1), include_self=True)
        X = adata.X.toarray() if _sp.issparse(adata.X) else np.asarray(adata.X)
        X = X.astype(np.float64)
        d = np.log1p(np.asarray(adata.obs["_depth"]).astype(float)) if "_depth" in adata.obs else np.log(np.expm1(X).sum(1) + 1)
        D = np.column_stack([np.ones_like(d), d - d.mean()])
        beta, *_ = np.linalg.lstsq(D, X, rcond=None)
        score = morans_i(X - D @ beta, nb)
        return np.sort(np.argsort(-score, kind="stable")[:n_top])
    P.spatially_variable_genes = svg
    print("moran on depth residuals")
if MR:
    _enc_mr = P.PCAGeneEncoder.encode
    def encode_mr(self, adata):
        adata = adata.copy()
        adata.obs["_depth"] = np.asarray(adata.X.sum(1)).ravel()
        return _enc_mr(self, adata)
    P.PCAGeneEncoder.encode = encode_mr
DF = os.environ.get("DEPTHFIELD", "")
if DF:
    import mihd.encoders.pca as P
    _enc_df = P.PCAGeneEncoder.encode
    def encode_df(self, adata):
        from mihd.graph import knn_indices
        pcs = _enc_df(self, adata).astype(np.float64)
        d = np.log1p(np.asarray(adata.X.sum(1)).ravel())
        nb = knn_indices(np.asarray(adata.obsm["spatial"], float), min(int(DF), adata.n_obs - 1), include_self=True)
        field = d[nb].mean(1)   # large-scale (technical) depth field
        D = np.column_stack([np.ones_like(field), field])
        beta, *_ = np.linalg.lstsq(D, pcs, rcond=None)
        return (pcs - D @ beta + pcs.mean(0)).astype(np.float32)
    P.PCAGeneEncoder.encode = encode_df
    print("depth field regressed, k", DF)
POOL = os.environ.get("POOL", "")
if POOL:
    # Pool raw counts over the spot and its POOL nearest spots *before* normalisation and log1p:
    # the log of a 7x deeper pseudo-spot has far less depth-dependent dropout bias than the mean
    # of seven logs. POOLW weights the neighbours (1 = plain sum).
    import mihd.encoders.pca as P
    _enc_pool = P.PCAGeneEncoder.encode
    POOLW = float(os.environ.get("POOLW", "1"))
    def encode_pool(self, adata):
        b = adata.copy()
        b.X = _pool_counts(adata, POOL, POOLW)
        return _enc_pool(self, b)
    P.PCAGeneEncoder.encode = encode_pool
    print("pooled counts, k", POOL, "w", POOLW)
POOL2 = os.environ.get("POOL2", "")
if POOL2:
    # Like POOL, but genes are ranked on the unpooled spots (pooling makes every gene look
    # autocorrelated); the pooled log-expression of those genes is then scaled and PCA'd.
    import mihd.encoders.pca as P
    def encode_pool2(self, adata):
        import scanpy as sc
        _, keep = _log_genes(self, adata)
        b = P.working_copy(adata)
        b.X = _pool_counts(adata, POOL2)
        sc.pp.normalize_total(b, target_sum=self.target_sum); sc.pp.log1p(b)
        return _pca(self, b.X[:, keep], 0.5)   # Pareto, the default scaling
    P.PCAGeneEncoder.encode = encode_pool2
    print("pooled counts v2, k", POOL2)
THIN = os.environ.get("THIN", "")
if THIN:
    # Binomial thinning of every spot above the THIN quantile of depth down to that depth
    # (equal sampling depth, so dropout no longer tracks depth); seeded, label-free.
    import mihd.encoders.pca as P
    from scipy import sparse as _sp4
    _enc_thin = P.PCAGeneEncoder.encode
    def encode_thin(self, adata):
        X = _sp4.csr_matrix(adata.X).astype(np.int64)
        depth = np.asarray(X.sum(1)).ravel()
        target = np.quantile(depth, float(THIN))
        p = np.minimum(1.0, target / np.maximum(depth, 1))
        rng = np.random.default_rng(self.seed)
        X = X.tocoo()
        data = rng.binomial(X.data, p[X.row]).astype(np.float32)
        b = adata.copy()
        b.X = _sp4.csr_matrix((data, (X.row, X.col)), shape=X.shape)
        b.X.eliminate_zeros()
        return _enc_thin(self, b)
    P.PCAGeneEncoder.encode = encode_thin
    print("thinned to depth quantile", THIN)
PSEUDO = os.environ.get("PSEUDO", "")
if PSEUDO:
    # Shifted log with pseudocount y0 relative to the median depth: log1p(x * T / n) with
    # T = median(n) / y0, i.e. log(x / s + y0) up to a constant (s = n / median n).
    import mihd.encoders.pca as P
    _enc_ps = P.PCAGeneEncoder.encode
    def encode_ps(self, adata):
        depth = np.asarray(adata.X.sum(1)).ravel()
        self.target_sum = float(np.median(depth)) / float(PSEUDO)
        return _enc_ps(self, adata)
    P.PCAGeneEncoder.encode = encode_ps
    print("pseudocount", PSEUDO)

# TREND=<degree>: after the anchored EM, a tied GMM with a shared polynomial spatial trend,
# x_i ~ N(mu_k + B^T c_i, S), started at that partition (DIAGNOSIS.md section 7; prototype of
# mihd.cluster.gmm_spatial_trend, which is now the default: run this with cluster.spatial_trend=none).
# TRENDMODE=after|anchor|anchor_std: where the trend EM runs; TRENDDUMP=<file.npz> saves its inputs.
if os.environ.get("TREND"):
    import mihd.cluster as _C
    from trend_gmm import feats as _feats, trendgmm as _trendgmm
    import mihd.train._datamodule as _D
    _DM = _D.SpotDataModule
    _state = {}
    class _RecDM(_DM):
        def __init__(self, *a, coords=None, **k):
            if coords is not None:
                _state["coords"] = np.asarray(coords.cpu() if hasattr(coords, "cpu") else coords, float)
            super().__init__(*a, coords=coords, **k)
    _D.SpotDataModule = _RecDM
    _gfl = _C.gmm_from_labels
    _ce = _C.cluster_embedding
    def _ce_rec(X, *a, **k):
        _state["gene"] = np.asarray(X, float)
        return _ce(X, *a, **k)
    _C.cluster_embedding = _ce_rec
    MODE_T = os.environ.get("TRENDMODE", "after")
    def _gfl_trend(X, init_labels, **kw):
        C = _feats(_state["coords"], int(os.environ["TREND"]))
        X = np.asarray(X, float)
        if MODE_T == "after":      # anchored EM on the reconstruction, then the trend EM
            lab = _gfl(X, init_labels, **kw)
        else:                      # the trend EM on the gene inputs first (a trend-aware anchor)
            a2, _ = _trendgmm(_state["gene"], C, np.asarray(init_labels), int(np.max(init_labels)) + 1)
            lab = _gfl(X, a2, **kw) if MODE_T == "anchor_std" else a2
        nbi = None
        if os.environ.get("INTERIOR"):   # slope from interior spots (trend_gmm.py INTERIOR / INTERIOR_FIXED)
            from mihd.graph import knn_indices
            nbi = knn_indices(_state["coords"], int(os.environ["INTERIOR"]), include_self=False)
        out, _ = _trendgmm(X, C, lab, int(lab.max()) + 1, nb=nbi) if MODE_T != "anchor_std" else (lab, None)
        if os.environ.get("TRENDDUMP"):
            np.savez(os.environ["TRENDDUMP"], X=X, gene=_state["gene"], coords=_state["coords"], anchor=np.asarray(init_labels), lab=lab, out=out)
        return _C._relabel_by_size(out)
    _C.gmm_from_labels = _gfl_trend
    print("trend", os.environ["TREND"])
