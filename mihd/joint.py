"""Domains shared by gene expression and the H&E image: one mixture over both modalities.

The domains of a slice are one set of labels; each modality sees them through its own noise. The
mixture here models exactly that: spot *i* in domain *k* has gene features ``g_i ~ N(mu_k^g, S_g)`` and
image features ``h_i ~ N(mu_k^h, S_h)``, independent given the domain (a tied covariance per modality,
no covariance across modalities), and the image's log-likelihood counts with a weight ``beta`` in
[0, 1]::

    log p(k | g_i, h_i) = log pi_k + log N(g_i; mu_k^g, S_g) + beta * log N(h_i; mu_k^h, S_h) + const

``beta = 0`` is the gene mixture exactly; ``beta = 1`` the plain product of both modalities. The image
can therefore split a domain the genes cannot (two morphologies with one expression profile), and the
genes keep the domains the image cannot see.

How much the image counts is derived from the data, never from labels: `image_weight` compares the
domains each modality finds on its own (a tied GMM of the smoothed gene inputs, one of the smoothed image
features, both with K domains) by their adjusted mutual information. An image whose own domains the
expression corroborates sees the tissue; one whose domains are unrelated to the expression domains
(staining gradients, glass at the tissue edge, a shuffled or noisy image) is weighted 0 and left out
entirely. Measured in ``benchmarks/image/README.md``: DLPFC lowres images (12.7 µm per pixel, a spot ~8
px: colour without morphology) agree 0.29-0.39 and would cost up to 0.3 ARI if fused at beta = 1;
synthetic slices whose image carries morphology-only domains agree 0.6-0.8; a permuted image 0.00.

Functions take plain arrays (no AnnData); `mihd.train` calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["AGREEMENT_RANGE", "image_weight", "image_components", "block_covariance", "joint_mixture"]

#: Modality agreement (AMI of the per-modality partitions) mapped linearly onto beta: at or below the
#: first value the image is left out (beta 0), at or above the second it counts fully (beta 1).
AGREEMENT_RANGE = (0.55, 0.65)


def image_weight(gene_labels: ArrayLike, image_labels: ArrayLike, *, agreement_range=AGREEMENT_RANGE) -> tuple[float, float]:
    """``(beta, agreement)``: how much the image counts in the joint mixture, from how far its own
    domains agree with the gene domains (adjusted mutual information, 0 for unrelated partitions).

    ``beta = clip((agreement - lo) / (hi - lo), 0, 1)`` with ``(lo, hi) = agreement_range``.
    """
    from sklearn.metrics import adjusted_mutual_info_score

    g = np.asarray(gene_labels).ravel()
    h = np.asarray(image_labels).ravel()
    if g.shape != h.shape:
        raise ValueError(f"gene_labels ({g.shape[0]}) and image_labels ({h.shape[0]}) must label the same spots.")
    lo, hi = (float(v) for v in agreement_range)
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"agreement_range={agreement_range!r}: need 0 <= low < high <= 1.")
    agreement = float(adjusted_mutual_info_score(g, h))
    return float(np.clip((agreement - lo) / (hi - lo), 0.0, 1.0)), agreement


#: The image block of the mixture: principal components of the image features up to this share of
#: their variance, at most MAX_IMAGE_COMPONENTS.
IMAGE_VARIANCE = 0.95
MAX_IMAGE_COMPONENTS = 10


def image_components(image: ArrayLike, *, variance: float = IMAGE_VARIANCE, max_components: int = MAX_IMAGE_COMPONENTS):
    """A projection of image features onto their leading principal components: the fewest that hold
    ``variance`` of the variance, at most ``max_components`` (at least 2). Returns ``project(x)``.

    Patch statistics are a few dozen correlated numbers; a mixture over all of them next to the gene
    PCs has too many covariance entries for a few hundred spots (synthetic legacy-ST slice with
    morphology-only domains, 450 spots: ARI 0.61 with the 27 raw features, 0.93-0.96 with 5-10 PCs).
    """
    x = np.asarray(image, dtype=np.float64)
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    share = np.cumsum(sv**2) / max(float((sv**2).sum()), 1e-300)
    q = int(np.clip(np.searchsorted(share, variance) + 1, 2, min(max_components, vt.shape[0])))
    basis = vt[:q].T

    def project(rows: ArrayLike) -> NDArray[np.float64]:
        return (np.asarray(rows, dtype=np.float64) - mean) @ basis

    project.n_components = q
    return project


def block_covariance(S: NDArray[np.float64], sizes: Sequence[int], weights: Sequence[float]) -> NDArray[np.float64]:
    """The effective covariance of the weighted block mixture: ``S`` with the covariance *between*
    blocks set to 0 and block ``m`` divided by ``weights[m]`` (a weight w tempers that block's
    log-density by w: ``w * d^2_S = d^2_{S/w}``)."""
    sizes = [int(s) for s in sizes]
    if sum(sizes) != S.shape[0] or len(sizes) != len(weights):
        raise ValueError(f"block sizes {sizes} do not add up to the {S.shape[0]} features, or do not match weights {list(weights)}.")
    out = np.zeros_like(S)
    lo = 0
    for size, w in zip(sizes, weights):
        if not w > 0:
            raise ValueError(f"block weights must be > 0 (leave a weight-0 modality out instead); got {list(weights)}.")
        out[lo : lo + size, lo : lo + size] = S[lo : lo + size, lo : lo + size] / float(w)
        lo += size
    return out


def shrink_blocks(S: NDArray[np.float64], resid: NDArray[np.float64], sizes: Sequence[int]) -> NDArray[np.float64]:
    """Each block of the pooled within-domain covariance ``S`` shrunk towards its diagonal by the
    Ledoit-Wolf amount estimated from the (standardised) residuals ``resid``.

    A legacy-ST section has a few hundred spots for ~60 features: the sample covariance of a block is
    then noisy enough that the mixture fits it instead of the domains (synthetic legacy-ST slice with
    morphology-only domains: refined ARI 0.62 unshrunk). Shrinkage vanishes as spots outnumber features.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    out = S.copy()
    lo = 0
    for size in sizes:
        part = slice(lo, lo + size)
        lo += size
        if size < 2:
            continue
        r = resid[:, part]
        sd = r.std(0)
        if not (sd > 0).all():
            continue
        lam = float(ledoit_wolf_shrinkage(r / sd, assume_centered=True))
        block = out[part, part]
        out[part, part] = (1 - lam) * block + lam * np.diag(np.diag(block))
    return out


def _block_em(
    X: NDArray[np.float64], labels: NDArray[np.int64], K: int, sizes: Sequence[int], weights: Sequence[float], *,
    reg_covar: float, max_iter: int, tol: float, assign: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.int64], float]:
    """EM of the weighted block mixture from a partition; returns (labels, weighted log-likelihood per spot).
    With ``assign``, one M-step on ``X`` and the labels of the rows of ``assign`` (chunked)."""
    from scipy.special import logsumexp

    n, f = X.shape
    R = np.eye(K)[labels]
    prev = -np.inf
    ll = prev
    for _ in range(int(max_iter)):
        w = R.sum(0) + 1e-10
        mu = (R.T @ X) / w[:, None]
        S = (X.T @ X - (mu * w[:, None]).T @ mu) / n
        S = shrink_blocks(S, X - R @ mu, sizes) + reg_covar * np.eye(f)
        chol = np.linalg.cholesky(block_covariance(S, sizes, weights))
        M = np.linalg.solve(chol, mu.T).T

        def logp_of(rows):
            Z = np.linalg.solve(chol, rows.T).T
            return -0.5 * ((Z**2).sum(1)[:, None] - 2 * Z @ M.T + (M**2).sum(1)[None, :]) + np.log(w / n)

        if assign is not None:
            chunks = [logp_of(assign[lo : lo + 100_000]).argmax(1) for lo in range(0, assign.shape[0], 100_000)]
            return np.concatenate(chunks).astype(np.int64), float("nan")
        logp = logp_of(X)
        # weighted log-likelihood: every block's log-determinant counts with its weight
        logdet, lo = 0.0, 0
        for size, bw in zip(sizes, weights):
            logdet += bw * np.linalg.slogdet(S[lo : lo + size, lo : lo + size])[1]
            lo += size
        norm = logsumexp(logp, 1, keepdims=True)
        ll = float(norm.mean() - 0.5 * logdet)
        R = np.exp(logp - norm)
        if ll - prev < tol:
            break
        prev = ll
    return R.argmax(1).astype(np.int64), ll


def joint_mixture(
    blocks: Sequence[ArrayLike],
    weights: Sequence[float],
    starts: Sequence[ArrayLike] = (),
    *,
    n_clusters: int | None = None,
    n_init: int = 0,
    reg_covar: float = 1e-6,
    max_iter: int = 200,
    tol: float = 1e-5,
    fit_max_samples: int | None = 200_000,
    seed: int = 0,
    return_info: bool = False,
) -> NDArray[np.int64] | tuple[NDArray[np.int64], dict[str, Any]]:
    """The weighted block mixture over ``blocks`` (one ``(n, F_m)`` array per modality), EM from each
    partition in ``starts``; the start that ends at the highest weighted likelihood wins.

    Parameters
    ----------
    blocks
        Per-modality features of the same spots, e.g. ``[genes, image]``.
    weights
        Per-block weight of the log-likelihood, each in (0, 1] (genes 1, the image `image_weight`).
    starts
        Partitions to start EM from (e.g. the gene mixture's and the image mixture's own domains);
        each must use labels ``0..K-1`` with the same K.
    n_clusters
        K, required when ``starts`` is empty.
    n_init
        Further starts: k-means runs (seeded from ``seed``) on the blocks each scaled to unit overall sd
        and by the square root of its weight. On a synthetic slice with morphology-only domains neither
        modality's own partition reached the joint optimum (refined ARI 0.82); k-means starts did (0.98).
    fit_max_samples
        Above this many spots EM runs on a seeded subsample and every spot is then assigned.
    return_info
        Also return ``{"start": index of the winning start, "loglik": [per start]}``.

    Returns
    -------
    numpy.ndarray
        ``int64`` labels numbered by decreasing domain size.
    """
    from .cluster import _fit_sample, _relabel_by_size

    arrays = [np.asarray(b, dtype=np.float64) for b in blocks]
    n = arrays[0].shape[0]
    if any(a.ndim != 2 or a.shape[0] != n for a in arrays) or len(arrays) != len(weights):
        raise ValueError("blocks must be 2-D arrays with one row per spot each, and one weight per block.")
    X = np.hstack(arrays)
    if not np.isfinite(X).all():
        raise ValueError("joint_mixture: the features hold NaN or infinite values.")
    sizes = [a.shape[1] for a in arrays]
    inits = [np.unique(np.asarray(s, dtype=np.int64).ravel(), return_inverse=True)[1] for s in starts]
    K = max([int(s.max()) + 1 for s in inits] + [int(n_clusters or 0)])
    if K < 2 or (not inits and not n_init):
        raise ValueError("joint_mixture needs start partitions, or n_clusters >= 2 with n_init >= 1.")
    sample = _fit_sample(n, fit_max_samples, seed)
    fit = slice(None) if sample is None else sample
    if n_init:
        from sklearn.cluster import KMeans

        Z = np.hstack([a[fit] * np.sqrt(w) / max(float(a.std()), 1e-12) for a, w in zip(arrays, weights)])
        rng = np.random.default_rng(seed)
        for _ in range(int(n_init)):
            km = KMeans(K, n_init=1, random_state=int(rng.integers(2**31 - 1))).fit(Z)
            part = np.full(n, -1, dtype=np.int64)  # only the fitted rows are read
            part[fit] = km.labels_
            inits.append(part)
    results = [_block_em(X[fit], s[fit], K, sizes, weights, reg_covar=reg_covar, max_iter=max_iter, tol=tol) for s in inits]
    best = int(np.argmax([ll for _, ll in results]))
    labels = results[best][0]
    if sample is not None:  # assign every spot by one more M- and E-step of the winning fit
        labels = _block_em(X[sample], labels, K, sizes, weights, reg_covar=reg_covar, max_iter=1, tol=tol,
                           assign=X)[0]
    labels = _relabel_by_size(labels)
    if return_info:
        return labels, {"start": best, "loglik": [round(ll, 4) for _, ll in results]}
    return labels

