"""The architecture seam (softsae_jax/archs.py) and JumpReLU, the architecture added through it.

chex variants run the pure functions with and without jit; JumpReLU's straight-through gradients are
checked against the formulas of Rajamanoharan et al. (arXiv 2407.14435, eqs. 11-12) computed here in
NumPy; the seam itself is checked by registering a seventh, toy architecture and training it.
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softsae_jax import archs, checkpoint, losses
from softsae_jax import config as config_lib
from softsae_jax.optim import make_optimizer
from softsae_jax.sae import decode, pre_acts
from softsae_jax.topk import hard_topk
from softsae_jax.train import init_train_state, schedules, train_step
from softsae_jax.types import JumpThreshold, KEstimator, Params

D, F, B = 8, 32, 16


def make_cfg(arch, **sets):
  cfg = config_lib.Config(sae=config_lib.SaeConfig(arch=arch, k=3, n_latents=F),
                          train=config_lib.TrainConfig(steps=50, batch_size=B))
  return config_lib.apply_overrides(cfg, [f"{k}={v}" for k, v in sets.items()]).resolve(D)


def rows(seed=0, n=B):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, D)), jnp.float32)


def test_table_covers_every_configurable_arch():
  assert set(archs.ARCHS) == set(config_lib.ARCHS)
  extra_types = {"softsae": KEstimator, "jumprelu": JumpThreshold}
  for name in config_lib.ARCHS:
    cfg = make_cfg(name).sae
    p = archs.init_params(jax.random.key(0), cfg)
    assert isinstance(p, Params)
    if name in extra_types:
      assert isinstance(p.extra, extra_types[name])
    else:
      assert p.extra is None  # no size-1 placeholders in the checkpoint


class ArchVariantsTest(chex.TestCase):
  """encode / decode / the loss terms / train_step, with and without jit, for every arch."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_inference_encode_and_decode(self):
    for name in config_lib.ARCHS:
      cfg = make_cfg(name).sae
      p = archs.init_params(jax.random.key(1), cfg)
      state = archs.init_arch_state(cfg)
      if state is not None:
        state = jnp.float32(0.05)
      enc = self.variant(functools.partial(archs.encode, cfg=cfg))
      codes = enc(p, rows(), arch_state=state)
      chex.assert_shape([codes.pre_BF, codes.acts_BF], (B, F))
      chex.assert_shape(codes.k_B, (B,))
      chex.assert_tree_all_finite(codes)
      recon = self.variant(functools.partial(decode, cfg=cfg))(p, codes.acts_BF)
      chex.assert_shape(recon, (B, D))
      # Inference keeps a subset of the ReLU activations, unchanged.
      acts, pre = np.asarray(codes.acts_BF), np.asarray(codes.pre_BF)
      np.testing.assert_array_equal(acts[acts != 0], pre[acts != 0])

  @chex.variants(with_jit=True, without_jit=True)
  def test_train_terms_and_losses(self):
    for name in config_lib.ARCHS:
      cfg = make_cfg(name)
      p = archs.init_params(jax.random.key(2), cfg.sae)
      terms = self.variant(lambda p, x: archs.get(name).train_terms(
          p, x, jnp.ones((B,), jnp.float32), schedules(cfg, 10), cfg, None))(p, rows(1))
      chex.assert_shape([terms.recon_BD], (B, D))
      chex.assert_shape([terms.acts_BF, terms.pre_BF], (B, F))
      chex.assert_shape([terms.main, terms.sparsity], ())
      chex.assert_tree_all_finite(terms)
      fvu = self.variant(losses.fvu)(rows(1), terms.recon_BD, jnp.ones((B,), jnp.float32))
      assert float(fvu) > 0



@pytest.mark.slow
class TrainStepVariantsTest(chex.TestCase):
  """train_step with and without jit for every arch (a compile per arch and variant: the slow tier)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_train_step(self):
    for name in config_lib.ARCHS:
      cfg = make_cfg(name)
      tx = make_optimizer(cfg)
      state = init_train_state(jax.random.key(3), cfg, tx)
      step = self.variant(functools.partial(train_step, cfg=cfg, tx=tx))
      new, metrics = step(state, rows(2), jnp.ones((B,), bool))
      chex.assert_trees_all_equal_structs(new, state)
      chex.assert_tree_all_finite(metrics)
      assert int(new.step) == 1


# ------------------------------------------------------------------------------------------ JumpReLU


def _np_rect(u):
  return (np.abs(u) < 0.5).astype(np.float64)


def test_jumprelu_forward_and_straight_through_gradients():
  eps = 0.1
  z = np.array([[0.0, 0.30, 0.52, 0.9], [0.25, 0.46, 0.50, 0.05]], np.float32)
  theta = np.array([0.1, 0.3, 0.5, 0.2], np.float32)
  g = np.array([[1.0, -2.0, 0.5, 3.0], [0.7, 1.5, -1.0, 2.0]], np.float32)
  out = archs.jumprelu(jnp.asarray(z), jnp.asarray(theta), eps)
  np.testing.assert_array_equal(out, z * (z > theta))
  dz, dtheta = jax.grad(lambda z_, t_: jnp.sum(archs.jumprelu(z_, t_, eps) * g), (0, 1))(jnp.asarray(z),
                                                                                        jnp.asarray(theta))
  np.testing.assert_allclose(dz, g * (z > theta))
  expect = -np.sum(g * (theta / eps) * _np_rect((z - theta) / eps), axis=0)
  np.testing.assert_allclose(dtheta, expect, rtol=1e-6)
  assert np.any(expect != 0)  # the kernel catches some entries: the check can fail
  # The L0 step function: no gradient to z, -(1/eps) K((z - theta)/eps) to theta.
  dz0, dtheta0 = jax.grad(lambda z_, t_: jnp.sum(archs.step_fn(z_, t_, eps) * g), (0, 1))(jnp.asarray(z),
                                                                                        jnp.asarray(theta))
  assert float(jnp.abs(dz0).max()) == 0.0
  np.testing.assert_allclose(dtheta0, -np.sum(g * _np_rect((z - theta) / eps) / eps, axis=0), rtol=1e-6)


def test_jumprelu_inference_is_per_latent_threshold():
  cfg = make_cfg("jumprelu").sae
  p = archs.init_params(jax.random.key(0), cfg)
  theta = jnp.linspace(0.0, 0.6, F)
  p = p._replace(extra=JumpThreshold(threshold=theta), b_enc=jnp.full((F,), 0.1))
  codes = archs.encode(p, rows(4), cfg)
  pre = np.asarray(codes.pre_BF)
  np.testing.assert_array_equal(codes.acts_BF, np.where(pre > np.asarray(theta)[None], pre, 0.0))
  np.testing.assert_array_equal(codes.k_B, (np.asarray(codes.acts_BF) > 0).sum(1))


def test_jumprelu_loss_is_recon_plus_coefficient_times_l0():
  cfg = make_cfg("jumprelu", **{"sae.l0_coeff": 0.02, "train.l0_warmup_frac": 0.0})
  p = archs.init_params(jax.random.key(5), cfg.sae)
  x = rows(5)
  terms = archs.get("jumprelu").train_terms(p, x, jnp.ones((B,), jnp.float32), schedules(cfg, 3), cfg, None)
  pre = np.asarray(terms.pre_BF)
  l0 = (pre > cfg.sae.jumprelu_init_threshold).sum(1).mean()
  np.testing.assert_allclose(float(terms.sparsity), 0.02 * l0, rtol=1e-6)
  recon = np.where(pre > cfg.sae.jumprelu_init_threshold, pre, 0) @ np.asarray(p.w_dec) + np.asarray(p.b_dec)
  np.testing.assert_allclose(terms.recon_BD, recon, rtol=1e-5, atol=1e-6)


def test_jumprelu_l0_coefficient_sets_l0():
  """A smaller coefficient gives a larger L0 (the acceptance's knob), after a short training."""
  x_all = np.asarray(rows(6, 2048)) / np.sqrt(D)  # mean ||x||^2 = 1, as the trainer normalises
  l0 = {}
  for coeff in (0.1, 0.001):
    cfg = make_cfg("jumprelu", **{"sae.l0_coeff": coeff, "train.steps": 150, "train.lr": 3e-3,
                                  "train.batch_size": 256})
    tx = make_optimizer(cfg)
    step = jax.jit(functools.partial(train_step, cfg=cfg, tx=tx))
    state = init_train_state(jax.random.key(0), cfg, tx)
    for s in range(150):
      state, m = step(state, jnp.asarray(x_all[(s % 8) * 256:(s % 8 + 1) * 256]), jnp.ones((256,), bool))
    codes = archs.encode(state.params, jnp.asarray(x_all[:512]), cfg.sae)
    l0[coeff] = float((codes.acts_BF > 0).sum(1).mean())
    assert np.all(np.asarray(state.params.extra.threshold) != cfg.sae.jumprelu_init_threshold)  # theta learned
  assert l0[0.001] > 1.5 * l0[0.1], l0


# ------------------------------------------------------------------------------------ the seam


def test_a_seventh_arch_needs_only_a_table_entry(monkeypatch):
  """Registers a toy arch (fixed k = 1, hard top-1) through the table and the config's name list only,
  then trains it with the library's own train_step and evaluates with its inference rule."""

  def terms(params, x_BD, valid_B, sched, cfg, mesh):
    return archs._sparse_topk_terms(params, x_BD, valid_B, pre_acts(params, x_BD, cfg.sae),
                                    jnp.ones(x_BD.shape[:1]), 1, mesh)

  def infer(params, arch_state, x_BD, cfg, mesh):
    acts = hard_topk(pre_acts(params, x_BD, cfg), jnp.ones(x_BD.shape[:1]), max_k=1)
    return acts, archs._count(acts)

  toy = archs.Arch(archs._none, archs._none, terms, infer, archs._keep_state, archs._none)
  monkeypatch.setitem(archs.ARCHS, "top1", toy)
  monkeypatch.setattr(config_lib, "ARCHS", config_lib.ARCHS + ("top1",))
  cfg = make_cfg("top1")
  tx = make_optimizer(cfg)
  state = init_train_state(jax.random.key(0), cfg, tx)
  for s in range(5):
    state, m = train_step(state, rows(s), jnp.ones((B,), bool), cfg=cfg, tx=tx)
  assert float(m.l0_mean) == 1.0
  codes = archs.encode(state.params, rows(9), cfg.sae)
  assert ((np.asarray(codes.acts_BF) > 0).sum(1) <= 1).all()


def test_checkpoint_of_another_layout_is_a_one_line_error(tmp_path):
  topk, soft = make_cfg("topk"), make_cfg("softsae")
  tx_t, tx_s = make_optimizer(topk), make_optimizer(soft)
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"))
  ck.save(1, init_train_state(jax.random.key(0), topk, tx_t), {"step": 1}, topk.to_dict())
  ck.close()
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"), read_only=True)
  abstract = jax.eval_shape(lambda k: init_train_state(k, soft, tx_s), jax.random.key(0))
  with pytest.raises(checkpoint.CheckpointError, match="does not match this version's state layout") as e:
    ck.restore(1, checkpoint.abstract_like(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0])))
  assert "\n" not in str(e.value)


def test_hard_phase_freezes_the_arch_subtree_by_structure():
  cfg = make_cfg("softsae", **{"train.hard_frac": 0.5})
  p = archs.init_params(jax.random.key(0), cfg.sae)
  frozen = archs.get("softsae").frozen(schedules(cfg, 40), jnp.asarray(False), p, cfg)
  assert jax.tree.structure(frozen) == jax.tree.structure(p)
  assert all(bool(f) for f in jax.tree.leaves(frozen.extra)) and bool(frozen.w_enc) and not bool(frozen.w_dec)
  unfrozen = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, hard_freeze=False))
  assert archs.get("softsae").frozen(schedules(unfrozen, 40), jnp.asarray(False), p, unfrozen) is None
