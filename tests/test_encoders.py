"""Encoders and the cached preparation step."""

from __future__ import annotations

import numpy as np
import pytest

from mihd.encoders import extract_patches, get_image_encoder, list_gene_encoders, list_image_encoders, patch_geometry
from mihd.pp import prepare_inputs


def test_extract_patches_samples_the_right_place_and_flags_edges():
    img = np.zeros((50, 80, 3), np.float32)
    img[10:20, 30:40] = 1.0  # a white square centred at x=34.5, y=14.5
    patches, outside = extract_patches(img, np.array([[34.5, 14.5], [1.0, 1.0], [60.0, 40.0]]), 6.0, out_px=8)
    assert patches.shape == (3, 8, 8, 3)
    assert patches[0].min() > 0.99  # fully inside the square
    assert outside.tolist() == [False, True, False]
    assert patches[2].max() == 0.0


def test_patch_geometry_prefers_hires_and_scales_physically():
    sf = {"spot_diameter_fullres": 100.0, "tissue_hires_scalef": 0.2, "tissue_lowres_scalef": 0.05}
    g = patch_geometry(sf, {"lowres": 1, "hires": 1}, context=2.0)
    assert g.image_key == "hires" and g.side_img_px == pytest.approx(40.0)
    g = patch_geometry(sf, {"lowres": 1}, context=1.0)
    assert g.image_key == "lowres" and g.side_img_px == pytest.approx(5.0)
    with pytest.raises(KeyError, match="spot_diameter_fullres"):
        patch_geometry({}, {"lowres": 1})
    with pytest.raises(KeyError, match="encoder.image=none"):
        patch_geometry(sf, {})


# Encoders built from a user's file (checkpoint, embeddings) have their own tests.
PATCH_ENCODERS = [
    n
    for n in list_image_encoders()
    if getattr(get_image_encoder(n), "uses_patches", True) and not getattr(get_image_encoder(n), "needs_user_file", False)
]


@pytest.mark.parametrize("name", PATCH_ENCODERS)
def test_image_encoders_separate_stained_from_blank(name):
    rng = np.random.default_rng(0)
    blank = np.ones((10, 8, 8, 3), np.float32) - rng.random((10, 8, 8, 3), dtype=np.float32) * 0.02
    purple = np.clip(np.array([0.55, 0.35, 0.65], np.float32) + rng.normal(0, 0.05, (10, 8, 8, 3)), 0, 1).astype(np.float32)
    enc = get_image_encoder(name)()
    patches = np.concatenate([blank, purple])
    if getattr(enc, "requires_fit", False):
        enc.fit(patches)
    f = enc.encode(patches)
    assert f.shape[0] == 20 and np.isfinite(f).all()
    within = np.linalg.norm(f[:10] - f[:10].mean(0), axis=1).mean()
    between = np.linalg.norm(f[:10].mean(0) - f[10:].mean(0))
    assert between > 3 * within


def test_gene_encoders_registered():
    assert "pca" in list_gene_encoders()


def test_prepare_inputs_caches_by_parameters(tiny_slice, tmp_path):
    a = prepare_inputs(tiny_slice, gene_options={"n_comps": 8, "n_top_genes": 40}, cache_dir=tmp_path)
    assert a.dims == {"gene": 8, "image": a.features["image"].shape[1]}
    assert not a.meta["cache_hit"] and a.meta["image_key"] == "lowres"
    b = prepare_inputs(tiny_slice, gene_options={"n_comps": 8, "n_top_genes": 40}, cache_dir=tmp_path)
    assert b.meta["cache_hit"]
    np.testing.assert_array_equal(a.features["gene"], b.features["gene"])
    c = prepare_inputs(tiny_slice, gene_options={"n_comps": 6, "n_top_genes": 40}, cache_dir=tmp_path)
    assert not c.meta["cache_hit"] and c.dims["gene"] == 6
    assert len(list(tmp_path.glob("prepared-*.npz"))) == 2


def test_corrupt_cache_is_recomputed(tiny_slice, tmp_path):
    a = prepare_inputs(tiny_slice, image=None, cache_dir=tmp_path)
    (path,) = tmp_path.glob("prepared-*.npz")
    path.write_bytes(b"not a zip")
    b = prepare_inputs(tiny_slice, image=None, cache_dir=tmp_path)
    assert not b.meta["cache_hit"]
    np.testing.assert_allclose(a.features["gene"], b.features["gene"])


def test_image_encoder_without_image_is_a_clear_error(tiny_slice):
    adata = tiny_slice.copy()
    del adata.uns["spatial"]
    with pytest.raises(KeyError, match="encoder.image=none"):
        prepare_inputs(adata)


def test_unknown_encoder_lists_registered():
    with pytest.raises(KeyError, match="stats"):
        get_image_encoder("resnet_from_the_internet")


def test_image_features_follow_the_domains(tiny_slice):
    """The synthetic image's colour depends on the domain: stats features must see it."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.cluster import KMeans

    prep = prepare_inputs(tiny_slice)
    x = prep.features["image"]
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    labels = KMeans(3, n_init=10, random_state=0).fit_predict(x)
    assert adjusted_rand_score(tiny_slice.obs["ground_truth"], labels) > 0.5


# --------------------------------------------------------------------------- precomputed


def test_precomputed_npy_and_table(tiny_slice, tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(tiny_slice.n_obs, 5)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    prep = prepare_inputs(tiny_slice, image="precomputed", image_options={"path": str(tmp_path / "emb.npy")})
    np.testing.assert_array_equal(prep.features["image"], emb)

    table = pd.DataFrame(emb, columns=[f"f{i}" for i in range(5)])
    table.insert(0, "barcode", tiny_slice.obs_names)
    table.sample(frac=1.0, random_state=0).to_csv(tmp_path / "emb.csv", index=False)  # order must not matter
    prep = prepare_inputs(tiny_slice, image="precomputed", image_options={"path": str(tmp_path / "emb.csv")})
    np.testing.assert_allclose(prep.features["image"], emb, rtol=1e-6)


def test_precomputed_validation(tiny_slice, tmp_path):
    import pandas as pd

    np.save(tmp_path / "short.npy", np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"\(300, n_features\)"):
        prepare_inputs(tiny_slice, image="precomputed", image_options={"path": str(tmp_path / "short.npy")})
    half = pd.DataFrame({"barcode": tiny_slice.obs_names[:150], "f": np.arange(150.0)})
    half.to_csv(tmp_path / "half.csv", index=False)
    with pytest.raises(ValueError, match="cover 150 of 300"):
        prepare_inputs(tiny_slice, image="precomputed", image_options={"path": str(tmp_path / "half.csv")})
    filled = prepare_inputs(tiny_slice, image="precomputed", image_options={"path": str(tmp_path / "half.csv"), "min_coverage": 0.5})
    assert np.isfinite(filled.features["image"]).all()
    with pytest.raises(FileNotFoundError, match="absent.npy"):
        prepare_inputs(tiny_slice, image="precomputed", image_options={"path": str(tmp_path / "absent.npy")})


def test_precomputed_missing_file_stops_the_cli_before_reading(tmp_path, capsys, monkeypatch):
    import mihd.train._runner as runner
    from mihd.cli import main

    monkeypatch.setattr(runner, "load_slice", lambda *a, **k: pytest.fail("data was read"))
    code = main(["train", "trainer=fast", "encoder.image=precomputed", f"+encoder.image_options.path={tmp_path / 'nope.npy'}"])
    assert code == 1 and "nope.npy" in capsys.readouterr().err


# --------------------------------------------------------------------------- full resolution


def test_uint8_and_memmapped_images_give_the_same_patches(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "he.tif", img8)
    from mihd.encoders import read_fullres

    mm = read_fullres(tmp_path / "he.tif")
    assert isinstance(mm, np.memmap)  # uncompressed TIFF: nothing loaded up front
    centers = np.array([[10.2, 20.7], [70.0, 60.0], [0.0, 0.0]])
    a, out_a = extract_patches(img8.astype(np.float32) / 255, centers, 9.0, out_px=8)
    b, out_b = extract_patches(mm, centers, 9.0, out_px=8)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert out_a.tolist() == out_b.tolist() == [False, True, True]


def test_fullres_image_is_preferred_and_used(tiny_slice, tmp_path):
    """A full-resolution TIFF (the lowres image blown up to full-res pixels) drives the patches."""
    import tifffile

    adata = tiny_slice.copy()
    entry = adata.uns["spatial"][next(iter(adata.uns["spatial"]))]
    low = entry["images"]["lowres"]
    sf = entry["scalefactors"]["tissue_lowres_scalef"]
    xy = np.asarray(adata.obsm["spatial"])
    h, w = int(xy[:, 1].max() + 200), int(xy[:, 0].max() + 200)
    rows = np.clip((np.arange(h) * sf).astype(int), 0, low.shape[0] - 1)
    cols = np.clip((np.arange(w) * sf).astype(int), 0, low.shape[1] - 1)
    full = (low[rows][:, cols] * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "full.tif", full)
    entry.setdefault("metadata", {})["fullres_path"] = str(tmp_path / "full.tif")

    prep = prepare_inputs(adata, cache_dir=tmp_path / "cache")
    assert prep.meta["image_key"] == "fullres" and prep.meta["scale"] == 1.0
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x = prep.features["image"]
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    labels = KMeans(3, n_init=10, random_state=0).fit_predict(x)
    assert adjusted_rand_score(adata.obs["ground_truth"], labels) > 0.5
    # a different full-res file is a different cache entry
    tifffile.imwrite(tmp_path / "full.tif", 255 - full)
    assert not prepare_inputs(adata, cache_dir=tmp_path / "cache").meta["cache_hit"]


def test_prepare_inputs_leaves_torch_on_the_thread_count_it_found(tiny_slice, monkeypatch):
    # scanpy's numba kernels reset the shared OpenMP thread count to every core on some
    # inputs (seen on the development slices); an encoder that does the same stands in here.
    import torch

    from mihd.encoders import _registry
    from mihd.encoders.pca import PCAGeneEncoder

    class ThreadResettingPCA(PCAGeneEncoder):
        def encode(self, adata):
            torch.set_num_threads(torch.get_num_threads() + 1)
            return super().encode(adata)

    monkeypatch.setitem(_registry._REGISTRIES["gene"], "thread_resetting_pca", ThreadResettingPCA)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        prepare_inputs(tiny_slice, gene="thread_resetting_pca", image=None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
