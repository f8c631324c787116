"""Gene and image encoders: features per spot, from expression and from H&E patches."""

from ._patches import PatchGeometry, extract_patches, patch_geometry, read_fullres
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
    "read_fullres",
    "get_gene_encoder",
    "get_image_encoder",
    "list_gene_encoders",
    "list_image_encoders",
    "register_gene_encoder",
    "register_image_encoder",
]
