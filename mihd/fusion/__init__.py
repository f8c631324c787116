"""Fusion strategies, one per file, found through the registry."""

from ._registry import FusionInfo, forward_fusion, fusion_info, get_fusion, list_fusions, needs_coords, register_fusion

__all__ = ["FusionInfo", "forward_fusion", "fusion_info", "get_fusion", "list_fusions", "needs_coords", "register_fusion"]
