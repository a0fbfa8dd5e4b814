"""The optimizer: optax chain and the decoder constraints (docs/method.md §3.5).

``make_optimizer(cfg)`` = project decoder gradients orthogonal to their atoms -> clip the global norm
-> Adam with the warmup/decay learning-rate schedule -> the k-estimator's updates times
``train.k_lr_scale`` (SoftSAE). After ``optax.apply_updates`` the trainer calls
:func:`unit_norm_decoder`, the projection back onto unit-norm atoms.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from softsae_jax.config import Config
from softsae_jax.types import KEstimator, Params

_EPS32 = float(jnp.finfo(jnp.float32).eps)


def lr_schedule(cfg: Config) -> optax.Schedule:
  """lr * factor(step): step/warmup for step < warmup (the first update has lr 0, as the reference's
  LambdaLR), 1 until decay_start, then (T - step)/(T - decay_start) down to 0 at T (docs/method.md §3.4)."""
  t = cfg.train.steps
  warmup = int(round(cfg.train.warmup_frac * t))
  decay_start = int(round(cfg.train.decay_start_frac * t))
  lr = cfg.train.lr_value(cfg.sae.F)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32)
    warm = jnp.where(warmup > 0, s / max(warmup, 1), 1.0)
    decay = jnp.where(t > decay_start, (t - s) / max(t - decay_start, 1), 1.0)
    factor = jnp.where(s < warmup, warm, jnp.where(s < decay_start, 1.0, decay))
    return lr * jnp.clip(factor, 0.0, 1.0)

  return schedule


class ProjectState(NamedTuple):
  pass


def project_decoder_grads(eps: float = 1e-6) -> optax.GradientTransformation:
  """Removes from each decoder-atom gradient its component along the atom (docs/method.md §3.5):
  g_j <- g_j - (g_j . w_j) w_j with w_j the unit atom (``w_dec`` rows)."""

  def init_fn(params):
    del params
    return ProjectState()

  def update_fn(updates: Params, state, params: Params | None = None):
    if params is None:
      raise ValueError("project_decoder_grads needs params; got None")
    w_FD = params.w_dec
    what_FD = w_FD / (jnp.linalg.norm(w_FD, axis=1, keepdims=True) + eps)
    g_FD = updates.w_dec
    g_FD = g_FD - jnp.sum(g_FD * what_FD, axis=1, keepdims=True) * what_FD
    return updates._replace(w_dec=g_FD), state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_k_estimator(scale: float) -> optax.GradientTransformation:
  """Multiplies the k-estimator's updates (``Params.extra`` when it is a :class:`KEstimator`) by
  ``scale``; every other update passes unchanged. Stateless."""

  def update_fn(updates: Params, state, params=None):
    del params
    if isinstance(updates, Params) and isinstance(updates.extra, KEstimator):
      extra = jax.tree.map(lambda u: u * jnp.asarray(scale, u.dtype), updates.extra)
      updates = updates._replace(extra=extra)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
  """project decoder grads -> clip_by_global_norm(train.grad_clip) -> Adam(b1, b2, eps) with lr schedule
  [-> k-estimator updates times train.k_lr_scale, when it is not 1]."""
  t = cfg.train
  parts = [
      project_decoder_grads(),
      optax.clip_by_global_norm(t.grad_clip),
      optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.eps),
      optax.scale_by_learning_rate(lr_schedule(cfg)),
  ]
  if t.k_lr_scale != 1.0:  # the default keeps the optimizer state's structure (and old checkpoints)
    parts.append(scale_k_estimator(t.k_lr_scale))
  return optax.chain(*parts)


def unit_norm_decoder(params: Params) -> Params:
  """Projects decoder atoms back to unit norm: w_j / (||w_j|| + eps_f32) (docs/method.md §3.5)."""
  w_FD = params.w_dec
  return params._replace(w_dec=w_FD / (jnp.linalg.norm(w_FD, axis=1, keepdims=True) + _EPS32))


def freeze(new_tree, old_tree, frozen: Params):
  """Per-parameter ``where(frozen, old, new)`` on every Params-shaped subtree of an optimizer state
  or update (other leaves, e.g. Adam's step count, take the new value). ``frozen`` is a Params
  tree of bool scalars with the structure of the parameters (``extra`` included).

  This is how the hard phase reproduces PyTorch Adam skipping parameters whose gradient is None: no
  moment update and no step for them (docs/method.md §3.5, §3.6).
  """

  def merge(new, old):
    if isinstance(new, Params):
      return jax.tree.map(lambda n, o, f: jnp.where(f, o, n), new, old, frozen)
    return new

  return jax.tree.map(merge, new_tree, old_tree, is_leaf=lambda x: isinstance(x, Params))
