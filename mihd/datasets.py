"""Ready-made data: the bundled DLPFC example slice and the synthetic slice generator.

::

    import mihd
    adata = mihd.datasets.dlpfc_151673()        # real Visium slice, with layer labels
    toy = mihd.datasets.synthetic_slice(500)    # seconds-fast synthetic slice with ground truth
"""

from __future__ import annotations

from .data._example import dlpfc_151673, example_path
from .data._synthetic import synthetic_slice

__all__ = ["dlpfc_151673", "example_path", "synthetic_slice"]
