"""Fusion strategies, one per file, found through the registry."""

from ._registry import FusionInfo, fusion_info, get_fusion, list_fusions, needs_coords, register_fusion

__all__ = ["FusionInfo", "fusion_info", "get_fusion", "list_fusions", "needs_coords", "register_fusion"]
