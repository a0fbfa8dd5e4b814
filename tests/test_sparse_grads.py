"""``sae.sparse_grads``: the TopK step's weight gradients formed from the k selected latents per row
(``sae.topk_encode``'s encoder backward, ``sae.sparse_decode(..., sparse_grad=True)``) equal the dense
ones: per function, through the whole loss (fractional k, ReLU zeros among the selected, masked rows,
AuxK on and off), in a sweep and on a latent-sharded mesh (where the encoder's stays dense)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softsae_jax import archs, parallel, sae, sharding, train
from softsae_jax import config as config_lib
from softsae_jax.config import ConfigError, SaeConfig
from softsae_jax.optim import make_optimizer

D, F, K, B = 16, 128, 8, 32


def rel_err(a, b):
  return float(jnp.linalg.norm(a - b) / max(float(jnp.linalg.norm(b)), 1e-30))


def assert_trees_close(got, ref, rtol=1e-5):
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    assert g.shape == r.shape
    assert rel_err(g, r) <= rtol, (g.shape, rel_err(g, r))


def params_with_relu_zeros(rng, cfg):
  """Random params whose b_enc is -2.5 on 90% of the latents, so many rows have fewer than K positive
  pre-activations: their selection holds ReLU zeros."""
  p = archs.init_params(jax.random.key(int(rng.integers(1 << 30))), cfg)
  b_enc = jnp.asarray(np.where(rng.random(F) < 0.9, -2.5, 0.0), jnp.float32)
  return p._replace(b_enc=b_enc, b_dec=jnp.asarray(0.1 * rng.normal(size=D), jnp.float32))


def test_config_values():
  assert SaeConfig().sparse_grads == "auto"
  with pytest.raises(ConfigError, match="sparse_grads"):
    SaeConfig(sparse_grads="yes")
  assert sae.sparse_grads_on(SaeConfig(sparse_grads="on"))
  assert not sae.sparse_grads_on(SaeConfig(sparse_grads="off"))
  assert sae.sparse_grads_on(SaeConfig()) == (jax.default_backend() == "cpu")


def test_scatter_rows_is_codes_transpose_times_rows(rng):
  vals = jnp.asarray(rng.normal(size=(B, K)), jnp.float32)
  idx = jnp.asarray(np.stack([rng.choice(F, K, replace=False) for _ in range(B)]), jnp.int32)
  rows = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  ref = sae.scatter_codes(vals, idx, F).T @ rows
  np.testing.assert_allclose(sae.scatter_rows(vals, idx, rows, F), ref, rtol=1e-5, atol=1e-6)


def test_sparse_decode_gradients_agree(rng):
  w = jnp.asarray(rng.normal(size=(F, D)), jnp.float32)
  vals = jnp.asarray(rng.normal(size=(B, K)), jnp.float32)
  idx = jnp.asarray(np.stack([rng.choice(F, K, replace=False) for _ in range(B)]), jnp.int32)
  g = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  grads = {s: jax.grad(lambda w, v: jnp.sum(sae.sparse_decode(w, idx, v, sparse_grad=s) * g), (0, 1))(w, vals)
           for s in (False, True)}
  assert_trees_close(grads[True], grads[False])
  # ...and autodiff of the plain dense decode.
  ref = jax.grad(lambda w, v: jnp.sum(sae.scatter_codes(v, idx, F) @ w * g), (0, 1))(w, vals)
  assert_trees_close(grads[True], ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_topk_encode_equals_pre_acts_then_topk_sparse(rng, dtype):
  cfg = SaeConfig(arch="topk", d_in=D, n_latents=F, k=K, compute_dtype=dtype)
  p = params_with_relu_zeros(rng, cfg)
  x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  k_B = jnp.asarray(rng.uniform(1.0, K + 0.99, size=B), jnp.float32)  # floor(k_B) < K on most rows
  k_B = k_B.at[0].set(0.5)  # a row that keeps nothing
  v_pre = jnp.asarray(rng.normal(size=(B, F)), jnp.float32)
  v_vals = jnp.asarray(rng.normal(size=(B, K)), jnp.float32)

  def dense(p, x):
    pre = sae.pre_acts(p, x, cfg)
    vals, idx = sae.topk_sparse(pre, k_B, K)
    return pre, vals, idx

  def sparse(p, x):
    return sae.topk_encode(p, x, k_B, K, cfg)

  out_d, out_s = dense(p, x), sparse(p, x)
  np.testing.assert_array_equal(out_s[2], out_d[2])
  np.testing.assert_array_equal(out_s[1], out_d[1])
  np.testing.assert_array_equal(out_s[0], out_d[0])
  pre = np.asarray(out_d[0])
  assert (np.asarray(out_d[1])[np.arange(K)[None, :] < np.floor(np.asarray(k_B))[:, None]] == 0).any(), \
      "expected ReLU zeros among the kept entries"
  tol = 1e-5 if dtype == "float32" else 2e-2
  for use_pre in (False, True):  # the pre_BF cotangent (AuxK's) zero, then nonzero: the dense cond branch
    def loss(fn, p, x):
      pre, vals, _ = fn(p, x)
      return jnp.sum(vals * v_vals) + (jnp.sum(pre * v_pre) if use_pre else 0.0)

    gd = jax.grad(lambda p, x: loss(dense, p, x), (0, 1))(p, x)
    gs = jax.jit(jax.grad(lambda p, x: loss(sparse, p, x), (0, 1)))(p, x)
    assert_trees_close(gs, gd, rtol=tol)
  assert pre.min() == 0.0


def _loss_cfg(sparse, **train_kw):
  cfg = config_lib.Config(
      sae=SaeConfig(arch="topk", d_in=D, n_latents=F, k=K, dead_tokens=1, sparse_grads=sparse),
      train=config_lib.TrainConfig(steps=10, batch_size=B, **train_kw))
  return cfg.resolve(D)


@pytest.mark.parametrize("dead", [False, True])
def test_loss_gradients_sparse_equal_dense(rng, dead):
  """train._loss_fn's gradients, AuxK off (nothing dead) and on, with masked rows."""
  cfg_on, cfg_off = _loss_cfg("on"), _loss_cfg("off")
  p = params_with_relu_zeros(rng, cfg_on.sae)
  x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  valid = jnp.asarray(rng.random(B) < 0.8, jnp.float32)
  x = jnp.where(valid[:, None] > 0, x, 0.0)
  dead_F = jnp.asarray(rng.random(F) < 0.5) if dead else jnp.zeros((F,), bool)
  sched = train.schedules(cfg_on, jnp.asarray(5, jnp.int32))
  grads = {}
  for name, cfg in (("on", cfg_on), ("off", cfg_off)):
    fn = jax.jit(jax.grad(lambda p: train._loss_fn(p, x, valid, dead_F, sched, cfg)[0]))
    grads[name] = fn(p)
  aux = train._loss_fn(p, x, valid, dead_F, sched, cfg_on)[1][1]
  assert (float(aux) > 0) == dead
  assert_trees_close(grads["on"], grads["off"])


def test_train_steps_sparse_equal_dense(rng):
  """A few real steps (AuxK turning on: dead_tokens=1) give the same parameters either way."""
  xs = rng.normal(size=(4, B, D)).astype(np.float32)
  states = {}
  for name in ("on", "off"):
    cfg = _loss_cfg(name)
    tx = make_optimizer(cfg)
    state = train.init_train_state(jax.random.key(0), cfg, tx, b_dec_D=xs[0].mean(0), norm_factor=1.0)
    step = jax.jit(lambda s, x, v, c=cfg, t=tx: train.train_step(s, x, v, cfg=c, tx=t))
    for x in xs:
      state, m = step(state, x, jnp.ones((B,), bool))
    states[name] = state.params
  chex.assert_trees_all_close(states["on"], states["off"], rtol=1e-4, atol=1e-6)


def test_sweep_sparse_equals_dense(rng):
  """In a sweep (vmap over members) the decoder's gradient is sparse, the encoder's dense."""
  sweep = config_lib.SweepConfig(k=(4, 8))
  xs = rng.normal(size=(3, B, D)).astype(np.float32)
  out = {}
  for name in ("on", "off"):
    cfg = dataclasses.replace(_loss_cfg(name), sweep=sweep)
    tx = make_optimizer(cfg)
    state = train.init_sweep_state(cfg, tx, b_dec_D=xs[0].mean(0), norm_factor=1.0)
    step = jax.jit(lambda s, x, v, c=cfg, t=tx: train.sweep_train_step(s, x, v, cfg=c, tx=t))
    for x in xs:
      state, _ = step(state, x, jnp.ones((B,), bool))
    out[name] = state.params
  chex.assert_trees_all_close(out["on"], out["off"], rtol=1e-4, atol=1e-6)


def test_sharded_step_sparse_equals_one_device():
  """On a (1, 2) mesh the sparse decode runs per shard; the encoder's gradient stays dense there."""
  cfg = config_lib.apply_overrides(_loss_cfg("on"), ["train.lr=3e-3"])
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(3, B, D)).astype(np.float32)
  tx = make_optimizer(cfg)
  out = []
  for shape, sparse in (((1, 1), "off"), ((1, 2), "on")):
    c = config_lib.apply_overrides(cfg, [f"sae.sparse_grads={sparse}"])
    mesh = sharding.make_mesh(*shape, devices=jax.devices()[:shape[0] * shape[1]])
    state = train.init_sharded(jax.random.key(0), c, tx, mesh, b_dec_D=xs[0].mean(0), norm_factor=1.0)
    step = train.make_train_step(c, tx, mesh)
    rows_sh, mask_sh = sharding.batch_shardings(mesh)
    for x in xs:
      state, _ = step(state, jax.device_put(x, rows_sh), jax.device_put(jnp.ones((B,), bool), mask_sh))
    out.append(jax.tree.map(np.asarray, state.params))
  chex.assert_trees_all_close(out[1], out[0], rtol=1e-4, atol=1e-6)


def test_sparse_encoder_only_on_one_device(monkeypatch, rng):
  """The fallback: ``topk_encode`` is used with mesh None only (a sweep or a sharded mesh stays dense)."""
  calls = []
  real = sae.topk_encode
  monkeypatch.setattr(sae, "topk_encode", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  cfg = _loss_cfg("on")
  p = archs.init_params(jax.random.key(0), cfg.sae)
  x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  sched = train.schedules(cfg, jnp.asarray(5, jnp.int32))
  ones = jnp.ones((B,), jnp.float32)
  archs.get("topk").train_terms(p, x, ones, sched, cfg, None)
  assert calls == [1]
  jax.vmap(lambda p: archs.get("topk").train_terms(p, x, ones, sched, cfg, parallel.MEMBERS).main)(
      jax.tree.map(lambda a: jnp.stack([a, a]), p))
  assert calls == [1]
  off = _loss_cfg("off")
  archs.get("topk").train_terms(p, x, ones, sched, off, None)
  assert calls == [1]
