"""Plotting: AnnData in, matplotlib figures out."""

from ._spatial import spatial_domains

__all__ = ["spatial_domains"]
