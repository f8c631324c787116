"""Issue 25 item 4: legacy-ST-like pseudo-spots (`mihd.data.pool_spots`, `data.pool`, `data=dlpfc_pooled`)
and the gene-recipe diagnostics measured on them (`mihd.metrics.depth_share`, the pca encoder's `clip`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from conftest import shared_data_dir
from scipy import sparse
from scipy.spatial import cKDTree

from mihd.data import pool_spots, synthetic_slice, write_visium_folder
from mihd.data._pool import pool_options
from mihd.metrics import depth_share

DLPFC = shared_data_dir() / "dlpfc"
needs_dlpfc = pytest.mark.skipif(
    not (DLPFC / "151673" / "filtered_feature_bc_matrix.h5").is_file(),
    reason=f"DLPFC counts not found under {shared_data_dir()} (set MIHD_DATA_DIR)",
)


@pytest.fixture(scope="module")
def hex_slice():
    return synthetic_slice(1500, n_genes=40, n_domains=3, layout="hex", seed=1)


def _hex_grid(rows: int, cols: int) -> AnnData:
    """A full rectangle of a Visium grid (array_col - array_row even), 1 count of gene i at spot i."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    array_col = 2 * c + r % 2
    n = r.size
    X = sparse.identity(n, format="csr", dtype=np.float32)
    a = AnnData(X=X, obs=pd.DataFrame({"array_row": r, "array_col": array_col}, index=[f"s{i}" for i in range(n)]))
    a.obsm["spatial"] = np.column_stack([array_col * 50.0, r * 100.0 * np.sqrt(3) / 2])
    return a


# --------------------------------------------------------------------------- pool_spots


def test_each_pseudo_spot_sums_its_centre_and_ring(hex_slice):
    pooled = pool_spots(hex_slice)
    assert 100 < pooled.n_obs < hex_slice.n_obs / 3
    assert set(pooled.obs_names) <= set(hex_slice.obs_names)
    assert pooled.obs["n_pooled"].between(4, 7).all() and (pooled.obs["n_pooled"] == 7).mean() > 0.8
    row, col = hex_slice.obs["array_row"].to_numpy(), hex_slice.obs["array_col"].to_numpy()
    where = {(a, b): i for i, (a, b) in enumerate(zip(row, col))}
    X = hex_slice.X.toarray()
    used = np.zeros(hex_slice.n_obs, int)
    for name in pooled.obs_names[::17]:
        i = hex_slice.obs_names.get_loc(name)
        ring = [(0, 0), (0, 2), (0, -2), (1, 1), (1, -1), (-1, 1), (-1, -1)]
        members = [where[(row[i] + dr, col[i] + dc)] for dr, dc in ring if (row[i] + dr, col[i] + dc) in where]
        used[members] += 1
        np.testing.assert_allclose(pooled[name].X.toarray().ravel(), X[members].sum(0))
        assert pooled.obs.loc[name, "n_pooled"] == len(members)
        np.testing.assert_array_equal(pooled[name].obsm["spatial"][0], hex_slice.obsm["spatial"][i])
    assert used.max() == 1
    # every spot in at most one pseudo-spot, counts conserved over the pooled spots
    assert pooled.obs["n_pooled"].sum() <= hex_slice.n_obs
    assert sparse.issparse(pooled.X) and pooled.X.dtype == hex_slice.X.dtype


def test_tiling_covers_a_grid_once_and_centres_are_sqrt7_pitches_apart():
    a = _hex_grid(30, 30)
    pooled = pool_spots(a, min_pooled=1)
    used = np.asarray(pooled.X.sum(0)).ravel()  # gene i = spot i: how many pseudo-spots pooled it
    assert used.max() == 1 and pooled.obs["n_pooled"].sum() == used.sum()
    # a spot with its 6 neighbours present has its footprint's centre present: it is pooled
    r, c = a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy()
    present = set(zip(r.tolist(), c.tolist()))
    ring = [(0, 2), (0, -2), (1, 1), (1, -1), (-1, 1), (-1, -1)]
    interior = np.array([all((x + dr, y + dc) in present for dr, dc in ring) for x, y in zip(r, c)])
    assert interior.sum() > 700 and (used[interior] == 1).all()
    full = pooled[pooled.obs["n_pooled"] == 7]
    d, _ = cKDTree(full.obsm["spatial"]).query(full.obsm["spatial"], 2)
    np.testing.assert_allclose(np.median(d[:, 1]), 100 * np.sqrt(7), rtol=1e-6)
    assert pooled.uns["pool"]["pitch_fullres"] == pytest.approx(100.0)


@pytest.mark.parametrize(("radius", "step", "size", "spacing"), [(1, 3, 7, 3), (1, 4, 7, 4), (2, None, 19, np.sqrt(19))])
def test_radius_and_step(radius, step, size, spacing):
    a = _hex_grid(40, 40)
    pooled = pool_spots(a, radius=radius, step=step)
    full = pooled[pooled.obs["n_pooled"] == size]
    assert full.n_obs > 10 and pooled.obs["n_pooled"].max() == size
    d, _ = cKDTree(full.obsm["spatial"]).query(full.obsm["spatial"], 2)
    np.testing.assert_allclose(np.median(d[:, 1]), 100 * spacing, rtol=1e-6)
    assert (pooled.X.sum(0) <= 1).all()  # no overlap


def test_image_and_spot_diameter_follow_the_footprint(hex_slice):
    pooled = pool_spots(hex_slice)
    lib = next(iter(hex_slice.uns["spatial"]))
    before, after = hex_slice.uns["spatial"][lib], pooled.uns["spatial"][lib]
    assert after["images"].keys() == before["images"].keys()
    np.testing.assert_array_equal(after["images"]["lowres"], before["images"]["lowres"])
    d, pitch = before["scalefactors"]["spot_diameter_fullres"], pooled.uns["pool"]["pitch_fullres"]
    assert pitch == pytest.approx(100.0)  # synthetic hex: 100 px pitch
    assert after["scalefactors"]["spot_diameter_fullres"] == pytest.approx(2 * pitch + d)
    assert before["scalefactors"]["spot_diameter_fullres"] == d  # the input is left as it was
    assert pooled.uns["pool"]["params"] == {"radius": 1, "step": None, "min_pooled": 4}


def test_annotation_is_the_majority_and_na_when_most_are_unannotated():
    a = _hex_grid(12, 12)
    pooled = pool_spots(a, min_pooled=7)
    centre = pooled.obs_names[len(pooled.obs_names) // 2]
    i = a.obs_names.get_loc(centre)
    r, c = a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy()
    ring = np.flatnonzero((np.abs(r - r[i]) + np.abs(c - c[i]) <= 2) & (np.abs(r - r[i]) <= 1))
    assert len(ring) == 7
    others = [j for j in ring if j != i]

    def label(values):
        labels = np.array(["L1"] * a.n_obs, dtype=object)
        labels[others] = values[1:]
        labels[i] = values[0]
        b = a.copy()
        b.obs["truth"] = pd.Categorical(labels)
        b.obs["depth"] = 1.0  # numeric columns other than the lattice's are dropped
        out = pool_spots(b, min_pooled=7)
        assert "depth" not in out.obs
        return out.obs.loc[centre, "truth"]

    assert label(["L2", "L2", "L2", "L3", "L3", "L3", "L3"]) == "L3"  # majority
    assert label(["L2", "L2", "L2", "L3", "L3", "L3", np.nan]) == "L2"  # tie: the centre's
    assert label(["L3", "L2", "L2", "NA", "NA", "NA", "L2"]) == "L2"  # 3 NA of 7: the majority of the rest
    assert pd.isna(label(["L2", "L2", "NA", "NA", np.nan, "NA", "L3"]))  # 4 NA of 7: NA
    b = a.copy()
    b.obs["truth"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2, "NA", "L1"))
    assert "NA" not in list(pool_spots(b).obs["truth"].cat.categories)  # an NA string is no label of the result


def test_dense_input_and_determinism(hex_slice):
    a = pool_spots(hex_slice)
    dense = hex_slice.copy()
    dense.X = hex_slice.X.toarray()
    b = pool_spots(dense)
    np.testing.assert_array_equal(a.X.toarray(), b.X)
    c = pool_spots(hex_slice)
    assert list(a.obs_names) == list(c.obs_names) and (a.X != c.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, c.obs)


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        ("drop_row", {}, KeyError, "array_row"),
        ("odd", {}, ValueError, "not a Visium hexagonal grid"),
        ("duplicate", {}, ValueError, "repeat"),
        ("fraction", {}, ValueError, "whole numbers"),
        (None, {"radius": 0}, ValueError, "radius=0"),
        (None, {"radius": 1.5}, ValueError, "radius=1.5"),
        (None, {"step": 2}, ValueError, "step=2; give a whole number >= 3"),
        (None, {"min_pooled": 8}, ValueError, "min_pooled=8; give a whole number from 1 to 7"),
        (None, {"radius": 30}, ValueError, "no pseudo-spot"),
    ],
)
def test_bad_inputs_are_named(change, kwargs, error, match):
    a = _hex_grid(6, 6)
    if change == "drop_row":
        del a.obs["array_row"]
    elif change == "odd":
        a.obs["array_col"] = a.obs["array_col"] + 1
    elif change == "duplicate":
        a.obs.iloc[1, a.obs.columns.get_loc("array_col")] = a.obs["array_col"].iloc[0]
        a.obs.iloc[1, a.obs.columns.get_loc("array_row")] = a.obs["array_row"].iloc[0]
    elif change == "fraction":
        a.obs["array_row"] = a.obs["array_row"] + 0.5
    with pytest.raises(error, match=match):
        pool_spots(a, **kwargs)


def test_pool_options():
    assert pool_options(None) is None and pool_options(False) is None
    assert pool_options(True) == {}
    assert pool_options({"radius": 2, "step": None}) == {"radius": 2, "step": None}
    with pytest.raises(ValueError, match=r"data.pool has unknown option\(s\) \['size'\]"):
        pool_options({"size": 2})
    with pytest.raises(ValueError, match=r"data.pool.step=1"):
        pool_options({"step": 1})
    with pytest.raises(ValueError, match="mapping"):
        pool_options("yes")


# --------------------------------------------------------------------------- config and runner


def test_data_pool_in_configs_and_load_slice(tmp_path, hex_slice):
    from mihd._config import compose
    from mihd.train import load_slice

    cfg = compose("train", ["data=dlpfc_pooled", "data.slice=151674"], stamp_run_dir=False)
    assert cfg.data.name == "dlpfc_pooled_151674" and cfg.data.n_domains == 7 and cfg.data.pool.radius == 1
    assert compose("train", ["data=dlpfc_pooled", "data.slice=151670"], stamp_run_dir=False).data.n_domains == 5
    assert compose("train", ["data=visium", "data.path=x", "data.pool.radius=2"], stamp_run_dir=False).data.pool == {"radius": 2}

    folder = write_visium_folder(hex_slice, tmp_path / "toy")
    data = {"path": str(folder), "annotation": None, "annotation_key": "ground_truth", "pool": {"radius": 1}}
    pooled = load_slice(data)
    np.testing.assert_array_equal(pooled.X.toarray(), pool_spots(hex_slice).X.toarray())
    assert load_slice({**data, "pool": None}).n_obs == hex_slice.n_obs
    with pytest.raises(ValueError, match="data.pool.radius=0"):
        load_slice({**data, "path": str(tmp_path / "missing"), "pool": {"radius": 0}})  # before reading


def test_train_on_a_pooled_slice(tmp_path, hex_slice):
    from mihd._config import compose
    from mihd.train import train

    folder = write_visium_folder(hex_slice, tmp_path / "toy")
    cfg = compose("train", ["data=visium", f"data.path={folder}", "data.annotation=truth.tsv", "data.n_domains=3", "data.pool.radius=1",
                            "fusion=genes_only", f"cache_dir={tmp_path / 'cache'}", "trainer.progress_bar=false"],
                  stamp_run_dir=False)
    res = train(cfg, write=False)
    assert res.adata.n_obs == pool_spots(hex_slice).n_obs
    assert res.metrics["scores"]["after_refinement"]["ari"] > 0.3


@needs_dlpfc
def test_pooled_dlpfc_is_legacy_st_like():
    from mihd.data import read_visium

    a = read_visium(DLPFC / "151673", annotation="truth.tsv")
    pooled = pool_spots(a)
    assert 176 <= pooled.n_obs <= 691  # legacy ST sections
    pitch_um = 100.0 * np.median(cKDTree(pooled.obsm["spatial"]).query(pooled.obsm["spatial"], 2)[0][:, 1]) / pooled.uns["pool"]["pitch_fullres"]
    assert 200 < pitch_um < 300
    assert pooled.obs["ground_truth"].notna().mean() > 0.95
    assert np.median(np.asarray(pooled.X.sum(1))) > 5 * np.median(np.asarray(a.X.sum(1)))


@needs_dlpfc
def test_evaluate_plans_pooled_slices(tmp_path):
    from mihd._config import compose
    from mihd.evaluate import PlanError, build_plan

    cfg = compose("evaluate", ["slices=[dlpfc_pooled:151673,dlpfc:151673]", "fusions=[genes_only]", "seeds=[0]",
                               f"out_dir={tmp_path}"])
    plan = build_plan(cfg)
    assert [r.slice for r in plan.runs] == ["dlpfc_pooled_151673", "dlpfc_151673"]
    assert plan.runs[0].config["data"]["pool"]["radius"] == 1 and "pool" not in plan.runs[1].config["data"]
    with pytest.raises(PlanError, match="data.pool.radius=0"):
        build_plan(compose("evaluate", ["slices=[dlpfc_pooled:151673]", "fusions=[genes_only]", f"out_dir={tmp_path}"]),
                   ["data.pool.radius=0"])


# --------------------------------------------------------------------------- depth_share


def test_depth_share_is_the_r2_of_log_depth_on_the_features():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    totals = rng.lognormal(8, 0.5, 400)
    y = np.log(totals)
    pcs = rng.normal(size=(400, 5))
    pcs[:, 2] += 0.8 * (y - y.mean()) / y.std()
    expected = LinearRegression().fit(pcs, y).score(pcs, y)
    assert depth_share(pcs, totals) == pytest.approx(expected, abs=1e-10)
    assert depth_share(np.column_stack([y * 3 + 1, pcs]), totals) == pytest.approx(1.0)
    assert depth_share(rng.normal(size=(4000, 3)), rng.lognormal(8, 0.5, 4000)) < 0.01
    assert np.isnan(depth_share(pcs, np.full(400, 7.0)))


def test_depth_share_of_the_pcs_variance():
    rng = np.random.default_rng(1)
    totals = rng.lognormal(8, 0.5, 5000)
    y = np.log(totals)
    z = (y - y.mean()) / y.std()
    pcs = np.column_stack([10 * rng.normal(size=5000), z])  # depth in the small component
    assert depth_share(pcs, totals) == pytest.approx(1.0)
    assert depth_share(pcs, totals, of="pcs") == pytest.approx(1 / 101, abs=0.005)
    pcs = np.column_stack([10 * z, rng.normal(size=5000)])  # depth in the large one
    assert depth_share(pcs, totals, of="pcs") == pytest.approx(100 / 101, abs=0.005)


@pytest.mark.parametrize(
    ("pcs", "totals", "kwargs", "match"),
    [
        (np.ones((10, 2)), np.ones(9), {}, "one entry per spot"),
        (np.ones((10, 2)), np.r_[np.ones(9), 0.0], {}, "positive"),
        (np.full((10, 2), np.nan), np.ones(10), {}, "non-finite"),
        (np.ones((4, 3)), np.arange(1.0, 5.0), {}, "more spots than components"),
        (np.ones((10, 2)), np.ones(10), {"of": "x"}, "of='x'"),
    ],
)
def test_depth_share_bad_inputs(pcs, totals, kwargs, match):
    with pytest.raises(ValueError, match=match):
        depth_share(pcs, totals, **kwargs)


# --------------------------------------------------------------------------- pca clip


def _reference_clip(X: np.ndarray, clip: float) -> np.ndarray:
    m = X.mean(0)
    return np.clip(X - m, -clip, clip) + m


@pytest.mark.parametrize("clip", [10.0, 1.5, 0.3])
def test_clip_centred_is_exact_and_sparse(clip):
    from mihd.encoders.pca import clip_centred, scale_genes

    rng = np.random.default_rng(2)
    counts = rng.poisson(0.4, size=(600, 30)).astype(np.float32)
    counts[:, 0] = rng.poisson(40, 600)
    counts[:3, 0] = 0  # a dense gene with a few zeros: mean / sd > clip, its zeros must be clipped too
    counts[:, 1] = 0
    counts[5, 1] = 30  # a one-spot gene: its single value is clipped
    X = scale_genes(sparse.csr_matrix(np.log1p(counts)), "unit")
    dense = X.toarray()
    ref = _reference_clip(dense, clip)
    out = clip_centred(X, clip)
    assert sparse.issparse(out)
    np.testing.assert_allclose(out.toarray(), ref, atol=1e-4)
    np.testing.assert_allclose(clip_centred(dense, clip), ref, atol=1e-4)  # float32 data
    assert out.nnz <= X.nnz + X.shape[1] * X.shape[0] / (1 + clip**2)  # the documented O(nnz) bound (unit scaling)


def test_pca_clip_option(hex_slice):
    from mihd.encoders import get_gene_encoder

    pca = get_gene_encoder("pca")
    assert "clip" not in pca().params  # caches made before the option keep their keys
    enc = pca(genes="hvg", scale="unit", clip=10)
    assert enc.params["clip"] == 10.0
    pcs = enc.encode(hex_slice)
    assert pcs.shape == (hex_slice.n_obs, 30) and np.isfinite(pcs).all()
    assert not np.allclose(np.abs(pca(genes="hvg", scale="unit", clip=0.5).encode(hex_slice)), np.abs(pcs))
    for bad in (0, -1, True, "10"):
        with pytest.raises(ValueError, match="encoder.gene_options.clip"):
            pca(clip=bad)
