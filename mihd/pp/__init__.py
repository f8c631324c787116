"""Preprocessing: AnnData in, per-modality features out."""

from ._prepare import PreparedInputs, data_fingerprint, prepare_inputs, slide_images

__all__ = ["PreparedInputs", "data_fingerprint", "prepare_inputs", "slide_images"]
