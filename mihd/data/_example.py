"""The example slice bundled with the package: DLPFC 151673 (Maynard et al. 2021)."""

from __future__ import annotations

from pathlib import Path

from anndata import AnnData

from ._visium import read_visium

__all__ = ["example_path", "dlpfc_151673"]

_EXAMPLE_DIR = Path(__file__).parent / "example" / "151673"


def example_path() -> Path:
    """Folder of the bundled DLPFC slice 151673, a Space Ranger 1.x-style layout.

    See ``mihd/data/example/README.md`` for its source, licences and files.
    """
    return _EXAMPLE_DIR


def dlpfc_151673(*, load_images: bool = True) -> AnnData:
    """The bundled human DLPFC Visium slice 151673 with its manual layer annotation.

    3,639 in-tissue spots x 5,000 most variable genes (Ensembl ids), raw counts;
    lowres H&E image only (600 x 600 px).

    Parameters
    ----------
    load_images
        Load the lowres H&E image into ``uns["spatial"]["151673"]["images"]["lowres"]``.

    Returns
    -------
    AnnData as from :func:`~mihd.data.read_visium`, with ``obs["ground_truth"]``:
    categorical ``Layer_1`` .. ``Layer_6``, ``WM``; NaN for the 28 unannotated spots.
    """
    return read_visium(_EXAMPLE_DIR, annotation="truth.tsv", annotation_key="ground_truth", load_images=load_images)
