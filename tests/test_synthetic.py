"""Tests of softsae_jax.synthetic: determinism, ground truth, geometry, shard round trip, checks."""

import doctest
import json
import os
import tempfile

import chex
import numpy as np
import pytest

from softsae_jax import synthetic as syn
from softsae_jax.shards import DataError, open_dataset
from softsae_jax.stats import spearman

MIX = dict(d=16, n_atoms=40, k_values=(1, 2, 4, 8))
MAN = dict(d=20, dims=(1, 2, 3, 5), n_manifolds_per_dim=2)


def _arrays(data):
  return {k: v for k, v in data._asdict().items() if isinstance(v, np.ndarray)}


def _assert_same(a, b):
  chex.assert_trees_all_equal(_arrays(a), _arrays(b))  # same field names, every array equal
  assert a.meta == b.meta


# ----------------------------------------------------------------------------------------- mixture


def test_mixture_deterministic_and_seed_dependent():
  a = syn.make_mixture(300, **MIX, seed=3)
  _assert_same(a, syn.make_mixture(300, **MIX, seed=3))
  b = syn.make_mixture(300, **MIX, seed=4)
  assert not np.array_equal(a.atoms_AD, b.atoms_AD)
  assert not np.array_equal(a.x_ND, b.x_ND)


def test_mixture_pair_shares_dictionary_not_samples():
  train, test = syn.make_mixture_pair(200, 100, **MIX, seed=0)
  np.testing.assert_array_equal(train.atoms_AD, test.atoms_AD)
  np.testing.assert_array_equal(train.atom_weight_A, test.atom_weight_A)
  assert not np.array_equal(train.x_ND[:100], test.x_ND)
  assert (train.meta["split"], test.meta["split"]) == ("train", "test")
  _assert_same(train, syn.make_mixture(200, **MIX, seed=0))
  # The held-out set does not depend on the train size; the dictionary not on sampling options.
  _, test2 = syn.make_mixture_pair(7, 100, **MIX, seed=0)
  _assert_same(test, test2)
  other = syn.make_mixture(10, **MIX, seed=0, noise=0.3, coef="lognormal", k_probs=(0.7, 0.1, 0.1, 0.1))
  np.testing.assert_array_equal(other.atoms_AD, train.atoms_AD)


def test_mixture_regenerates_from_meta():
  data = syn.make_mixture(50, **MIX, seed=9, split="test", freq_exponent=0.5, normalize_rows=True)
  meta = json.loads(json.dumps(data.meta))  # what the manifest stores
  again = syn.make_mixture(meta["n_rows"], **meta["params"], seed=meta["seed"], split=meta["split"])
  _assert_same(data, again)


def test_mixture_shapes_dtypes_and_support():
  data = syn.make_mixture(500, **MIX, seed=1)
  n, d, a, k_max = 500, MIX["d"], MIX["n_atoms"], max(MIX["k_values"])
  chex.assert_shape([data.x_ND, data.true_k_N, data.support_NK, data.coef_NK, data.atoms_AD],
                    [(n, d), (n,), (n, k_max), (n, k_max), (a, d)])
  chex.assert_type([data.x_ND, data.true_k_N, data.group_N, data.support_NK, data.coef_NK, data.atoms_AD],
                   [np.float32, np.int32, np.int32, np.int32, np.float32, np.float32])
  np.testing.assert_array_equal(np.asarray(MIX["k_values"])[data.group_N], data.true_k_N)
  valid_NK = data.support_NK >= 0
  np.testing.assert_array_equal(valid_NK.sum(1), data.true_k_N)
  # Valid entries first, ascending and distinct; padding -1 with zero coefficients.
  np.testing.assert_array_equal(valid_NK, np.arange(k_max) < data.true_k_N[:, None])
  for sup_K, k in zip(data.support_NK, data.true_k_N):
    assert np.all(np.diff(sup_K[:k]) > 0) and sup_K[k - 1] < a
  assert np.all(data.coef_NK[~valid_NK] == 0)
  assert np.all(data.coef_NK[valid_NK] >= 0.5)  # halfnormal: |N(0,1)| + 0.5


def test_atoms_unit_norm():
  data = syn.make_mixture(5, d=7, n_atoms=300, k_values=(3,), seed=2)
  np.testing.assert_allclose(np.linalg.norm(data.atoms_AD, axis=1), 1.0, atol=1e-6)


def test_true_k_distribution_matches_k_probs():
  probs = (0.1, 0.2, 0.3, 0.4)
  data = syn.make_mixture(20_000, **MIX, k_probs=probs, seed=5)
  freq = np.array([np.mean(data.true_k_N == k) for k in MIX["k_values"]])
  np.testing.assert_allclose(freq, probs, atol=0.015)
  uniform = syn.make_mixture(20_000, **MIX, seed=5)
  np.testing.assert_allclose(np.bincount(uniform.group_N) / 20_000, 0.25, atol=0.015)


@pytest.mark.parametrize("noise", [0.0, 0.01, 0.2])
def test_x_is_reconstruction_plus_noise(noise):
  d = MIX["d"]
  data = syn.make_mixture(4000, **MIX, seed=0, noise=noise)
  gathered_NKD = data.atoms_AD[np.maximum(data.support_NK, 0)] * (data.support_NK >= 0)[..., None]
  recon_ND = np.einsum("nk,nkd->nd", data.coef_NK.astype(np.float64), gathered_NKD)
  np.testing.assert_allclose(syn.clean_signal(data), recon_ND, atol=1e-5)
  err_N = np.linalg.norm(data.x_ND - recon_ND, axis=1)
  if noise == 0:
    assert err_N.max() < 1e-5
  else:
    # noise * |N(0, I_d)| / sqrt(d): mean ~ noise, spread ~ noise / sqrt(2d).
    assert abs(err_N.mean() / noise - 1) < 0.05
    assert err_N.max() < 2.5 * noise
    # Isotropic, zero-mean noise.
    assert np.abs((data.x_ND - recon_ND).mean(0)).max() < 5 * noise / np.sqrt(d * 4000)


def test_normalize_rows_hides_k_in_norm():
  natural = syn.make_mixture(4000, **MIX, seed=0)
  norm_N = np.linalg.norm(natural.x_ND, axis=1)
  means = [norm_N[natural.true_k_N == k].mean() for k in MIX["k_values"]]
  assert np.all(np.diff(means) > 0.3)  # grows ~ sqrt(k)
  assert spearman(norm_N, natural.true_k_N) > 0.7  # the confound: the norm alone predicts k
  normed = syn.make_mixture(4000, **MIX, seed=0, normalize_rows=True, noise=0.01)
  np.testing.assert_allclose(np.linalg.norm(syn.clean_signal(normed), axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(normed.x_ND, axis=1), 1.0, atol=0.03)
  # The control of bench synthetic: the norm no longer says anything about k (|rho| ~ 1/sqrt(N) = 0.016).
  assert abs(spearman(np.linalg.norm(normed.x_ND, axis=1), normed.true_k_N)) < 0.05
  # Same supports as the unnormalised set, codes rescaled with the row: only the scale changed.
  np.testing.assert_array_equal(normed.support_NK, natural.support_NK)
  scale_N = np.linalg.norm(syn.clean_signal(natural), axis=1)
  np.testing.assert_allclose(normed.coef_NK * scale_N[:, None], natural.coef_NK, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(normed.x_ND - syn.clean_signal(normed), natural.x_ND - syn.clean_signal(natural),
                             atol=1e-5)  # the same noise


def test_normalize_rows_manifolds():
  natural = syn.make_manifolds(3000, **MAN, seed=1, noise=0.0)
  normed = syn.make_manifolds(3000, **MAN, seed=1, noise=0.0, normalize_rows=True)
  assert normed.meta["params"]["normalize_rows"] and not natural.meta["params"]["normalize_rows"]
  # Same patches, labels and local coordinates; the points are the radial projections.
  for name in ("true_dim_N", "group_N", "coords_NM", "center_GD", "tangent_GMD"):
    np.testing.assert_array_equal(getattr(normed, name), getattr(natural, name))
  np.testing.assert_allclose(normed.x_ND, natural.x_ND / np.linalg.norm(natural.x_ND, axis=1, keepdims=True),
                             atol=1e-6)
  noisy = syn.make_manifolds(3000, **MAN, seed=1, noise=0.01, normalize_rows=True)
  np.testing.assert_allclose(np.linalg.norm(syn.clean_signal(noisy), axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(noisy.x_ND, axis=1), 1.0, atol=0.03)
  assert abs(spearman(np.linalg.norm(noisy.x_ND, axis=1), noisy.true_dim_N)) < 0.06
  err_N = np.linalg.norm(noisy.x_ND - syn.clean_signal(noisy), axis=1)
  assert abs(err_N.mean() / 0.01 - 1) < 0.05  # x - clean_signal is the noise
  meta = json.loads(json.dumps(noisy.meta))
  _assert_same(noisy, syn.make_manifolds(meta["n_rows"], **meta["params"], seed=meta["seed"], split=meta["split"]))


def test_coef_kinds():
  const = syn.make_mixture(200, **MIX, seed=0, coef="constant")
  valid = const.support_NK >= 0
  assert np.all(const.coef_NK[valid] == 1)
  logn = syn.make_mixture(4000, **MIX, seed=0, coef="lognormal")
  c = logn.coef_NK[logn.support_NK >= 0]
  assert c.min() > 0 and abs(np.median(c) - 1) < 0.05


def test_power_law_frequency_option():
  kw = dict(d=8, n_atoms=50, k_values=(2, 4))
  uni = syn.make_mixture(8000, **kw, seed=0)
  np.testing.assert_allclose(uni.atom_weight_A, 1 / 50)
  use_uni = np.bincount(uni.support_NK[uni.support_NK >= 0], minlength=50)
  assert use_uni.max() / use_uni.min() < 1.6
  pl = syn.make_mixture(8000, **kw, seed=0, freq_exponent=1.0)
  np.testing.assert_allclose(pl.atom_weight_A.sum(), 1.0)
  assert pl.atom_weight_A.max() / pl.atom_weight_A.min() == pytest.approx(50, rel=1e-6)
  use_pl = np.bincount(pl.support_NK[pl.support_NK >= 0], minlength=50)
  order = np.argsort(-pl.atom_weight_A)
  assert use_pl[order[:5]].mean() > 5 * use_pl[order[-5:]].mean()
  assert np.corrcoef(np.log(pl.atom_weight_A), np.log(use_pl + 1))[0, 1] > 0.95


def test_k_equal_to_n_atoms_uses_every_atom():
  data = syn.make_mixture(20, d=4, n_atoms=5, k_values=(5,), seed=0, freq_exponent=2.0)
  np.testing.assert_array_equal(data.support_NK, np.tile(np.arange(5), (20, 1)))


# --------------------------------------------------------------------------------------- manifolds


def test_manifolds_deterministic_and_seed_dependent():
  a = syn.make_manifolds(300, **MAN, seed=3)
  _assert_same(a, syn.make_manifolds(300, **MAN, seed=3))
  b = syn.make_manifolds(300, **MAN, seed=4)
  assert not np.array_equal(a.center_GD, b.center_GD)
  assert not np.array_equal(a.x_ND, b.x_ND)
  train, test = syn.make_manifolds_pair(300, 100, **MAN, seed=3)
  _assert_same(train, a)
  for name in ("dim_G", "center_GD", "tangent_GMD", "normal_GPD", "quad_GPMM"):
    np.testing.assert_array_equal(getattr(train, name), getattr(test, name))
  assert not np.array_equal(train.x_ND[:100], test.x_ND)
  meta = json.loads(json.dumps(test.meta))
  _assert_same(test, syn.make_manifolds(meta["n_rows"], **meta["params"], seed=meta["seed"], split=meta["split"]))


def test_manifolds_shapes_and_labels():
  data = syn.make_manifolds(4000, **MAN, seed=0, dim_probs=(0.4, 0.3, 0.2, 0.1))
  n_g, m_max, d = 8, 5, MAN["d"]
  chex.assert_type([data.x_ND, data.true_dim_N, data.group_N], [np.float32, np.int32, np.int32])
  chex.assert_shape([data.x_ND, data.coords_NM, data.center_GD, data.tangent_GMD, data.normal_GPD, data.quad_GPMM],
                    [(4000, d), (4000, m_max), (n_g, d), (n_g, m_max, d), (n_g, m_max, d),
                     (n_g, m_max, m_max, m_max)])
  np.testing.assert_array_equal(data.dim_G, [1, 1, 2, 2, 3, 3, 5, 5])
  np.testing.assert_array_equal(data.dim_G[data.group_N], data.true_dim_N)
  np.testing.assert_array_equal(data.true_k_N, data.true_dim_N)
  freq = np.array([np.mean(data.true_dim_N == m) for m in MAN["dims"]])
  np.testing.assert_allclose(freq, (0.4, 0.3, 0.2, 0.1), atol=0.03)
  assert set(np.unique(data.group_N)) == set(range(n_g))
  # Coordinates: zero beyond the row's dimension, inside the ball of radius 1.
  assert np.all(data.coords_NM[np.arange(m_max) >= data.true_dim_N[:, None]] == 0)
  assert np.linalg.norm(data.coords_NM, axis=1).max() <= 1.0 + 1e-6
  np.testing.assert_allclose(np.linalg.norm(data.center_GD, axis=1), 2.0, rtol=1e-6)


def test_flat_manifolds_have_m_significant_singular_values():
  data = syn.make_manifolds(6000, d=24, dims=(1, 2, 4, 8), n_manifolds_per_dim=2, seed=1, curvature=0.0,
                            noise=1e-5)
  for g, m in enumerate(data.dim_G):
    x_RD = data.x_ND[data.group_N == g].astype(np.float64)
    s = np.linalg.svd(x_RD - x_RD.mean(0), compute_uv=False)
    assert s[m - 1] / s[0] > 0.1, (g, m, s[:m + 1])
    assert s[m] / s[0] < 1e-3, (g, m, s[:m + 1])


def test_curved_manifolds_geometry():
  curvature, radius, d = 0.3, 1.5, 20
  data = syn.make_manifolds(3000, d=d, dims=(1, 3, 6), n_manifolds_per_dim=2, seed=2, curvature=curvature,
                            radius=radius, noise=0.0)
  np.testing.assert_allclose(syn.clean_signal(data), data.x_ND, atol=1e-5)
  assert np.linalg.norm(data.coords_NM, axis=1).max() <= radius + 1e-6
  for g, m in enumerate(data.dim_G):
    p = min(m, d - m)
    basis_XD = np.concatenate([data.tangent_GMD[g, :m], data.normal_GPD[g, :p]])
    np.testing.assert_allclose(basis_XD @ basis_XD.T, np.eye(m + p), atol=1e-5)
    rows = data.group_N == g
    t_RM = data.coords_NM[rows, :m]
    off_RD = data.x_ND[rows] - data.center_GD[g] - t_RM @ data.tangent_GMD[g, :m]
    # The displacement off the tangent plane lies in the normal span and obeys the documented bound.
    np.testing.assert_allclose(off_RD @ data.normal_GPD[g, :p].T @ data.normal_GPD[g, :p], off_RD, atol=1e-5)
    off_R = np.linalg.norm(off_RD, axis=1)
    assert np.all(off_R <= curvature * np.sum(t_RM**2, axis=1) + 1e-5)
    assert off_R.max() > 0.05 * curvature * radius**2  # actually curved
  # Noise on top: residual norm ~ noise.
  noisy = syn.make_manifolds(3000, d=d, dims=(1, 3, 6), n_manifolds_per_dim=2, seed=2, curvature=curvature,
                             radius=radius, noise=0.05)
  np.testing.assert_array_equal(noisy.coords_NM, data.coords_NM)
  err_N = np.linalg.norm(noisy.x_ND - syn.clean_signal(noisy), axis=1)
  assert abs(err_N.mean() / 0.05 - 1) < 0.05


def test_full_dimensional_manifold_is_flat():
  data = syn.make_manifolds(50, d=3, dims=(3,), n_manifolds_per_dim=1, seed=0, curvature=1.0, noise=0.0)
  assert np.all(data.quad_GPMM == 0) and np.all(data.normal_GPD == 0)
  np.testing.assert_allclose(data.x_ND, data.center_GD[0] + data.coords_NM @ data.tangent_GMD[0], atol=1e-5)


# ------------------------------------------------------------------------------------------- writing


def test_write_dataset_round_trip_mixture(tmp_path):
  data = syn.make_mixture(1000, **MIX, seed=0, freq_exponent=0.5)
  out = str(tmp_path / "mix")
  manifest = syn.write_dataset(out, data, rows_per_shard=300)
  ds = open_dataset(out)
  assert ds.n_rows == 1000 and ds.d_model == MIX["d"] and ds.dtype == "float32"
  assert [s.rows for s in ds.shards] == [300, 300, 300, 100]
  np.testing.assert_array_equal(np.concatenate([ds.mmap(i) for i in range(len(ds.shards))]), data.x_ND)
  with open(os.path.join(out, "manifest.json")) as f:
    on_disk = json.load(f)
  assert on_disk == manifest
  assert on_disk["synthetic"] == json.loads(json.dumps(data.meta))
  assert on_disk["synthetic"]["generator"] == "mixture" and on_disk["synthetic"]["seed"] == 0
  assert on_disk["synthetic"]["params"]["freq_exponent"] == 0.5
  assert on_disk["atoms"] == "atoms.npy"
  np.testing.assert_array_equal(np.load(os.path.join(out, on_disk["atoms"])), data.atoms_AD)
  for i in range(len(ds.shards)):
    tk = ds.side("true_k", i)
    assert tk.dtype == np.int32 and ds.side("group", i).dtype == np.int32
    np.testing.assert_array_equal(tk, data.true_k_N[300 * i:300 * (i + 1)])
  for name, want in [("true_k", data.true_k_N), ("group", data.group_N), ("support", data.support_NK),
                     ("coef", data.coef_NK)]:
    got = syn.load_side(out, name)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want, err_msg=name)


def test_write_dataset_round_trip_manifolds_float16(tmp_path):
  data = syn.make_manifolds(700, **MAN, seed=1)
  out = str(tmp_path / "man")
  syn.write_dataset(out, data, rows_per_shard=256, dtype="float16")
  ds = open_dataset(out)
  assert ds.dtype == "float16" and [s.rows for s in ds.shards] == [256, 256, 188]
  x = np.concatenate([ds.mmap(i) for i in range(3)])
  np.testing.assert_array_equal(x, data.x_ND.astype(np.float16))
  np.testing.assert_array_equal(syn.load_side(out, "true_k"), data.true_dim_N)
  np.testing.assert_array_equal(syn.load_side(out, "group"), data.group_N)
  np.testing.assert_array_equal(syn.load_side(out, "coords"), data.coords_NM)
  assert ds.manifest["synthetic"]["generator"] == "manifolds"
  assert ds.manifest["synthetic"]["params"]["dims"] == list(MAN["dims"])
  with np.load(os.path.join(out, ds.manifest["manifolds"])) as z:
    for name in ("dim_G", "center_GD", "tangent_GMD", "normal_GPD", "quad_GPMM"):
      np.testing.assert_array_equal(z[name], getattr(data, name))


def test_load_side_order_follows_shards(tmp_path):
  # Rows in a known order: group = row index class; shards must come back in manifest order.
  data = syn.make_mixture(97, d=4, n_atoms=20, k_values=tuple(range(1, 11)), seed=0)
  data = data._replace(group_N=np.arange(97, dtype=np.int32))
  out = str(tmp_path / "d")
  syn.write_dataset(out, data, rows_per_shard=10)
  np.testing.assert_array_equal(syn.load_side(out, "group"), np.arange(97))
  with pytest.raises(DataError, match="no side file 'nope'"):
    syn.load_side(out, "nope")


def test_write_dataset_refuses_non_empty_dir(tmp_path):
  data = syn.make_mixture(10, d=4, n_atoms=5, k_values=(1,), seed=0)
  syn.write_dataset(str(tmp_path / "a"), data)
  with pytest.raises(ValueError, match="out_dir"):
    syn.write_dataset(str(tmp_path / "a"), data)
  with pytest.raises(ValueError, match="dtype"):
    syn.write_dataset(str(tmp_path / "b"), data, dtype="bfloat16")
  with pytest.raises(ValueError, match="rows_per_shard"):
    syn.write_dataset(str(tmp_path / "c"), data, rows_per_shard=0)
  with pytest.raises(ValueError, match="Mixture or Manifolds"):
    syn.write_dataset(str(tmp_path / "e"), data.x_ND)


# ----------------------------------------------------------------------------------- checks, presets


@pytest.mark.parametrize("kwargs, match", [
    (dict(k_values=(2, 50)), r"k_values.*n_atoms=40.*50"),
    (dict(k_values=(0, 2)), "k_values"),
    (dict(k_values=(2, 2)), "distinct values in k_values"),
    (dict(k_values=()), "k_values"),
    (dict(k_values=(1.5,)), "k_values"),
    (dict(k_probs=(0.5, 0.5)), "k_probs"),
    (dict(k_probs=(0.5, 0.5, 0.5, -0.5)), "k_probs"),
    (dict(k_probs=(0.1, 0.1, 0.1, 0.1)), "k_probs"),
    (dict(n_rows=0), "n_rows"),
    (dict(d=0), "Expected d "),
    (dict(n_atoms=2.0), "n_atoms"),
    (dict(seed=-1), "seed"),
    (dict(seed=None), "seed"),
    (dict(noise=-0.1), "noise"),
    (dict(noise=float("nan")), "noise"),
    (dict(coef="gaussian"), "coef"),
    (dict(freq_exponent=-1.0), "freq_exponent"),
    (dict(normalize_rows="yes"), "normalize_rows"),
    (dict(split="val"), "split"),
])
def test_mixture_validation(kwargs, match):
  args = dict(n_rows=10, d=8, n_atoms=40, k_values=(1, 2, 4, 8), seed=0) | kwargs
  with pytest.raises(ValueError, match=match):
    syn.make_mixture(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dims=(1, 30)), r"dims.*d=20.*30"),
    (dict(dims=(0,)), "dims"),
    (dict(n_manifolds_per_dim=0), "n_manifolds_per_dim"),
    (dict(dim_probs=(1.0,)), "dim_probs"),
    (dict(curvature=-1.0), "curvature"),
    (dict(radius=0.0), "radius"),
    (dict(center_norm=-2.0), "center_norm"),
    (dict(noise=-1.0), "noise"),
    (dict(normalize_rows=1), "normalize_rows"),
    (dict(split="dev"), "split"),
])
def test_manifolds_validation(kwargs, match):
  args = dict(n_rows=10, d=20, dims=(1, 2), seed=0) | kwargs
  with pytest.raises(ValueError, match=match):
    syn.make_manifolds(**args)


def test_pair_rejects_split():
  with pytest.raises(ValueError, match="split"):
    syn.make_mixture_pair(2, 2, d=4, n_atoms=4, k_values=(1,), seed=0, split="test")
  with pytest.raises(ValueError, match="split"):
    syn.make_manifolds_pair(2, 2, d=4, dims=(1,), seed=0, split="test")


def test_presets_are_valid():
  assert set(syn.PRESETS) == {"small", "full", "small-unitnorm", "full-unitnorm"}
  for name in ("small", "full"):  # the -unitnorm twins: the same sizes, every row of unit norm
    for kind, kw in syn.PRESETS[name].items():
      assert syn.PRESETS[f"{name}-unitnorm"][kind] == {**kw, "normalize_rows": True}
  small = syn.PRESETS["small"]
  assert small["mixture"] == dict(n_train=60_000, n_test=10_000, d=48, n_atoms=256, k_values=(2, 4, 8, 16))
  assert small["manifolds"]["d"] == 48 and small["manifolds"]["dims"] == (1, 2, 4, 8, 16)
  full = syn.PRESETS["full"]
  assert (full["mixture"]["d"], full["mixture"]["n_atoms"], full["mixture"]["n_train"],
          full["mixture"]["n_test"]) == (128, 1024, 400_000, 50_000)
  # Every preset's parameters pass validation (at a tiny size).
  for name, kinds in syn.PRESETS.items():
    for kind, kw in kinds.items():
      make = syn.make_mixture_pair if kind == "mixture" else syn.make_manifolds_pair
      train, test = make(**(kw | dict(n_train=3, n_test=2)), seed=0)
      assert train.x_ND.shape == (3, kw["d"]) and test.x_ND.shape == (2, kw["d"])
  with pytest.raises(ValueError, match="name"):
    syn.make_preset("huge", "mixture")
  with pytest.raises(ValueError, match="kind"):
    syn.make_preset("small", "spirals")


def test_small_preset_end_to_end():
  train, test = syn.make_preset("small", "mixture", seed=0)
  assert train.x_ND.shape == (60_000, 48) and test.x_ND.shape == (10_000, 48)
  np.testing.assert_array_equal(train.atoms_AD, test.atoms_AD)


def test_docstring_examples(tmp_path, monkeypatch):
  # Also collected by --doctest-modules (pyproject.toml); here the count is checked too. The examples'
  # tempfile.mkdtemp() directories go under tmp_path.
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  result = doctest.testmod(syn, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
