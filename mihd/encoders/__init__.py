"""Gene and image encoders: features per spot, from expression and from H&E patches."""

from ._patches import PatchGeometry, extract_patches, patch_geometry
from ._registry import (
    get_gene_encoder,
    get_image_encoder,
    list_gene_encoders,
    list_image_encoders,
    register_gene_encoder,
    register_image_encoder,
)

__all__ = [
    "PatchGeometry",
    "extract_patches",
    "patch_geometry",
    "get_gene_encoder",
    "get_image_encoder",
    "list_gene_encoders",
    "list_image_encoders",
    "register_gene_encoder",
    "register_image_encoder",
]
