"""The ``timm`` encoder loads real local checkpoints (tiny ones written by the test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mihd.encoders import get_image_encoder


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def torchscript_ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_backbone.pt"
    torch.jit.save(torch.jit.script(TinyBackbone().eval()), str(path))
    return path


def _patches(seed=0, n=6):
    rng = np.random.default_rng(seed)
    return rng.random((n, 16, 16, 3), dtype=np.float32)


def test_torchscript_checkpoint_encodes(torchscript_ckpt):
    enc = get_image_encoder("timm")(checkpoint=str(torchscript_ckpt), torchscript=True, input_size=32, device="cpu")
    f = enc.encode(_patches())
    assert f.shape == (6, 5) and f.dtype == np.float32 and np.isfinite(f).all()
    # the real weights are used: the same module in Python gives the same features
    ref = torch.jit.load(str(torchscript_ckpt))
    x = torch.nn.functional.interpolate(torch.as_tensor(_patches()).permute(0, 3, 1, 2), size=(32, 32), mode="bilinear", align_corners=False)
    mean = torch.tensor(enc.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.std).view(1, 3, 1, 1)
    np.testing.assert_allclose(f, ref((x - mean) / std).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(f[0], f[1])


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        get_image_encoder("timm")(checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="checkpoint"):
        get_image_encoder("timm")()


def test_state_dict_without_model_name_explains(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(TinyBackbone().state_dict(), path)
    with pytest.raises(ValueError, match="model_name"):  # at construction: before any data is read
        get_image_encoder("timm")(checkpoint=str(path), device="cpu")


def test_state_dict_with_model_name_needs_timm(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as where timm is not installed: `import timm` fails
    path = tmp_path / "weights.pth"
    torch.save(TinyBackbone().state_dict(), path)
    enc = get_image_encoder("timm")(checkpoint=str(path), model_name="resnet18", device="cpu")
    with pytest.raises(ImportError, match="pip install timm"):
        enc.encode(_patches())


def test_timm_state_dict_round_trip(tmp_path, timm_module):
    timm = timm_module

    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    enc = get_image_encoder("timm")(checkpoint=str(path), model_name="resnet18", input_size=32, device="cpu")
    assert enc.encode(_patches()).shape == (6, 512)


def test_prepare_inputs_with_a_local_backbone(torchscript_ckpt, tmp_path):
    from mihd.data import synthetic_slice
    from mihd.pp import prepare_inputs

    adata = synthetic_slice(200, n_genes=40, n_domains=3, seed=1)
    prep = prepare_inputs(adata, image="timm", image_options={"checkpoint": str(torchscript_ckpt), "torchscript": True, "input_size": 32, "device": "cpu"}, cache_dir=tmp_path)
    assert prep.features["image"].shape == (200, 5)
