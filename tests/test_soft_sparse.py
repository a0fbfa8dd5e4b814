"""``sae.sparse_soft``: SoftSAE's soft phase decoded from the soft top-k's M = k_max + 16 candidates per row
(``topk.soft_topk_candidates``, ``sae.encode_top``'s sparse encoder backward, ``sae.sparse_decode``) equals
the dense soft phase: the soft top-k on its own, then the loss, every gradient leaf and the step's metrics,
in both ``sae.soft_grad`` modes, with fractional k-hat, masked rows, ReLU zeros among the candidates and
AuxK on and off; and at large alpha (a tail that is not negligible) the fallback is taken and equals the
dense phase."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softsae_jax import archs, parallel, sae, topk, train
from softsae_jax import config as config_lib
from softsae_jax.config import ConfigError, SaeConfig
from softsae_jax.optim import make_optimizer

D, F, K, B = 16, 128, 8, 32  # k_max = 16, M = 32 candidates
SMALL_STEP, LARGE_STEP = 60, 0  # alpha = 1e-4 after the anneals; alpha_start = 1 at step 0


def rel_err(a, b):
  return float(jnp.linalg.norm(a - b) / max(float(jnp.linalg.norm(b)), 1e-30))


def assert_trees_close(got, ref, rtol=1e-5):
  for path, g, r in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(got), jax.tree.leaves(ref)):
    assert g.shape == r.shape
    assert rel_err(g, r) <= rtol, (jax.tree_util.keystr(path[0]), rel_err(g, r))


def test_config_values():
  assert SaeConfig().sparse_soft is True
  with pytest.raises(ConfigError, match="sparse_soft"):
    SaeConfig(sparse_soft="yes")
  cfg = config_lib.apply_overrides(config_lib.Config(), ["sae.sparse_soft=false"])
  assert cfg.sae.sparse_soft is False


# ------------------------------------------------------------------------------ the soft top-k alone


_FAST_COMPILE = {"xla_backend_optimization_level": 0}  # as tests/test_topk.py: these run for less than they compile


@functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
def _soft_pair(x, k, alpha, v):
  """soft_topk and soft_topk_candidates (max_k=16) of the same rows, and both gradients w.r.t. (x, k) of
  sum(w * v) (the candidates' with v at their columns)."""
  dense = lambda x, k: topk.soft_topk(x, k, alpha, max_k=16)  # noqa: E731
  cands = lambda x, k: topk.soft_topk_candidates(x, k, alpha, max_k=16, full_weights=True)  # noqa: E731
  c = cands(x, k)
  v_M = jnp.take_along_axis(v, c.idx, axis=-1)
  g_dense = jax.grad(lambda x, k: jnp.sum(dense(x, k) * v), (0, 1))(x, k)
  g_cand = jax.grad(lambda x, k: jnp.sum(cands(x, k).w * v_M), (0, 1))(x, k)

  def with_top(x, vals, k):  # the scores' gradient goes to the given values, x itself gets none
    idx = jax.lax.top_k(x, 32)[1]
    return jnp.sum(topk.soft_topk_candidates(x, k, alpha, max_k=16, top=(vals, idx)).w * v_M)

  g_top = jax.grad(with_top, (0, 1, 2))(x, jax.lax.top_k(x, 32)[0], k)
  return dense(x, k), c, g_dense, g_cand, g_top


@pytest.mark.parametrize("alpha", [1e-4, 1e-3])
def test_candidates_equal_soft_topk(rng, alpha):
  """Weights at the candidates, the full weights, and the gradients w.r.t. the scores and k equal
  soft_topk's (the tail's gradient is below float32 resolution), with and without ``top``."""
  x = jnp.asarray(rng.normal(size=(4, 8, F)), jnp.float32)  # two leading dims
  k = jnp.asarray(rng.uniform(1.0, 16.0, size=(4, 8)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(4, 8, F)), jnp.float32)
  w, c, g_dense, g_cand, (g_x, g_vals, g_k) = _soft_pair(x, k, jnp.float32(alpha), v)
  assert c.w.shape == c.idx.shape == (4, 8, 32)
  assert bool(c.negligible)
  np.testing.assert_array_equal(c.idx, jax.lax.top_k(x, 32)[1])
  np.testing.assert_allclose(c.w, jnp.take_along_axis(w, c.idx, axis=-1), atol=1e-6)
  np.testing.assert_allclose(c.full, w, atol=1e-6)
  np.testing.assert_allclose(c.w.sum(-1), k, rtol=1e-5)  # the candidates carry the whole budget
  assert_trees_close(g_cand, g_dense)
  assert float(jnp.abs(g_dense[0]).max()) > 1.0  # entries next to the threshold carry gradient
  assert not np.any(g_x)
  np.testing.assert_allclose(g_vals, jnp.take_along_axis(g_dense[0], c.idx, axis=-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_k, g_dense[1], rtol=1e-5, atol=1e-6)


def test_candidates_not_negligible():
  """Large alpha (the weight spread over every entry), k >= F, NaN or alpha <= 0: not negligible."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, F)), jnp.float32)
  k = jnp.asarray([2.5, 7.0, 12.25], jnp.float32)
  negligible = jax.jit(lambda x, k, a: topk.soft_topk_candidates(x, k, a, max_k=16).negligible,
                       compiler_options=_FAST_COMPILE)
  assert bool(negligible(x, k, 1e-3))
  assert not bool(negligible(x, k, 0.5))
  assert not bool(negligible(x, k.at[1].set(F), 1e-3))
  assert not bool(negligible(x, k.at[1].set(jnp.nan), 1e-3))
  assert not bool(negligible(x.at[2, 5].set(jnp.nan), k, 1e-3))
  assert not bool(negligible(x, k, 0.0))
  # k_max + 16 >= F: no candidates.
  with pytest.raises(ValueError, match="max_k"):
    topk.soft_topk_candidates(x, k, 1e-3, max_k=F - 16)


@functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
def _zero_tail_pair(x, k, v):
  """Weights and gradients (w.r.t. x, k) of soft_topk and of soft_topk_candidates when the cotangent is
  0 outside the candidates (what the candidates' VJP assumes of the tail it does not return)."""
  c = topk.soft_topk_candidates(x, k, 1e-3, max_k=16)
  in_M = jnp.zeros(x.shape, bool).at[jnp.arange(x.shape[0])[:, None], c.idx].set(True)
  v_F = jnp.where(in_M, v, 0.0)
  v_M = jnp.take_along_axis(v, c.idx, axis=-1)
  g_dense = jax.grad(lambda x, k: jnp.sum(topk.soft_topk(x, k, 1e-3, max_k=16) * v_F), (0, 1))(x, k)
  g_cand = jax.grad(lambda x, k: jnp.sum(topk.soft_topk_candidates(x, k, 1e-3, max_k=16).w * v_M), (0, 1))(x, k)
  w = topk.soft_topk(x, k, 1e-3, max_k=16)
  at_M = lambda g: jnp.take_along_axis(g, c.idx, axis=-1)  # noqa: E731
  return c, w, at_M(g_dense[0]), g_dense[1], at_M(g_cand[0]), g_cand[1]


def test_candidates_exact_with_a_heavy_zero_tail():
  """ReLU-like rows with fewer positive entries than k: the zeros (the tail among them) share the rest of
  the budget, so the tail is not negligible, yet the candidates' weights and their gradients (the tail
  held fixed, its density in S) are exact."""
  rng = np.random.default_rng(1)
  x = np.maximum(rng.normal(size=(4, F)), 0.0).astype(np.float32)
  x[0, 5:] = 0.0  # 5 positive entries, k = 8
  x[1, :] = 0.0  # none
  k = jnp.asarray([8.0, 3.5, 6.25, 12.5], jnp.float32)
  v = jnp.asarray(rng.normal(size=(4, F)), jnp.float32)
  c, w, gx_dense, gk_dense, gx_cand, gk_cand = _zero_tail_pair(jnp.asarray(x), k, v)
  assert bool(c.exact)
  np.testing.assert_array_equal(c.tail_negligible, [False, False, True, True])
  assert not bool(c.negligible)
  np.testing.assert_allclose(c.w, jnp.take_along_axis(w, c.idx, axis=-1), atol=1e-6)
  assert float(jnp.abs(gk_dense[:2]).max()) > 0.05  # S differs from v at the pivot: the tail's share counts
  np.testing.assert_allclose(gk_cand, gk_dense, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gx_cand, gx_dense, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ the SoftSAE loss


def _cfg(sparse_soft: bool, soft_grad: str = "stop", **sae_kw) -> config_lib.Config:
  cfg = config_lib.Config(
      sae=SaeConfig(arch="softsae", d_in=D, n_latents=F, k=K, dead_tokens=1, sparse_grads="on",
                    sparse_soft=sparse_soft, soft_grad=soft_grad, **sae_kw),
      train=config_lib.TrainConfig(steps=100, batch_size=B, k_anneal_frac=0.2, alpha_anneal_frac=0.2,
                                   hard_frac=0.1))
  return cfg.resolve(D)


def _params(rng, cfg):
  """Random params whose b_enc is -2 on 90% of the latents (with _batch's row scales, rows with more
  than M positive pre-activations, and rows with fewer: ReLU zeros among the candidates and in the tail,
  some with fewer positive entries than k-hat), a k-estimator whose k-hat spreads over [1, k_max]."""
  p = archs.init_params(jax.random.key(int(rng.integers(1 << 30))), cfg.sae)
  b_enc = jnp.asarray(np.where(rng.random(F) < 0.9, -2.0, 0.0), jnp.float32)
  est = p.extra._replace(w_k2=jnp.asarray(0.2 * rng.normal(size=p.extra.w_k2.shape), jnp.float32))
  return p._replace(b_enc=b_enc, b_dec=jnp.asarray(0.1 * rng.normal(size=D), jnp.float32), extra=est)


def _batch(rng):
  x = jnp.asarray(rng.normal(size=(B, D)) * rng.choice([0.1, 1.0, 4.0], size=(B, 1)), jnp.float32)
  valid = jnp.asarray(rng.random(B) < 0.8, jnp.float32).at[0].set(0.0)
  return jnp.where(valid[:, None] > 0, x, 0.0), valid


def _rows(p, x, cfg, sched):
  """(whether the step takes the candidates, rows whose tail is negligible, rows whose tail is all zeros)."""
  @jax.jit
  def fn(p, x, alpha):
    pre = sae.pre_acts(p, x, cfg.sae)
    k_B = archs.estimate_k(p, x, cfg.sae)
    c = topk.soft_topk_candidates(pre, k_B, alpha, max_k=cfg.sae.kmax)
    zero_tail = jnp.min(jax.lax.top_k(pre, cfg.sae.kmax + 16)[0], axis=1) <= 0
    return c.exact & jnp.all(c.tail_negligible | zero_tail), c.tail_negligible, zero_tail

  taken, negligible, zero_tail = fn(p, x, sched.alpha)
  return bool(taken), np.asarray(negligible), np.asarray(zero_tail)


_LOSS = {}


def _loss_and_grads(cfg):
  """jit(value_and_grad(train._loss_fn)), one per config (shared across the parametrised tests)."""
  if cfg not in _LOSS:
    def fn(p, x, valid, dead_F, sched):
      return jax.value_and_grad(train._loss_fn, has_aux=True)(p, x, valid, dead_F, sched, cfg)
    _LOSS[cfg] = jax.jit(fn, compiler_options=_FAST_COMPILE)
  return _LOSS[cfg]


@pytest.mark.parametrize("soft_grad,k_input", [("stop", "top_acts"), ("faithful", "top_acts"), ("stop", "x")])
@pytest.mark.parametrize("dead", [False, True])
def test_loss_gradients_sparse_equal_dense(rng, soft_grad, k_input, dead):
  """At alpha = 1e-4 after the anneals: the loss, its terms, AuxK and every gradient leaf (encoder,
  decoder, biases, k-estimator) agree to 1e-5, with fractional k-hat and masked rows; for both
  k-estimators (the default reads the candidates' sorted values, the authors' reads x)."""
  cfg_on, cfg_off = _cfg(True, soft_grad, k_input=k_input), _cfg(False, soft_grad, k_input=k_input)
  p = _params(rng, cfg_on)
  x, valid = _batch(rng)
  dead_F = jnp.asarray(rng.random(F) < 0.5) if dead else jnp.zeros((F,), bool)
  sched = train.schedules(cfg_on, SMALL_STEP)._replace(arch_state=jnp.zeros((), jnp.float32))
  assert float(sched.alpha) == pytest.approx(1e-4) and not bool(sched.hard) and not bool(sched.annealing)
  taken, negligible, zero_tail = _rows(p, x, cfg_on, sched)
  assert taken, "the case this test is about: the candidates' path is taken"
  assert np.any(~zero_tail) and np.any(~negligible & zero_tail & (np.asarray(valid) > 0)), \
      "rows of both kinds: a negligible tail, a heavy tail of zeros"
  k_hat = np.asarray(archs.estimate_k(p, x, cfg_on.sae))
  assert np.any(k_hat != np.round(k_hat)) and k_hat.max() - k_hat.min() > 2.0
  assert np.any(np.sum(np.asarray(sae.pre_acts(p, x, cfg_on.sae)) > 0, axis=1) < cfg_on.sae.kmax + 16)
  out = {name: _loss_and_grads(cfg)(p, x, valid, dead_F, sched) for name, cfg in (("on", cfg_on), ("off", cfg_off))}
  (loss_on, (terms_on, aux_on)), g_on = out["on"]
  (loss_off, (terms_off, aux_off)), g_off = out["off"]
  assert (float(aux_off) > 0) == dead
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
  np.testing.assert_allclose(aux_on, aux_off, rtol=1e-5)
  assert_trees_close(terms_on._replace(acts_BF=terms_on.acts_BF * valid[:, None]),
                     terms_off._replace(acts_BF=terms_off.acts_BF * valid[:, None]), rtol=1e-6)
  # Which latents are active (the dead-latent counter, L0) is identical, tail weights below 1e-10 included.
  np.testing.assert_array_equal(terms_on.acts_BF != 0, terms_off.acts_BF != 0)
  assert_trees_close(g_on, g_off)
  assert float(jnp.linalg.norm(g_on.w_enc)) > 0 and float(jnp.linalg.norm(g_on.extra.w_k1)) > 0


def test_fallback_at_large_alpha_equals_dense(rng):
  """Step 0 (alpha = 1, the k budget at D): the tail is not negligible, the dense phase is taken, and
  it equals the dense configuration's."""
  cfg_on, cfg_off = _cfg(True, "faithful"), _cfg(False, "faithful")
  p = _params(rng, cfg_on)
  x, valid = _batch(rng)
  dead_F = jnp.asarray(rng.random(F) < 0.5)
  sched = train.schedules(cfg_on, LARGE_STEP)._replace(arch_state=jnp.zeros((), jnp.float32))
  assert float(sched.alpha) == 1.0
  assert not _rows(p, x, cfg_on, sched)[0]
  (loss_on, (terms_on, aux_on)), g_on = _loss_and_grads(cfg_on)(p, x, valid, dead_F, sched)
  (loss_off, (terms_off, aux_off)), g_off = _loss_and_grads(cfg_off)(p, x, valid, dead_F, sched)
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
  assert_trees_close(terms_on, terms_off, rtol=1e-6)
  np.testing.assert_allclose(aux_on, aux_off, rtol=1e-6)
  assert_trees_close(g_on, g_off)
  # The candidates alone would be wrong here: a share of the budget sits in the tail.
  pre = sae.pre_acts(p, x, cfg_on.sae)
  c = topk.soft_topk_candidates(pre, terms_on.k_B, sched.alpha, max_k=cfg_on.sae.kmax)
  assert float(jnp.max(jnp.abs(c.w.sum(1) - terms_on.k_B))) > 0.1


def test_train_steps_sparse_equal_dense(rng):
  """Real steps through the alpha and k anneals (the fallback, then the candidates), AuxK turning on
  (dead_tokens=1), masked rows: the same parameters, optimizer state and metrics either way."""
  n = 6
  xs = rng.normal(size=(n, B, D)).astype(np.float32)
  valid = np.asarray(rng.random(B) < 0.8).astype(bool)
  out = {}
  for name, sparse in (("on", True), ("off", False)):
    cfg = dataclasses.replace(_cfg(sparse), train=dataclasses.replace(
        _cfg(sparse).train, steps=20, k_anneal_frac=0.1, alpha_anneal_frac=0.1, lr=1e-3))
    tx = make_optimizer(cfg)
    state = train.init_train_state(jax.random.key(0), cfg, tx, b_dec_D=xs[0].mean(0), norm_factor=1.0)
    step = jax.jit(lambda s, x, v, c=cfg, t=tx: train.train_step(s, x, v, cfg=c, tx=t),
                   compiler_options=_FAST_COMPILE)
    metrics = []
    for x in xs:
      state, m = step(state, x, jnp.asarray(valid))
      metrics.append(m)
    out[name] = (state.params, state.since_fired_F, jax.tree.map(lambda *a: jnp.stack(a), *metrics))
  assert float(out["on"][2].alpha[-1]) == pytest.approx(1e-4) and float(out["on"][2].alpha[0]) == 1.0
  chex.assert_trees_all_close(out["on"][0], out["off"][0], rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(out["on"][1], out["off"][1])
  chex.assert_trees_all_close(out["on"][2], out["off"][2], rtol=1e-4, atol=1e-6)


def test_candidates_only_on_one_device(monkeypatch, rng):
  """``soft_topk_candidates`` is used with mesh None, sparse_grads on, sparse_soft on and alpha_k off only."""
  calls = []
  real = topk.soft_topk_candidates
  monkeypatch.setattr(topk, "soft_topk_candidates", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  cfg = _cfg(True)
  p = archs.init_params(jax.random.key(0), cfg.sae)
  x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  sched = train.schedules(cfg, SMALL_STEP)
  ones = jnp.ones((B,), jnp.float32)
  terms = archs.get("softsae").train_terms
  jax.eval_shape(lambda p: terms(p, x, ones, sched, cfg, None), p)  # traced, not run
  assert calls == [1]
  jax.eval_shape(jax.vmap(lambda p: terms(p, x, ones, sched, cfg, parallel.MEMBERS).main),
                 jax.tree.map(lambda a: jnp.stack([a, a]), p))
  for off in (_cfg(False), config_lib.apply_overrides(cfg, ["sae.sparse_grads=off"]),
              config_lib.apply_overrides(cfg, ["sae.alpha_k=0.01"])):  # alpha_k: the dense phase's second soft top-k
    jax.eval_shape(lambda p, c=off: terms(p, x, ones, sched, c, None), p)
  assert calls == [1]
