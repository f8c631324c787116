"""Every registered fusion, parametrized over the registry: a new file is tested automatically."""

from __future__ import annotations

import inspect

import pytest
import torch

import mihd
from mihd.fusion import forward_fusion, fusion_info, get_fusion, list_fusions, register_fusion

DIMS = {"gene": 12, "image": 7}
N = 24


K = 5


def _inputs(n=N, dims=DIMS, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(n, d, generator=g) for m, d in dims.items()}
    coords = torch.rand(n, 2, generator=g) * 2 - 1
    return feats, coords


def _neighborhood(feats, coords, k=K):
    """Brute-force kNN (fine for a test) in the layout the datamodule produces."""
    d = torch.cdist(coords, coords)
    d.fill_diagonal_(float("inf"))
    nbr = d.topk(k, largest=False).indices
    hood = {m: x[nbr] for m, x in feats.items()}
    hood["offsets"] = coords[nbr] - coords.unsqueeze(1)
    return hood


def _forward(name, module, feats, coords):
    return forward_fusion(module, feats, coords, _neighborhood(feats, coords))


def _batch(module, feats, coords):
    import numpy as np

    batch = {**feats, "coords": coords, "neighborhood": _neighborhood(feats, coords)}
    if hasattr(module, "precompute"):
        aux = module.precompute({m: x.numpy() for m, x in feats.items()}, seed=0)
        batch["aux"] = {k: torch.as_tensor(np.asarray(v)) for k, v in aux.items()}
    return batch


def _training_loss(module, name, feats, coords):
    """A stand-in for the runner's objective: an output loss plus the strategy's own term."""
    z = _forward(name, module, feats, coords)
    loss = (z**2).mean()
    if hasattr(module, "extra_loss"):
        loss = loss + module.extra_loss(z, _batch(module, feats, coords))
    return loss


def test_needs_coords_constant_is_derived_from_registry():
    assert mihd.NEEDS_COORDS_FUSIONS == frozenset(mihd.list_fusions(needs_coords=True))
    assert "adaln_attention" in mihd.NEEDS_COORDS_FUSIONS
    assert set(list_fusions(needs_coords=True)) | set(list_fusions(needs_coords=False)) == set(list_fusions())


@pytest.mark.parametrize("name", list_fusions())
def test_needs_coords_matches_forward_signature(name):
    params = inspect.signature(get_fusion(name).forward).parameters
    coords = params.get("coords")
    assert fusion_info(name).needs_coords == (coords is not None and coords.default is inspect.Parameter.empty)


@pytest.mark.parametrize("name", list_fusions())
def test_forward_shapes_and_determinism(name):
    torch.manual_seed(0)
    module = get_fusion(name)(DIMS, out_dim=8).eval()
    feats, coords = _inputs()
    with torch.no_grad():
        z1 = _forward(name, module, feats, coords)
        z2 = _forward(name, module, feats, coords)
    assert z1.shape[0] == N and z1.ndim == 2
    if fusion_info(name).trainable:
        assert z1.shape[1] == 8
    assert torch.isfinite(z1).all()
    assert torch.equal(z1, z2)


@pytest.mark.parametrize("name", list_fusions(trainable=True))
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    module = get_fusion(name)(DIMS, out_dim=8).train()
    feats, coords = _inputs()
    _training_loss(module, name, feats, coords).backward()
    without = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not without, f"{name}: parameters without gradient: {without}"
    # a real step changes the output
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module.eval()
    before = _forward(name, module, feats, coords).detach()
    module.train()
    for _ in range(3):
        opt.zero_grad()
        _training_loss(module, name, feats, coords).backward()
        opt.step()
    module.eval()
    assert not torch.allclose(before, _forward(name, module, feats, coords).detach())


@pytest.mark.parametrize("name", list_fusions(trainable=False))
def test_non_learned_baselines_have_no_parameters(name):
    assert not list(get_fusion(name)(DIMS).parameters())


@pytest.mark.parametrize("name", list_fusions(needs_coords=True))
def test_coords_change_the_embedding(name):
    torch.manual_seed(0)
    module = get_fusion(name)(DIMS, out_dim=8)
    # adaLN modulations start at zero (plain LayerNorm); perturb so coordinates matter.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.eval()
    feats, coords = _inputs()
    with torch.no_grad():
        a = _forward(name, module, feats, coords)
        b = _forward(name, module, feats, coords.flip(0))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", list_fusions(needs_coords=True))
def test_coords_shape_is_checked(name):
    module = get_fusion(name)(DIMS, out_dim=8)
    feats, _ = _inputs()
    bad = torch.zeros(N, 3)
    with pytest.raises(ValueError, match="coords|offsets"):
        if fusion_info(name).needs_neighborhood:
            hood = _neighborhood(feats, torch.zeros(N, 2))
            hood["offsets"] = torch.zeros(N, K, 3)
            module(feats, torch.zeros(N, 2), hood)
        else:
            module(feats, bad)


@pytest.mark.parametrize("name", list_fusions(trainable=True))
def test_single_modality(name):
    module = get_fusion(name)({"gene": 10}, out_dim=4).eval()
    feats, coords = _inputs(dims={"gene": 10})
    assert _forward(name, module, feats, coords).shape == (N, 4)


def test_unknown_fusion_lists_registered():
    with pytest.raises(KeyError) as err:
        fusion_info("no_such_fusion")
    for name in list_fusions():
        assert name in str(err.value)


def test_declared_flag_must_match_signature():
    with pytest.raises(TypeError, match="needs_coords"):

        @register_fusion("_bad_declared_flag")
        class Bad(torch.nn.Module):
            needs_coords = True

            def forward(self, features):
                return features["gene"]

    assert "_bad_declared_flag" not in list_fusions()


def test_register_rejects_non_modules():
    with pytest.raises(TypeError):
        register_fusion("_not_a_module")(object)


@pytest.mark.parametrize("name", list_fusions(needs_neighborhood=True))
def test_graph_fusions_use_their_neighbours(name):
    torch.manual_seed(0)
    module = get_fusion(name)(DIMS, out_dim=8).eval()
    feats, coords = _inputs()
    hood = _neighborhood(feats, coords)
    with torch.no_grad():
        a = module(feats, coords, hood)
        shuffled = {m: (v.flip(0) if m != "offsets" else v) for m, v in hood.items()}
        b = module(feats, coords, shuffled)
    assert not torch.allclose(a, b)


def test_graph_fusions_are_coords_fusions():
    assert set(list_fusions(needs_neighborhood=True)) <= set(list_fusions(needs_coords=True))


@pytest.mark.parametrize("name", [n for n in list_fusions(trainable=True) if hasattr(get_fusion(n), "extra_loss")])
def test_extra_losses_are_finite_and_differentiable(name):
    torch.manual_seed(0)
    module = get_fusion(name)(DIMS, out_dim=8).train()
    feats, coords = _inputs()
    batch = _batch(module, feats, coords)
    assert all(len(v) == N for v in batch.get("aux", {}).values())
    z = _forward(name, module, feats, coords)
    loss = module.extra_loss(z, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_staig_false_negative_removal_and_guided_drop():
    from mihd.fusion.staig import _info_nce

    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 4), dim=-1)
    b = torch.nn.functional.normalize(a + 0.01 * torch.randn(16, 4), dim=-1)
    distinct = torch.arange(16)
    same = torch.zeros(16, dtype=torch.long)
    # With every spot in one pseudo-cluster there are no negatives left: loss ~ 0.
    assert _info_nce(a, b, same, 0.5) < 1e-5 < _info_nce(a, b, distinct, 0.5)
    module = get_fusion("staig")(DIMS, out_dim=8)
    feats, coords = _inputs()
    hood = _neighborhood(feats, coords)
    hood["image"][:, 0] = feats["image"]  # first neighbour: identical histology
    hood["image"][:, 1] = -feats["image"]  # second: opposite
    p = module._edge_drop_probability(feats, hood)
    assert torch.allclose(p[:, 0], torch.full((N,), module.drop_min), atol=1e-5)
    assert torch.allclose(p[:, 1], torch.full((N,), module.drop_max), atol=1e-5)
