"""The training step: pure ``train_step(state, x_BD, valid_B)`` and its one ``jax.jit``.

Schedules are pure functions of the step held in the state, so a restored state continues exactly.
Step semantics (spec §3.4, with one deliberate change): the k budget, alpha and the hard-phase flag
used in the forward pass of step ``s`` are the schedules evaluated at ``s`` (the reference uses
``s - 1`` and constructor values at ``s = 0``, §7.5 — an off-by-one of no modelling value).

* k budget(s) = int(D (1 - r) + k r), r = min(s, K)/K, K = k_anneal_frac * T (K = 0: budget = k).
* alpha(s) = alpha_start (1 - r) + alpha r, r = min(s, A)/A.
* hard(s) = s > T - H with H = round(hard_frac * T) (SoftSAE only).

Hard phase (``train.hard_freeze=True``, the reference's semantics, §7.1): codes are the hard
top-floor(k-hat) of the ReLU activations with the gradient stopped, so the reconstruction trains
only the decoder and b_dec; the k-budget loss is 0; the k-estimator receives no update at all, and
the encoder is updated only on steps where AuxK has dead latents — PyTorch Adam skipping None
gradients, reproduced with :func:`softsae_jax.optim.freeze`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from softsae_jax import losses
from softsae_jax.config import Config
from softsae_jax.optim import freeze, lr_schedule, make_optimizer, unit_norm_decoder
from softsae_jax.sae import decode, encode, estimate_k, init_params, pre_acts, scatter_codes, sparse_decode, topk_sparse
from softsae_jax.types import Metrics, Params, TrainState


def schedules(cfg: Config, step) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(k_budget, alpha, hard) at ``step`` (traced or Python int)."""
  t = cfg.train.steps
  s = jnp.asarray(step, jnp.float32)
  k_anneal = int(round(cfg.train.k_anneal_frac * t))
  a_anneal = int(round(cfg.train.alpha_anneal_frac * t))
  d, k = cfg.sae.d_in, cfg.sae.k
  # The end values are selected explicitly: under jit XLA turns the division by the constant into a
  # multiplication by its reciprocal, r can come out 1 ulp above 1 and floor(...) would then give
  # k - 1 for the rest of the run.
  if k_anneal > 0:
    r = jnp.minimum(s, k_anneal) / k_anneal
    budget = jnp.where(s >= k_anneal, float(k), jnp.floor(d * (1.0 - r) + k * r))
  else:
    budget = jnp.asarray(float(k))
  if a_anneal > 0:
    r = jnp.minimum(s, a_anneal) / a_anneal
    alpha = jnp.where(s >= a_anneal, cfg.sae.alpha, cfg.sae.alpha_start * (1.0 - r) + cfg.sae.alpha * r)
  else:
    alpha = jnp.asarray(cfg.sae.alpha, jnp.float32)
  n_hard = int(round(cfg.train.hard_frac * t)) if cfg.sae.arch == "softsae" else 0
  hard = (s > t - n_hard) if n_hard > 0 else jnp.asarray(False)
  return budget.astype(jnp.float32), jnp.asarray(alpha, jnp.float32), hard


def geometric_median(x_ND: np.ndarray, iters: int = 100, tol: float = 1e-5) -> np.ndarray:
  """Weiszfeld iterations from the mean (spec §2.5), float64, with a guard for a point at g."""
  x_ND = np.asarray(x_ND, np.float64)
  g_D = x_ND.mean(axis=0)
  for _ in range(iters):
    w_N = 1.0 / np.maximum(np.linalg.norm(x_ND - g_D[None, :], axis=1), 1e-12)
    g_new = (w_N[:, None] * x_ND).sum(axis=0) / w_N.sum()
    done = np.linalg.norm(g_new - g_D) < tol
    g_D = g_new
    if done:
      break
  return g_D.astype(np.float32)


def init_train_state(key: jax.Array, cfg: Config, tx: optax.GradientTransformation, *,
                     b_dec_D: jax.Array | np.ndarray | None = None, norm_factor: float = 1.0) -> TrainState:
  """The initial state; ``b_dec_D`` (normalised units) replaces the zero decoder bias when given."""
  k_init, k_state = jax.random.split(key)
  params = init_params(k_init, cfg.sae)
  if b_dec_D is not None:
    params = params._replace(b_dec=jnp.asarray(b_dec_D, jnp.float32))
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      key=jax.random.key_data(k_state), since_fired_F=jnp.zeros((cfg.sae.F,), jnp.int32),
      threshold=jnp.asarray(-1.0, jnp.float32), norm_factor=jnp.asarray(norm_factor, jnp.float32),
      n_skipped=jnp.zeros((), jnp.int32))


def _loss_fn(params: Params, x_BD, valid_B, dead_F, step, cfg: Config):
  """Scalar loss and auxiliaries (acts_BF, recon_BD, k_B, term values) for one batch."""
  sae = cfg.sae
  budget, alpha, hard = schedules(cfg, step)

  def finish(acts_BF, recon_BD, pre_BF, k_B, main, k_loss):
    aux = losses.auxk_loss(params, pre_BF, x_BD - recon_BD, dead_F, sae.k_aux, valid_B)
    loss = main + sae.k_loss_weight * k_loss + sae.auxk_alpha * aux
    return loss, (acts_BF, recon_BD, k_B, main, k_loss, aux)

  zero = jnp.zeros((), jnp.float32)

  def sparse_topk_loss(pre_BF, k_B, max_k, freeze=False):
    vals_BK, idx_BK = topk_sparse(pre_BF, k_B, max_k)
    if freeze:
      vals_BK = jax.lax.stop_gradient(vals_BK)
    recon_BD = sparse_decode(params.w_dec, idx_BK, vals_BK) + params.b_dec[None, :]
    acts_BF = jax.lax.stop_gradient(scatter_codes(vals_BK, idx_BK, sae.F))
    return finish(acts_BF, recon_BD, pre_BF, k_B, losses.recon_loss(x_BD, recon_BD, valid_B), zero)

  if sae.arch == "softsae":

    def soft(_):
      codes = encode(params, x_BD, sae, train=True, alpha=alpha)
      recon_BD = decode(params, codes.acts_BF, sae)
      k_loss = losses.k_budget_loss(codes.k_B, budget, sae.k_loss_beta, valid_B)
      return finish(codes.acts_BF, recon_BD, codes.pre_BF, codes.k_B,
                    losses.recon_loss(x_BD, recon_BD, valid_B), k_loss)

    def hard_phase(_):
      pre_BF = pre_acts(params, x_BD, sae)
      k_B = jax.lax.stop_gradient(estimate_k(params, x_BD, sae))
      return sparse_topk_loss(pre_BF, k_B, sae.kmax, freeze=cfg.train.hard_freeze)

    return jax.lax.cond(hard, hard_phase, soft, None)

  if sae.arch == "topk":
    return sparse_topk_loss(pre_acts(params, x_BD, sae), jnp.full(x_BD.shape[:1], float(sae.k)), sae.k)
  codes = encode(params, x_BD * valid_B[:, None], sae, train=True)
  if sae.arch == "matryoshka":
    main, recon_BD = losses.matryoshka_loss(params, x_BD, codes.acts_BF, sae.group_sizes(), valid_B)
    return finish(codes.acts_BF, recon_BD, codes.pre_BF, codes.k_B, main, zero)
  recon_BD = decode(params, codes.acts_BF, sae)
  main = losses.recon_loss(x_BD, recon_BD, valid_B)
  if sae.arch == "relu":
    main = main + sae.l1_coeff * losses.l1_penalty(codes.acts_BF, params.w_dec, valid_B)
  return finish(codes.acts_BF, recon_BD, codes.pre_BF, codes.k_B, main, zero)


def train_step(state: TrainState, x_BD: jax.Array, valid_B: jax.Array, *, cfg: Config,
               tx: optax.GradientTransformation) -> tuple[TrainState, Metrics]:
  """One optimizer step (pure). ``x_BD`` raw activations in any float dtype; ``valid_B`` bool."""
  sae = cfg.sae
  valid_f = valid_B.astype(jnp.float32)
  x_BD = x_BD.astype(jnp.float32) / state.norm_factor
  x_BD = jnp.where(valid_B[:, None], x_BD, 0.0)
  dead_F = state.since_fired_F >= sae.dead_tokens
  (loss, (acts_BF, recon_BD, k_B, main, k_loss, aux)), grads = jax.value_and_grad(_loss_fn, has_aux=True)(
      state.params, x_BD, valid_f, dead_F, state.step, cfg)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  budget, alpha, hard = schedules(cfg, state.step)
  if sae.arch == "softsae" and cfg.train.hard_freeze:
    kest = hard
    enc = hard & ~jnp.any(dead_F)
    frozen = Params(w_enc=enc, b_enc=enc, w_dec=False, b_dec=False, w_k1=kest, b_k1=kest, w_k2=kest, b_k2=kest)
    updates = jax.tree.map(lambda u, f: jnp.where(f, jnp.zeros_like(u), u), updates, frozen)
    opt_state = freeze(opt_state, state.opt_state, frozen)
  params = unit_norm_decoder(optax.apply_updates(state.params, updates))

  n_valid = valid_f.sum()
  fired_F = jnp.any((acts_BF != 0) & valid_B[:, None], axis=0)
  since_fired_F = jnp.where(fired_F, 0, state.since_fired_F + n_valid.astype(jnp.int32))

  threshold = state.threshold
  if sae.arch in ("batchtopk", "matryoshka"):
    sel_BF = (acts_BF > 0) & valid_B[:, None]
    min_act = jnp.min(jnp.where(sel_BF, acts_BF, jnp.inf))
    start = int(round(sae.threshold_start_frac * cfg.train.steps))
    # A running mean over the first 1/(1-beta) updates, then the EMA: the reference's plain EMA
    # (beta 0.999 from step 1000) stays biased towards early values in short runs.
    n_upd = (state.step - start).astype(jnp.float32)
    beta = jnp.minimum(sae.threshold_beta, n_upd / (n_upd + 1.0))
    ema = jnp.where(threshold < 0, min_act, beta * threshold + (1 - beta) * min_act)
    threshold = jnp.where((state.step >= start) & jnp.isfinite(min_act), ema, threshold)

  l0_B = (acts_BF != 0).sum(axis=1).astype(jnp.float32)
  big = jnp.float32(3e38)
  metrics = Metrics(
      loss=loss, mse=main if sae.arch not in ("relu",) else losses.recon_loss(x_BD, recon_BD, valid_f),
      fvu=losses.fvu(x_BD, recon_BD, valid_f), k_loss=k_loss, aux_loss=aux,
      l0_mean=jnp.sum(l0_B * valid_f) / jnp.maximum(n_valid, 1.0),
      k_mean=jnp.sum(k_B * valid_f) / jnp.maximum(n_valid, 1.0),
      k_min=jnp.min(jnp.where(valid_B, k_B, big)), k_max=jnp.max(jnp.where(valid_B, k_B, -big)),
      dead_frac=jnp.mean(since_fired_F >= sae.dead_tokens), k_budget=budget,
      alpha=alpha, lr=lr_schedule(cfg)(state.step), grad_norm=optax.tree.norm(grads))
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, key=state.key,
                         since_fired_F=since_fired_F, threshold=threshold, norm_factor=state.norm_factor,
                         n_skipped=state.n_skipped + (valid_B.shape[0] - n_valid).astype(jnp.int32))
  return new_state, metrics


def make_mesh(devices=None) -> Mesh:
  """A ("data", "model") mesh over all devices, data-parallel for now (model axis of size 1)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(len(devices), 1), ("data", "model"))


def shardings(mesh: Mesh):
  """(replicated, batch rows [B, D], row mask [B]) shardings."""
  return NamedSharding(mesh, P()), NamedSharding(mesh, P("data", None)), NamedSharding(mesh, P("data"))


def make_train_step(cfg: Config, tx: optax.GradientTransformation, mesh: Mesh) -> Callable:
  """The only jit: ``step(state, x_BD, valid_B) -> (state, metrics)``, state donated, params and
  optimizer state replicated, the batch sharded over 'data'."""
  repl, rows, mask = shardings(mesh)
  fn = functools.partial(train_step, cfg=cfg, tx=tx)
  return jax.jit(fn, in_shardings=(repl, rows, mask), out_shardings=(repl, repl), donate_argnums=0)


