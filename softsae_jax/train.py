"""The training step: pure ``train_step(state, x_BD, valid_B)`` and its one ``jax.jit``.

Schedules are pure functions of the step held in the state, so a restored state continues exactly.
Step semantics (docs/method.md §3.4, with one deliberate change): the k budget, alpha and the hard-phase flag
used in the forward pass of step ``s`` are the schedules evaluated at ``s`` (the reference uses
``s - 1`` and constructor values at ``s = 0`` — an off-by-one of no modelling value).

* k budget(s) = int(D (1 - r) + k r), r = min(s, K)/K, K = k_anneal_frac * T (K = 0: budget = k). SoftSAE's
  k-budget loss reads it; with ``train.k_anneal_baselines`` TopK/BatchTopK/Matryoshka use it as their k.
* alpha(s) = alpha_start (1 - r) + alpha r, r = min(s, A)/A.
* hard(s) = s > T - H with H = round(hard_frac * T) (SoftSAE only).
* l0_coeff(s) = sae.l0_coeff * r, r = min(s, W)/W, W = l0_warmup_frac * T (JumpReLU only reads it).

What each architecture computes (its loss terms, inference rule, state update, frozen parameters)
is its entry in :mod:`softsae_jax.archs`; this module only looks it up.

Hard phase (``train.hard_freeze=True``, the reference's semantics, docs/method.md §3.6): codes are the hard
top-floor(k-hat) of the ReLU activations with the gradient stopped, so the reconstruction trains
only the decoder and b_dec; the k-budget loss is 0; the k-estimator receives no update at all, and
the encoder is updated only on steps where AuxK has dead latents — PyTorch Adam skipping None
gradients, reproduced with :func:`softsae_jax.optim.freeze`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from softsae_jax import archs, losses, parallel, sharding
from softsae_jax import config as config_lib
from softsae_jax.config import Config
from softsae_jax.optim import freeze, lr_schedule, unit_norm_decoder
from softsae_jax.types import Metrics, Params, TrainState


def schedules(cfg: Config, step, *, k=None, kmax=None) -> archs.Schedule:
  """The schedules' values at ``step`` (traced or Python int): k budget, alpha, hard phase, L0 coefficient.

  ``k``, ``kmax``: a sweep's per-member values (arrays [S]); the k budget then anneals to each member's k.
  """
  t = cfg.train.steps
  s = jnp.asarray(step, jnp.float32)
  d = cfg.sae.d_in
  k = jnp.asarray(cfg.sae.k if k is None else k, jnp.float32)
  kmax = jnp.asarray(cfg.sae.kmax if kmax is None else kmax, jnp.float32)
  # The end values are selected explicitly: under jit XLA turns the division by the constant into a
  # multiplication by its reciprocal, r can come out 1 ulp above 1 and floor(...) would then give
  # k - 1 for the rest of the run.
  n_anneal = int(round(cfg.train.k_anneal_frac * t))
  budget = _ramp(s, n_anneal, float(d), k, floor=True)
  alpha = _ramp(s, int(round(cfg.train.alpha_anneal_frac * t)), cfg.sae.alpha_start, cfg.sae.alpha)
  l0_coeff = _ramp(s, int(round(cfg.train.l0_warmup_frac * t)), 0.0, cfg.sae.l0_coeff)
  n_hard = int(round(cfg.train.hard_frac * t)) if cfg.sae.arch == "softsae" else 0
  hard = (s > t - n_hard) if n_hard > 0 else jnp.asarray(False)
  annealing = (s < n_anneal) if n_anneal > 0 else jnp.asarray(False)
  return archs.Schedule(k_budget=budget, alpha=alpha, hard=hard, l0_coeff=l0_coeff, k=k, kmax=kmax,
                        annealing=annealing)


def _ramp(s, n: int, start: float, end: float, *, floor: bool = False) -> jax.Array:
  """start -> end linearly over steps [0, n], then ``end`` exactly (float32)."""
  if n <= 0:
    return jnp.asarray(end, jnp.float32)
  r = jnp.minimum(s, n) / n
  v = start * (1.0 - r) + end * r
  return jnp.where(s >= n, end, jnp.floor(v) if floor else v).astype(jnp.float32)


def geometric_median(x_ND: np.ndarray, iters: int = 100, tol: float = 1e-5) -> np.ndarray:
  """Weiszfeld iterations from the mean (docs/method.md §2.5), float64, with a guard for a point at g."""
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
  """The initial state; ``b_dec_D`` (normalised units) replaces the zero decoder bias when given.

  Pure: under ``jax.jit(..., out_shardings=...)`` (:func:`init_sharded`) every leaf is created
  directly with its sharding, so no host ever holds the whole state.
  """
  k_init, k_state = jax.random.split(key)
  params = archs.init_params(k_init, cfg.sae)
  if b_dec_D is not None:
    params = params._replace(b_dec=jnp.asarray(b_dec_D, jnp.float32))
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      key=jax.random.key_data(k_state), since_fired_F=jnp.zeros((cfg.sae.F,), jnp.int32),
      arch_state=archs.init_arch_state(cfg.sae), norm_factor=jnp.asarray(norm_factor, jnp.float32),
      n_skipped=jnp.zeros((), jnp.int32))


def abstract_state(cfg: Config, tx: optax.GradientTransformation) -> TrainState:
  """The state's shapes and dtypes (``jax.eval_shape``), allocating nothing."""
  return jax.eval_shape(lambda k: init_train_state(k, cfg, tx), jax.random.key(0))


def state_shardings(cfg: Config, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """The NamedSharding of every state leaf, from the rule table in :mod:`softsae_jax.sharding`."""
  return sharding.tree_shardings(abstract_state(cfg, tx), mesh)


def init_sharded(key: jax.Array, cfg: Config, tx: optax.GradientTransformation, mesh: Mesh, *,
                 b_dec_D: np.ndarray, norm_factor: float) -> TrainState:
  """:func:`init_train_state` jitted with the state's shardings as outputs."""
  fn = jax.jit(lambda k, b, n: init_train_state(k, cfg, tx, b_dec_D=b, norm_factor=n),
               out_shardings=state_shardings(cfg, tx, mesh))
  return fn(key, jnp.asarray(b_dec_D, jnp.float32), jnp.asarray(norm_factor, jnp.float32))


def _loss_fn(params: Params, x_BD, valid_B, dead_F, sched: archs.Schedule, cfg: Config, mesh=None, any_dead=None):
  """Scalar loss and the arch's terms and AuxK for one batch: main + sparsity + auxk_alpha * AuxK."""
  terms = archs.get(cfg.sae.arch).train_terms(params, x_BD, valid_B, sched, cfg, mesh)
  aux = losses.auxk_loss(params, terms.pre_BF, x_BD - terms.recon_BD, dead_F, cfg.sae.k_aux, valid_B, mesh,
                         run=any_dead, x_BD=x_BD, compute_dtype=cfg.sae.compute_dtype)
  return terms.main + terms.sparsity + cfg.sae.auxk_alpha * aux, (terms, aux)


def _batch(state: TrainState, x_BD, valid_B):
  """Raw rows -> normalised float32 rows (invalid rows zeroed) and the float mask."""
  x_BD = x_BD.astype(jnp.float32) / state.norm_factor
  return jnp.where(valid_B[:, None], x_BD, 0.0), valid_B.astype(jnp.float32)


def _update(step, params, opt_state, since_fired_F, arch_state, grads, loss, terms, aux, sched, x_BD, valid_B,
            *, cfg: Config, tx: optax.GradientTransformation):
  """One model's optimizer update, dead-latent counter, arch state and metrics, from its gradients.

  ``train_step`` calls it once; ``sweep_train_step`` vmaps it over the members.
  """
  sae = cfg.sae
  arch = archs.get(sae.arch)
  valid_f = valid_B.astype(jnp.float32)
  dead_F = since_fired_F >= cfg.dead_tokens
  updates, new_opt = tx.update(grads, opt_state, params)
  frozen = arch.frozen(sched, jnp.any(dead_F), params, cfg)
  if frozen is not None:
    updates = jax.tree.map(lambda u, f: jnp.where(f, jnp.zeros_like(u), u), updates, frozen)
    new_opt = freeze(new_opt, opt_state, frozen)
  new_params = unit_norm_decoder(optax.apply_updates(params, updates))

  acts_BF = terms.acts_BF
  n_valid = valid_f.sum()
  fired_F = jnp.any((acts_BF != 0) & valid_B[:, None], axis=0)
  since_fired_F = jnp.where(fired_F, 0, since_fired_F + n_valid.astype(jnp.int32))
  arch_state = arch.update_state(arch_state, step, terms, valid_B, cfg, sched=sched)

  l0_B = (acts_BF != 0).sum(axis=1).astype(jnp.float32)
  big = jnp.float32(3e38)
  metrics = Metrics(
      loss=loss, mse=losses.recon_loss(x_BD, terms.recon_BD, valid_f),
      fvu=losses.fvu(x_BD, terms.recon_BD, valid_f), sparsity_loss=terms.sparsity, aux_loss=aux,
      l0_mean=jnp.sum(l0_B * valid_f) / jnp.maximum(n_valid, 1.0),
      k_mean=jnp.sum(terms.k_B * valid_f) / jnp.maximum(n_valid, 1.0),
      k_min=jnp.min(jnp.where(valid_B, terms.k_B, big)), k_max=jnp.max(jnp.where(valid_B, terms.k_B, -big)),
      dead_frac=jnp.mean(since_fired_F >= cfg.dead_tokens), k_budget=sched.k_budget,
      alpha=sched.alpha, lr=lr_schedule(cfg)(step), grad_norm=optax.tree.norm(grads))
  return new_params, new_opt, since_fired_F, arch_state, metrics


def train_step(state: TrainState, x_BD: jax.Array, valid_B: jax.Array, *, cfg: Config,
               tx: optax.GradientTransformation, mesh: Mesh | None = None) -> tuple[TrainState, Metrics]:
  """One optimizer step (pure). ``x_BD`` raw activations in any float dtype; ``valid_B`` bool.

  ``mesh``: the mesh the step runs on, when it has more than one device: every selection then runs
  shard-local (:mod:`softsae_jax.parallel`); None for one device.
  """
  x_BD, valid_f = _batch(state, x_BD, valid_B)
  dead_F = state.since_fired_F >= cfg.dead_tokens
  sched = schedules(cfg, state.step)._replace(arch_state=state.arch_state)
  (loss, (terms, aux)), grads = jax.value_and_grad(_loss_fn, has_aux=True)(
      state.params, x_BD, valid_f, dead_F, sched, cfg, mesh)
  params, opt_state, since_fired_F, arch_state, metrics = _update(
      state.step, state.params, state.opt_state, state.since_fired_F, state.arch_state, grads, loss, terms, aux,
      sched, x_BD, valid_B, cfg=cfg, tx=tx)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, key=state.key,
                         since_fired_F=since_fired_F, arch_state=arch_state, norm_factor=state.norm_factor,
                         n_skipped=state.n_skipped + (valid_B.shape[0] - valid_f.sum()).astype(jnp.int32))
  return new_state, metrics


def make_train_step(cfg: Config, tx: optax.GradientTransformation, mesh: Mesh) -> Callable:
  """The only jit: ``step(state, x_BD, valid_B) -> (state, metrics)``, state donated, every state
  leaf sharded by the rule table (:func:`state_shardings`), the batch split over 'data'."""
  state_sh = state_shardings(cfg, tx, mesh)
  rows, mask = sharding.batch_shardings(mesh)
  fn = functools.partial(train_step, cfg=cfg, tx=tx, mesh=mesh if mesh.devices.size > 1 else None)
  return jax.jit(fn, in_shardings=(state_sh, rows, mask), out_shardings=(state_sh, sharding.replicated(mesh)),
                 donate_argnums=0)


# ------------------------------------------------------------------------------------------ sweeps
# Several SAEs on the same batches in one compiled step (docs/scale-out.md, "Sweeps"): the state's
# parameters, optimizer state, PRNG key, dead counters and arch state carry a leading member axis [S];
# step, norm factor and skipped-row count are shared. The loss is vmapped over the members and the
# gradient taken of its sum, outside the vmap (the soft top-k then sees the members as extra rows,
# parallel.MEMBERS); the per-member update is vmapped, so gradient clipping is per member.


def sweep_bound(cfg: Config) -> Config:
  """The config a sweep's step is traced with: ``sae.k`` and ``sae.k_max`` the members' largest (the
  static bounds of every selection); each member's own values are traced (:func:`sweep_members`)."""
  members = cfg.members()
  sae = cfg.sae
  sae = dataclasses.replace(sae, k=max(m.config.sae.k for m in members),
                            k_max=max(m.config.sae.kmax for m in members) if sae.arch == "softsae" else sae.k_max)
  return dataclasses.replace(cfg, sae=sae, sweep=config_lib.SweepConfig())


def sweep_members(cfg: Config) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  """The members' (k, k_max, seed), each a tuple in member order."""
  members = cfg.members()
  return (tuple(m.config.sae.k for m in members), tuple(m.config.sae.kmax for m in members),
          tuple(m.seed for m in members))


def init_sweep_state(cfg: Config, tx: optax.GradientTransformation, *, b_dec_D, norm_factor) -> TrainState:
  """The stacked initial state of a sweep: member i is exactly ``init_train_state(key(seed_i), ...)``."""
  bound = sweep_bound(cfg)
  seeds = jnp.asarray(sweep_members(cfg)[2], jnp.uint32)
  b_dec_D, norm_factor = jnp.asarray(b_dec_D, jnp.float32), jnp.asarray(norm_factor, jnp.float32)

  def init(seeds_S, b, n):
    st = jax.vmap(lambda s: init_train_state(jax.random.key(s), bound, tx, b_dec_D=b, norm_factor=n))(seeds_S)
    return st._replace(step=st.step[0], norm_factor=st.norm_factor[0], n_skipped=st.n_skipped[0])

  return jax.jit(init)(seeds, b_dec_D, norm_factor)


def abstract_sweep_state(cfg: Config, tx: optax.GradientTransformation) -> TrainState:
  """The sweep state's shapes and dtypes, allocating nothing."""
  return jax.eval_shape(lambda: init_sweep_state(cfg, tx, b_dec_D=jnp.zeros((cfg.sae.d_in,)), norm_factor=1.0))


_SCHED_AXES = archs.Schedule(k_budget=0, alpha=None, hard=None, l0_coeff=None, k=0, kmax=0, annealing=None,
                             arch_state=0)


def sweep_train_step(state: TrainState, x_BD: jax.Array, valid_B: jax.Array, *, cfg: Config,
                     tx: optax.GradientTransformation) -> tuple[TrainState, Metrics]:
  """One optimizer step of every member of ``cfg``'s sweep (pure); metrics have a leading [S] axis."""
  bound = sweep_bound(cfg)
  k_S, kmax_S, _ = sweep_members(cfg)
  x_BD, valid_f = _batch(state, x_BD, valid_B)
  sched = schedules(bound, state.step, k=jnp.asarray(k_S, jnp.float32), kmax=jnp.asarray(kmax_S, jnp.float32))
  sched = sched._replace(arch_state=state.arch_state)
  dead_SF = state.since_fired_F >= bound.dead_tokens
  any_dead = jnp.any(dead_SF)  # unbatched: AuxK's cond stays a cond under the vmap

  def member_loss(params, dead_F, sch):
    return _loss_fn(params, x_BD, valid_f, dead_F, sch, bound, parallel.MEMBERS, any_dead)

  def total(params_S):
    loss_S, aux = jax.vmap(member_loss, in_axes=(0, 0, _SCHED_AXES))(params_S, dead_SF, sched)
    return jnp.sum(loss_S), (loss_S, aux)

  (_, (loss_S, (terms, aux_S))), grads = jax.value_and_grad(total, has_aux=True)(state.params)
  update = jax.vmap(functools.partial(_update, cfg=bound, tx=tx),
                    in_axes=(None, 0, 0, 0, 0, 0, 0, 0, 0, _SCHED_AXES, None, None))
  params, opt_state, since_fired_F, arch_state, metrics = update(
      state.step, state.params, state.opt_state, state.since_fired_F, state.arch_state, grads, loss_S, terms,
      aux_S, sched, x_BD, valid_B)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, key=state.key,
                         since_fired_F=since_fired_F, arch_state=arch_state, norm_factor=state.norm_factor,
                         n_skipped=state.n_skipped + (valid_B.shape[0] - valid_f.sum()).astype(jnp.int32))
  return new_state, metrics


def make_sweep_step(cfg: Config, tx: optax.GradientTransformation, mesh: Mesh) -> Callable:
  """The sweep's one jit: the state replicated (mesh.model is 1), the batch split over 'data'."""
  rows, mask = sharding.batch_shardings(mesh)
  rep = sharding.replicated(mesh)
  fn = functools.partial(sweep_train_step, cfg=cfg, tx=tx)
  return jax.jit(fn, in_shardings=(rep, rows, mask), out_shardings=(rep, rep), donate_argnums=0)
