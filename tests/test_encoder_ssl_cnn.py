"""The self-supervised CNN image encoder ``ssl_cnn``: interface, determinism, what it learns."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from mihd.encoders import get_image_encoder, list_image_encoders

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_lightning")

# Small and short: the interface and the training loop are what is tested, not capacity.
FAST = {"embed_dim": 8, "width": 8, "epochs": 1, "batch_size": 32, "progress_bar": False}


def _encoder(**options):
    return get_image_encoder("ssl_cnn")(**{**FAST, **options})


def _tissue_patches(n: int, rng: np.random.Generator, *, kind: str) -> np.ndarray:
    """Pink, eosin-rich stroma with sparse nuclei, or purple, densely nucleated patches."""
    if kind == "pink":
        background, nuclei_fraction = np.array([0.93, 0.65, 0.78]), 0.05
    else:
        background, nuclei_fraction = np.array([0.70, 0.55, 0.80]), 0.35
    nucleus = np.array([0.35, 0.20, 0.55])
    is_nucleus = rng.random((n, 16, 16, 1)) < nuclei_fraction
    patches = np.where(is_nucleus, nucleus, background) + rng.normal(0, 0.03, (n, 16, 16, 3))
    return np.clip(patches, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def patches():
    rng = np.random.default_rng(0)
    return np.concatenate([_tissue_patches(64, rng, kind="pink"), _tissue_patches(64, rng, kind="purple")])


def test_registered_and_needs_fit():
    assert "ssl_cnn" in list_image_encoders()
    cls = get_image_encoder("ssl_cnn")
    assert cls.requires_fit is True and cls.encoder_name == "ssl_cnn"


def test_fit_then_encode_gives_finite_features(patches):
    enc = _encoder()
    assert enc.fit(patches) is enc
    feats = enc.encode(patches[:50])
    assert feats.shape == (50, 8) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert enc.encode(patches[:0]).shape == (0, 8)


def test_encode_before_fit_is_a_clear_error(patches):
    with pytest.raises(RuntimeError, match="fit"):
        _encoder().encode(patches)


def test_same_seed_same_features_and_caller_rng_untouched(patches):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = _encoder(seed=3, epochs=2).fit(patches).encode(patches)
    assert torch.equal(torch.rand(3), expected_next)  # fitting seeds a forked RNG only
    b = _encoder(seed=3, epochs=2).fit(patches).encode(patches)
    np.testing.assert_array_equal(a, b)
    c = _encoder(seed=4, epochs=2).fit(patches).encode(patches)
    assert not np.allclose(a, c)


def test_features_separate_two_tissue_types(patches):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    enc = _encoder(embed_dim=16, width=16, epochs=3).fit(patches)
    f = enc.encode(patches)
    truth = np.repeat([0, 1], 64)
    within = max(np.linalg.norm(f[truth == g] - f[truth == g].mean(0), axis=1).mean() for g in (0, 1))
    between = np.linalg.norm(f[truth == 0].mean(0) - f[truth == 1].mean(0))
    assert between > 3 * within
    labels = KMeans(2, n_init=10, random_state=0).fit_predict(f)
    assert adjusted_rand_score(truth, labels) > 0.8


def test_augmentations_are_exact_rotations_when_jitter_is_off():
    from mihd.encoders.ssl_cnn import augment_patches

    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = augment_patches(
        x, torch.Generator().manual_seed(1), crop_min_area=1.0, stain_jitter=0, brightness=0, contrast=0, noise_std=0
    )
    for xi, yi in zip(x, y):
        views = [torch.rot90(v, k, (1, 2)) for v in (xi, xi.flip(2)) for k in range(4)]
        assert min(float((v - yi).abs().max()) for v in views) < 1e-5
    z = augment_patches(x, torch.Generator().manual_seed(1))
    assert z.shape == x.shape and 0 <= float(z.min()) and float(z.max()) <= 1


@pytest.mark.parametrize(
    "options,match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"temperature": 0}, "temperature"),
        ({"crop_min_area": 0}, "crop_min_area"),
        ({"accelerator": "tpu"}, "tpu"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        _encoder(**options)


def test_bad_patches_are_named():
    enc = _encoder()
    with pytest.raises(ValueError, match=r"\(B, h, w, 3\)"):
        enc.fit(np.zeros((4, 16, 16), np.float32))
    with pytest.raises(ValueError, match="255"):
        enc.fit(np.full((4, 8, 8, 3), 200.0, np.float32))


def test_prepare_inputs_fits_on_the_slide_and_keys_the_cache(tmp_path):
    import mihd

    adata = mihd.data.synthetic_slice(300, n_genes=60, n_domains=3, seed=0)
    options = {"epochs": 2, "progress_bar": False}
    a = mihd.pp.prepare_inputs(adata, image="ssl_cnn", image_options=options, cache_dir=tmp_path)
    assert a.dims["image"] == 32 and np.isfinite(a.features["image"]).all()
    assert a.meta["fit_patches"] == 300 and not a.meta["cache_hit"]
    again = mihd.pp.prepare_inputs(adata, image="ssl_cnn", image_options={**options, "progress_bar": True}, cache_dir=tmp_path)
    assert again.meta["cache_hit"]  # the progress bar changes nothing in the features
    np.testing.assert_array_equal(a.features["image"], again.features["image"])
    other = mihd.pp.prepare_inputs(adata, image="ssl_cnn", image_options={**options, "epochs": 1}, cache_dir=tmp_path)
    assert not other.meta["cache_hit"] and other.meta["cache_key"] != a.meta["cache_key"]


def test_config_composes_with_the_code_defaults():
    from mihd.cli import compose
    from omegaconf import OmegaConf

    cfg = compose("train", ["encoder=ssl_cnn"])
    assert cfg.encoder.image == "ssl_cnn" and cfg.encoder.gene == "pca"
    options = OmegaConf.to_container(cfg.encoder.image_options)
    signature = inspect.signature(get_image_encoder("ssl_cnn"))
    assert options == {name: p.default for name, p in signature.parameters.items()}
