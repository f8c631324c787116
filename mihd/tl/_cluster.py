"""``cluster_domains``: cluster an embedding in ``obsm`` into K domains, written to ``obs``."""

from __future__ import annotations

import numpy as np
import pandas as pd


def cluster_domains(
    adata,
    *,
    use_rep: str,
    n_domains: int,
    method: str = "gmm",
    seed: int = 0,
    key_added: str = "mihd_domains",
    copy: bool = False,
    **options,
):
    """Cluster ``adata.obsm[use_rep]`` into ``n_domains`` spatial domains.

    Parameters
    ----------
    adata
        AnnData holding the embedding.
    use_rep
        ``obsm`` key of the embedding (e.g. ``"X_mihd_adaln_attention"``).
    n_domains
        Number of domains K.
    method
        ``gmm`` (default), ``kmeans``, ``leiden`` or ``mclust``; see `mihd.cluster.cluster_embedding`.
    seed
        Random seed (recorded).
    key_added
        ``obs`` column to write.
    copy
        Return a modified copy instead of writing in place.
    **options
        Passed to the clustering method.

    Returns
    -------
    None, or the modified copy when ``copy=True``. Writes

    ``adata.obs[key_added]``
        Categorical domain labels ``"0"`` .. ``"K-1"``.
    ``adata.uns[key_added]["params"]``
        ``use_rep``, ``n_domains``, ``method``, ``seed`` and the options.
    """
    from ..cluster import cluster_embedding

    if use_rep not in adata.obsm:
        raise KeyError(f"obsm has no {use_rep!r}; available: {list(adata.obsm.keys())}.")
    adata = adata.copy() if copy else adata
    labels = cluster_embedding(np.asarray(adata.obsm[use_rep]), n_domains, method=method, seed=seed, **options)
    adata.obs[key_added] = pd.Categorical(labels.astype(str), categories=[str(i) for i in range(n_domains)])
    adata.uns[key_added] = {"params": {"use_rep": use_rep, "n_domains": n_domains, "method": method, "seed": seed, **options}}
    return adata if copy else None
