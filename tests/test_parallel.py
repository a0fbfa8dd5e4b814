"""Latent parallelism on simulated CPU devices: the shard-local selections equal the single-device ones,
the sharded step trains every architecture like one device does, F-sharded leaves hold 1/model of
their bytes per device, and the compiled step gathers no F-sized array."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from softsae_jax import config as config_lib
from softsae_jax import parallel, sharding, topk, train
from softsae_jax.optim import make_optimizer

MESHES = [(1, 4), (2, 2)]
B, F, MAX_K = 16, 256, 16


def mesh_of(data, model):
  return sharding.make_mesh(data, model, devices=jax.devices()[:data * model])


def put(mesh, x, spec):
  return jax.device_put(x, NamedSharding(mesh, spec))


def rows(kind, rng):
  if kind == "relu":
    return np.maximum(rng.normal(size=(B, F)), 0.0)
  if kind == "gauss":
    return rng.normal(size=(B, F))
  x = np.round(rng.normal(size=(B, F)), 1)  # "fallback": 40 ties at the top, k > max_k
  x[:, :40] = 3.0
  return x


def rel_err(a, b):
  return float(jnp.linalg.norm(a - b) / max(float(jnp.linalg.norm(a)), 1e-30))


@pytest.mark.parametrize("mesh_shape,kind,alpha", [
    pytest.param(m, kind, alpha, marks=() if (m, kind, alpha) == ((2, 2), "fallback", 1e-4) else pytest.mark.slow)
    for m in MESHES for kind in ("relu", "gauss", "fallback") for alpha in (1.0, 1e-2, 1e-4)])
def test_sharded_soft_topk_equals_soft_topk(mesh_shape, kind, alpha, test_seed):
  rng = np.random.default_rng(test_seed)
  mesh = mesh_of(*mesh_shape)
  x = jnp.asarray(rows(kind, rng), jnp.float32)
  k = jnp.asarray(np.full(B, 20.5) if kind == "fallback" else rng.uniform(2, MAX_K, size=B), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, F)), jnp.float32)
  a = jnp.float32(alpha)
  w_ref = topk.soft_topk(x, k, a)  # the exact full-sort path
  dx_ref, dk_ref = jax.grad(lambda x, k: jnp.sum(topk.soft_topk(x, k, a) * v), (0, 1))(x, k)
  op = lambda x, k: parallel.soft_topk(x, k, a, max_k=MAX_K, mesh=mesh)  # noqa: E731
  xs, ks = put(mesh, x, P("data", "model")), put(mesh, k, P("data"))
  w = jax.jit(op)(xs, ks)
  dx, dk = jax.jit(jax.grad(lambda x, k: jnp.sum(op(x, k) * v), (0, 1)))(xs, ks)
  assert float(jnp.abs(w - w_ref).max()) <= 1e-6
  assert rel_err(dx_ref, dx) <= 1e-5
  assert rel_err(dk_ref, dk) <= 1e-5
  np.testing.assert_allclose(w.sum(axis=1), k, rtol=1e-5)


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_sharded_hard_selections_equal_one_device(mesh_shape, test_seed):
  rng = np.random.default_rng(test_seed)
  mesh = mesh_of(*mesh_shape)
  pre = np.maximum(np.round(rng.normal(size=(B, F)), 1), 0.0)  # many exact ties: tie order matters
  pre = jnp.asarray(pre, jnp.float32)
  count = jnp.asarray(rng.integers(0, MAX_K + 1, size=B), jnp.float32)
  w_dec = jnp.asarray(rng.normal(size=(F, 8)), jnp.float32)
  dec, acts = parallel.topk_decode(pre, count, MAX_K, w_dec, None)
  s_pre, s_count = put(mesh, pre, P("data", "model")), put(mesh, count, P("data"))
  s_dec, s_acts = jax.jit(lambda p, c, w: parallel.topk_decode(p, c, MAX_K, w, mesh))(
      s_pre, s_count, put(mesh, w_dec, P("model", None)))
  np.testing.assert_array_equal(s_acts, acts)
  np.testing.assert_allclose(s_dec, dec, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(jax.jit(lambda p, c: parallel.topk_acts(p, c, MAX_K, mesh))(s_pre, s_count),
                                topk.hard_topk(pre, count, max_k=MAX_K))
  # Gradients through the sharded decode equal the single-device ones.
  g = jnp.asarray(rng.normal(size=(B, 8)), jnp.float32)
  loss = lambda m: lambda p, w: jnp.sum(parallel.topk_decode(p, count if m is None else s_count, MAX_K, w, m)[0] * g)  # noqa: E731
  ref = jax.grad(loss(None), (0, 1))(pre, w_dec)
  got = jax.jit(jax.grad(loss(mesh), (0, 1)))(s_pre, put(mesh, w_dec, P("model", None)))
  chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-5)
  # Batch top-k (no ties in continuous values).
  cont = jnp.asarray(np.maximum(rng.normal(size=(B, F)), 0.0), jnp.float32)
  np.testing.assert_array_equal(
      jax.jit(lambda p: parallel.batch_topk(p, 4, mesh))(put(mesh, cont, P("data", "model"))),
      parallel.batch_topk(cont, 4, None))


# ------------------------------------------------------------------------------------- the step

D, FS, BS = 16, 256, 64


def step_cfg(arch, steps=40):
  more = []
  if arch == "softsae-top_acts":  # SoftSAE whose k-estimator reads the top activations (sae.k_input)
    arch, more = "softsae", ["sae.k_input=top_acts", "sae.k_hidden=8"]
  sets = more + [f"sae.arch={arch}", "sae.k=4", f"sae.n_latents={FS}", f"train.batch_size={BS}", f"train.steps={steps}",
          "sae.dead_tokens=128", "train.hard_frac=0.25", "train.lr=3e-3"]
  return config_lib.apply_overrides(config_lib.Config(), sets).resolve(D)


def run_steps(cfg, mesh, n):
  tx = make_optimizer(cfg)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, BS, D)), jnp.float32)
  rows_sh, mask_sh = sharding.batch_shardings(mesh)
  state = train.init_sharded(jax.random.key(0), cfg, tx, mesh, b_dec_D=np.zeros(D, np.float32), norm_factor=1.0)
  step = train.make_train_step(cfg, tx, mesh)
  first = None
  for s in range(n):
    state, m = step(state, jax.device_put(x[s % 4], rows_sh), jax.device_put(jnp.ones((BS,), bool), mask_sh))
    if s == 0:
      first = [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]
  return first, float(m.fvu), state


@pytest.mark.slow
@pytest.mark.parametrize("arch", config_lib.ARCHS + ("softsae-top_acts",))
def test_sharded_step_trains_like_one_device(arch):
  """One step: max |Δparam| ≤ 1e-5; 40 steps (AuxK on, SoftSAE's hard phase included): FVU within 1%."""
  cfg = step_cfg(arch)
  ref_first, ref_fvu, _ = run_steps(cfg, mesh_of(1, 1), 40)
  for shape in [(4, 1), (1, 4), (2, 2)]:
    first, fvu, state = run_steps(cfg, mesh_of(*shape), 40)
    assert max(float(np.abs(a - b).max()) for a, b in zip(first, ref_first)) <= 1e-5, shape
    assert abs(fvu / ref_fvu - 1) <= 0.01, (shape, fvu, ref_fvu)
    if shape == (1, 4):  # every F-sharded leaf holds 1/4 of its bytes on each device
      for leaf in jax.tree.leaves(state):
        if leaf.ndim and FS in leaf.shape:
          shard = leaf.addressable_shards[0].data
          assert shard.nbytes * 4 == leaf.nbytes, (leaf.shape, shard.shape)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sharded_baseline_k_anneal_trains_like_one_device(arch):
  """train.k_anneal_baselines on a (2, 2) mesh: the annealed budget's selections run shard-local too."""
  cfg = config_lib.apply_overrides(step_cfg(arch, steps=12), ["train.k_anneal_baselines=true",
                                                              "train.k_anneal_frac=0.5"])
  ref_first, ref_fvu, _ = run_steps(cfg, mesh_of(1, 1), 8)
  first, fvu, _ = run_steps(cfg, mesh_of(2, 2), 8)
  assert max(float(np.abs(a - b).max()) for a, b in zip(first, ref_first)) <= 1e-5
  assert abs(fvu / ref_fvu - 1) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(1, 4), (4, 1)])
@pytest.mark.parametrize("arch", ["softsae", "softsae-top_acts", "topk", "batchtopk", "relu", "jumprelu"])
def test_compiled_step_gathers_no_latent_sized_array(arch, mesh_shape):
  """On the (1, 4) and (4, 1) meshes the step's all-gathers carry candidates ([B, S*M]) or batch top-k
  values, never an [.., F] array. (Matryoshka's nested-prefix decodes are left to GSPMD, which gathers
  group columns.)"""
  cfg = step_cfg(arch)
  mesh = mesh_of(*mesh_shape)
  tx = make_optimizer(cfg)
  abstract = jax.eval_shape(lambda: train.init_sharded(jax.random.key(0), cfg, tx, mesh,
                                                       b_dec_D=np.zeros(D, np.float32), norm_factor=1.0))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                          train.state_shardings(cfg, tx, mesh))
  rows_sh, mask_sh = sharding.batch_shardings(mesh)
  hlo = train.make_train_step(cfg, tx, mesh).lower(
      abstract, jax.ShapeDtypeStruct((BS, D), jnp.float32, sharding=rows_sh),
      jax.ShapeDtypeStruct((BS,), jnp.bool_, sharding=mask_sh)).compile().as_text()
  shapes = [re.search(r"= \w+\[([\d,]*)\]", line).group(1) for line in hlo.splitlines() if " all-gather(" in line]
  assert shapes, "expected the candidates' all-gather"
  for dims in shapes:
    assert str(FS) not in dims.split(","), (arch, shapes)


@pytest.mark.slow
def test_train_and_eval_on_a_model_parallel_mesh_through_the_cli(tmp_path, capsys):
  """`softsae train --set mesh.model=4` and `softsae eval --set mesh.model=4` on 4 of the simulated
  devices: the same metrics as evaluating the same checkpoint on one device's view."""
  import json

  from softsae_jax import cli, synthetic

  data = str(tmp_path / "data")
  synthetic.write_dataset(data, synthetic.make_mixture(2048, D, 64, k_values=(2, 4), seed=0))
  wd = str(tmp_path / "run")
  sets = ["--set", "sae.k=4", "--set", f"sae.n_latents={FS}", "--set", "train.batch_size=128", "--set",
          "train.steps=20", "--set", "mesh.data=1", "--set", "mesh.model=4"]
  assert cli.main(["train", "--data", data, "--workdir", wd, "--quiet", *sets]) == 0
  capsys.readouterr()
  outs = {}
  for name, extra in (("sharded", ["--set", "mesh.data=1", "--set", "mesh.model=4"]), ("plain", [])):
    assert cli.main(["eval", "--data", data, "--workdir", wd, "--out", str(tmp_path / f"{name}.json"), *extra]) == 0
    outs[name] = json.loads((tmp_path / f"{name}.json").read_text())
  for key in ("fvu", "l0_mean", "k_hat_mean", "dead_fraction"):
    assert outs["sharded"][key] == pytest.approx(outs["plain"][key], rel=1e-5), key
  capsys.readouterr()
  assert cli.main(["eval", "--data", data, "--workdir", wd, "--set", "sae.k=3"]) == 1
  assert "mesh.data / mesh.model only" in capsys.readouterr().err
