"""Tools: AnnData in, named keys out (scanpy style)."""

from ..refine import refine_labels
from ._cluster import cluster_domains

__all__ = ["cluster_domains", "refine_labels"]
