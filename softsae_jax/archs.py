"""The architectures: one table of per-arch pure functions, keyed by ``SaeConfig.arch``.

Every architecture shares the building blocks of :mod:`softsae_jax.sae` (ReLU encoder over
``x - b_dec``, unit-norm decoder atoms) and differs in five pure functions, gathered in an
:class:`Arch` entry of :data:`ARCHS`:

* ``init_extra(keys, w_enc_DF, cfg)``: its own parameters, the optional ``Params.extra`` subtree
  (``None`` when it has none);
* ``init_state(cfg)``: its own non-trained state, ``TrainState.arch_state`` (``None`` when none);
* ``train_terms(params, x_BD, valid_B, sched, cfg, mesh)``: the training-mode forward pass and its
  loss terms, a :class:`Terms`;
* ``infer(params, arch_state, x_BD, cfg, mesh)``: the inference rule, ``(acts_BF, k_B)``;
* ``update_state(arch_state, step, terms, valid_B, cfg, *, sched)``: the post-step update of its state
  (``terms``: this step's :class:`Terms`; ``sched``: its :class:`Schedule`, with a sweep member's own k);
* ``frozen(sched, any_dead, params, cfg)``: which parameters the optimizer must leave untouched this
  step (a Params-shaped bool tree), or ``None``.

``train.py`` and ``evaluate.py`` only look the entry up; they never branch on the arch's name. Every
selection goes through :mod:`softsae_jax.parallel`, which runs it shard-local when ``mesh`` splits
the latents over its 'model' axis (``mesh`` None: one device's view).
Adding an architecture means writing these functions and one :data:`ARCHS` entry here, adding its
name to ``config.ARCHS`` (and its hyper-parameters, if any, to ``SaeConfig``), plus its tests.

The archs (docs/method.md §2, §4):

* ``softsae``: a k-estimator MLP D -> F -> 1 predicts a real k-hat in [1, k_max] per row. Training
  multiplies the ReLU activations by LapSum soft top-k weights (sum = k-hat); inference keeps the
  floor(k-hat) largest ReLU activations of each row. Stępień et al., arXiv 2605.06610.
* ``topk``: the k largest ReLU activations per row. Gao et al., arXiv 2406.04093.
* ``batchtopk``: training keeps the k*B largest activations of the whole batch; inference keeps
  activations above a learned threshold (an EMA of the smallest selected activation). Bussmann et
  al., arXiv 2412.06410.
* ``matryoshka``: batch top-k with nested groups of latents, each prefix trained to reconstruct.
  Bussmann et al., arXiv 2503.17547.
* ``relu``: plain ReLU with an L1 penalty.
* ``jumprelu``: a per-latent learned threshold theta, trained with an L0 penalty through
  straight-through estimators with a rectangle kernel; inference ``pre * (pre > theta)``.
  Rajamanoharan et al., arXiv 2407.14435.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from softsae_jax import config as config_lib
from softsae_jax import losses, parallel
from softsae_jax import sae as sae_lib
from softsae_jax import topk as topk_lib
from softsae_jax.config import Config, SaeConfig
from softsae_jax.sae import affine, decode, init_core, pre_acts
from softsae_jax.types import Codes, JumpThreshold, KEstimator, Params


class Schedule(NamedTuple):
  """The schedules' values at one step (traced scalars), from :func:`softsae_jax.train.schedules`."""

  k_budget: jax.Array  # SoftSAE's k budget (annealed from D to k)
  alpha: jax.Array  # the soft top-k's Laplace scale
  hard: jax.Array  # bool: SoftSAE's hard phase
  l0_coeff: jax.Array  # JumpReLU's L0 coefficient (warmed up from 0)
  k: jax.Array  # the target k (float32): ``sae.k``, or a sweep member's own k (static bound: ``sae.k``)
  kmax: jax.Array  # SoftSAE's k-hat bound: ``sae.kmax``, or a sweep member's own (static bound: ``sae.kmax``)
  annealing: jax.Array  # bool: the k budget is still above k (the step is inside train.k_anneal_frac)
  arch_state: Any = None  # the arch's state before this step (TrainState.arch_state)


class Terms(NamedTuple):
  """What an arch's training-mode forward pass returns.

  ``main`` is the reconstruction term the loss uses (Matryoshka: the mean over nested prefixes) and
  ``sparsity`` the arch's own weighted penalty (0 when it has none). ``acts_BF`` are the decoded codes
  (the trainer reads them for statistics and the dead-latent counter), ``pre_BF`` the ReLU activations
  before selection (AuxK reads them), ``k_B`` SoftSAE's k-hat or the per-row active count.
  """

  recon_BD: jax.Array
  acts_BF: jax.Array
  pre_BF: jax.Array
  k_B: jax.Array
  main: jax.Array
  sparsity: jax.Array


class Arch(NamedTuple):
  init_extra: Callable[[jax.Array, jax.Array, SaeConfig], Any]
  init_state: Callable[[SaeConfig], Any]
  train_terms: Callable[..., Terms]
  infer: Callable[..., tuple[jax.Array, jax.Array]]
  update_state: Callable[..., Any]
  frozen: Callable[..., Any]


_ZERO = 0.0


def _none(*_args, **_kw):
  return None


def _keep_state(arch_state, *_args, **_kw):
  return arch_state


def _count(acts_BF):
  return (acts_BF > 0).sum(axis=1).astype(jnp.float32)


def _dense_terms(params, x_BD, valid_B, acts_BF, pre_BF, cfg, sparsity=_ZERO, k_B=None) -> Terms:
  recon_BD = decode(params, acts_BF, cfg)
  return Terms(recon_BD, acts_BF, pre_BF, _count(acts_BF) if k_B is None else k_B,
               losses.recon_loss(x_BD, recon_BD, valid_B), jnp.asarray(sparsity, jnp.float32))


def _sparse_topk_terms(params, x_BD, valid_B, pre_BF, k_B, max_k, mesh, *, stop=False, sparse_grad=False) -> Terms:
  """The floor(k_B) largest activations per row, decoded sparsely (B*K*D work)."""
  dec_BD, acts_BF = parallel.topk_decode(pre_BF, k_B, max_k, params.w_dec, mesh, stop=stop, sparse_grad=sparse_grad)
  return _kept_terms(params, x_BD, valid_B, dec_BD, acts_BF, pre_BF, k_B)


def _kept_terms(params, x_BD, valid_B, dec_BD, acts_BF, pre_BF, k_B) -> Terms:
  recon_BD = dec_BD + params.b_dec[None, :]
  return Terms(recon_BD, acts_BF, pre_BF, k_B, losses.recon_loss(x_BD, recon_BD, valid_B),
               jnp.zeros((), jnp.float32))


def _topk_final(params, x_BD, valid_B, k_B, max_k, sae: SaeConfig, mesh) -> Terms:
  """TopK's selection and decode. With ``sae.sparse_grads`` on, every weight gradient is formed from
  the selected entries: on one device (``mesh`` None) the encoder's too (:func:`softsae_jax.sae.topk_encode`);
  in a sweep or on a mesh of several devices only the decoder's."""
  sparse = sae_lib.sparse_grads_on(sae)
  if sparse and mesh is None:
    pre_BF, vals_BK, idx_BK = sae_lib.topk_encode(params, x_BD, k_B, max_k, sae)
    dec_BD, acts_BF = parallel.decode_kept(vals_BK, idx_BK, params.w_dec, pre_BF.shape[1], sparse_grad=True)
    return _kept_terms(params, x_BD, valid_B, dec_BD, acts_BF, pre_BF, k_B)
  pre_BF = pre_acts(params, x_BD, sae)
  return _sparse_topk_terms(params, x_BD, valid_B, pre_BF, k_B, max_k, mesh, sparse_grad=sparse)


# ------------------------------------------------------------------------------------------ softsae


def _softsae_init(keys, w_enc_DF, cfg: SaeConfig) -> KEstimator:
  """``k_input=x``: the k-estimator's first layer is a separate copy of ``w_enc``, its second layer
  torch-default uniform; ``top_acts``: both layers torch-default uniform (docs/method.md §2.1, §2.2)."""
  k_w2, k_b2 = keys
  if cfg.k_input == "top_acts":  # M -> H -> 1, torch-default uniform layers
    m, h = cfg.k_top_width, cfg.k_hidden
    k_w1 = jax.random.fold_in(k_w2, 1)
    b1, b2 = 1.0 / jnp.sqrt(m), 1.0 / jnp.sqrt(h)
    return KEstimator(w_k1=jax.random.uniform(k_w1, (m, h), jnp.float32, -b1, b1),
                      b_k1=jnp.zeros((h,), jnp.float32),
                      w_k2=jax.random.uniform(k_w2, (h,), jnp.float32, -b2, b2),
                      b_k2=jax.random.uniform(k_b2, (), jnp.float32, -b2, b2))
  bound = 1.0 / jnp.sqrt(cfg.F)
  return KEstimator(w_k1=jnp.copy(w_enc_DF),  # own buffer: the state is donated
                    b_k1=jnp.zeros((cfg.F,), jnp.float32),
                    w_k2=jax.random.uniform(k_w2, (cfg.F,), jnp.float32, -bound, bound),
                    b_k2=jax.random.uniform(k_b2, (), jnp.float32, -bound, bound))


def estimate_k(params: Params, x_BD: jax.Array, cfg: SaeConfig, kmax: jax.Array | None = None, mesh=None, *,
               pre_BF: jax.Array | None = None, top_BM: jax.Array | None = None) -> jax.Array:
  """SoftSAE's k-hat: clamp(k_max * sigmoid(w2 . ReLU((x - b_dec) W1 + b1) + b2), 1, F), [B] float32;
  with ``sae.k_input=top_acts`` the first layer reads the row's M = k_max + 16 largest pre-activations,
  sorted, gradient stopped (``mesh``: where they are selected), instead of x - b_dec.

  ``kmax``: a traced k_max (a sweep member's own) instead of ``cfg.kmax``. ``pre_BF`` (the encoder's
  activations) or ``top_BM`` (their M largest, sorted; M >= the estimator's width): what the caller
  already computed, so the top_acts estimator does not recompute it. Kept in float32 whatever the
  compute dtype (docs/method.md §2.2: bf16 would quantise k-hat).
  """
  est: KEstimator = params.extra
  if cfg.k_input == "top_acts":
    m = cfg.k_top_width
    if top_BM is not None and top_BM.shape[1] >= m:
      # (a slice of lax.top_k's output can make XLA:CPU sort whole rows: only when the widths differ)
      top_BM = jax.lax.stop_gradient(top_BM if top_BM.shape[1] == m else top_BM[:, :m])
    else:
      top_BM = parallel.top_values(pre_acts(params, x_BD, cfg) if pre_BF is None else pre_BF, m, mesh)
    h_BH = jax.nn.relu(top_BM @ est.w_k1 + est.b_k1[None, :])
    logit_B = h_BH @ est.w_k2 + est.b_k2
  else:
    h_BF = jax.nn.relu(affine(x_BD, params.b_dec, est.w_k1, est.b_k1, cfg.compute_dtype))
    logit_B = h_BF @ est.w_k2 + est.b_k2
  kmax = cfg.kmax if kmax is None else kmax
  return jnp.clip(kmax * jax.nn.sigmoid(logit_B), 1.0, float(cfg.F))


def _softsae_soft_codes(params, x_BD, alpha, cfg: SaeConfig, mesh=None, kmax=None) -> Codes:
  pre_BF = pre_acts(params, x_BD, cfg)
  k_B = estimate_k(params, x_BD, cfg, kmax, mesh, pre_BF=pre_BF)
  scores_BF = pre_BF if cfg.soft_grad == "faithful" else jax.lax.stop_gradient(pre_BF)
  if cfg.alpha_k <= 0:
    return Codes(pre_BF, pre_BF * parallel.soft_topk(scores_BF, k_B, alpha, max_k=cfg.kmax, mesh=mesh), k_B)
  # Decoupled temperatures: the weights at alpha, k-hat's gradient from the weights at max(alpha, alpha_k)
  # (a zero-valued term w_k - stop(w_k) that carries only d/dk-hat).
  w_BF = parallel.soft_topk(scores_BF, jax.lax.stop_gradient(k_B), alpha, max_k=cfg.kmax, mesh=mesh)
  w_k_BF = parallel.soft_topk(jax.lax.stop_gradient(pre_BF), k_B, jnp.maximum(alpha, cfg.alpha_k),
                              max_k=cfg.kmax, mesh=mesh)
  return Codes(pre_BF, pre_BF * (w_BF + (w_k_BF - jax.lax.stop_gradient(w_k_BF))), k_B)


def _softsae_state(cfg: SaeConfig):
  """``sae.k_control='integral'``: the controller's budget offset (float32, in latents); else none."""
  return jnp.zeros((), jnp.float32) if cfg.k_control == "integral" else None


def _softsae_update(offset, step, terms: Terms, valid_B, cfg: Config, *, sched: Schedule):
  """The integral controller: offset += rate * (k - mean floor(k-hat)) on the steps between the end of the
  k anneal and the hard phase (k_B is k-hat there), clipped to [-k, k]; k is ``sched.k`` (``sae.k``, or a
  sweep member's own)."""
  if offset is None:
    return None
  t, sae = cfg.train.steps, cfg.sae
  k = sched.k
  start = int(round(cfg.train.k_anneal_frac * t))
  stop = t - int(round(cfg.train.hard_frac * t))
  n = jnp.maximum(valid_B.sum(), 1.0)
  l0 = jnp.sum(jnp.floor(terms.k_B) * valid_B) / n
  new = jnp.clip(offset + sae.k_control_rate * (k - l0), -k, k)
  return jnp.where((step >= start) & (step < stop), new, offset)


def _soft_candidates_on(sae: SaeConfig, mesh) -> bool:
  """Whether SoftSAE's soft phase tries the candidates (``sae.sparse_soft``): with ``sae.sparse_grads`` on,
  on one device (a sweep's vmap would turn its ``lax.cond`` into a select that runs both phases; a
  latent-sharded mesh has its own soft top-k), when the fast path has candidates (k_max + 16 < F), and
  without ``sae.alpha_k`` (whose second soft top-k the dense phase computes)."""
  return (sae.sparse_soft and mesh is None and sae_lib.sparse_grads_on(sae) and sae.alpha_k <= 0
          and topk_lib._candidate_count(sae.kmax, sae.F) is not None)


def _softsae_soft_candidates(params, x_BD, valid_B, alpha, kmax, k_loss, sae: SaeConfig) -> Terms:
  """SoftSAE's soft phase decoded from the soft top-k's M = k_max + 16 candidates per row.

  The encoder's forward stays dense (every pre-activation is a score) and yields the top-M
  candidates (:func:`softsae_jax.sae.encode_top`); the k-estimator is unchanged. When the tail outside
  the candidates takes no part in every row of the batch, the codes exist at the candidates only,
  ``acts_BM = pre_BM * w_BM``, and are decoded by per-slot gathers;
  dW_dec, dW_enc, d b_enc, d b_dec and d x are formed from the B*M candidates (``sparse_decode``'s and
  ``encode_top``'s backwards: B*M*D work instead of three B*F*D matmuls). Otherwise (large alpha,
  early in the anneal) it is the dense soft phase on the same pre-activations. One ``lax.cond`` inside
  the jitted step decides per batch. With ``sae.soft_grad='stop'`` the scores carry no gradient; with
  'faithful' the soft top-k's gradient w.r.t. them reaches the encoder at the candidates.

  "Takes no part": the candidates' weights and their gradients are exact (``exact`` of
  :func:`softsae_jax.topk.soft_topk_candidates`) and each row's tail either weighs below 1e-10 in total
  (weight and density, ``tail_negligible``) or is all zeros: ReLU outputs below a smallest candidate of
  0 (rows with fewer than M positive pre-activations), whose acts are 0 whatever their weights and
  which ReLU passes no gradient; their density still enters dL/dk, through the solve's total.

  ``acts_BF`` (read only by the statistics: fired latents, L0) is pre * the soft top-k's full weights
  from the same solution, without gradient: the dense phase's values, including tail weights that are
  below 1e-10 but not exactly 0, so the dead-latent counter and L0 do not change either.
  """
  num_m = topk_lib._candidate_count(sae.kmax, sae.F)
  pre_BF, top_BM, idx_BM = sae_lib.encode_top(params, x_BD, num_m, sae)
  k_B = estimate_k(params, x_BD, sae, kmax, pre_BF=pre_BF, top_BM=top_BM)
  score = (lambda a: a) if sae.soft_grad == "faithful" else jax.lax.stop_gradient
  cands = topk_lib.soft_topk_candidates(pre_BF, k_B, alpha, max_k=sae.kmax, top=(score(top_BM), idx_BM),
                                        full_weights=True)

  def candidates(_):
    acts_BM = top_BM * cands.w
    dec_BD = sae_lib.sparse_decode(params.w_dec, idx_BM, acts_BM, sparse_grad=True)
    return dec_BD + params.b_dec[None, :], jax.lax.stop_gradient(pre_BF) * cands.full

  def dense(_):
    acts_BF = pre_BF * parallel.soft_topk(score(pre_BF), k_B, alpha, max_k=sae.kmax, mesh=None)
    return decode(params, acts_BF, sae), acts_BF

  # pre >= 0: the tail is all zeros where the smallest candidate is. (A min, not top_BM[:, -1]: slicing
  # the last column of lax.top_k's output made XLA:CPU sort whole rows, a 2.7x slower step.)
  zero_tail_B = jnp.min(top_BM, axis=1) <= 0
  sparse_ok = cands.exact & jnp.all(cands.tail_negligible | zero_tail_B)
  recon_BD, acts_BF = jax.lax.cond(sparse_ok, candidates, dense, None)
  return Terms(recon_BD, acts_BF, pre_BF, k_B, losses.recon_loss(x_BD, recon_BD, valid_B), k_loss(k_B))


def _softsae_terms(params, x_BD, valid_B, sched: Schedule, cfg: Config, mesh) -> Terms:
  sae = cfg.sae
  budget = sched.k_budget if sched.arch_state is None else sched.k_budget + sched.arch_state

  def k_loss(k_B):
    return sae.k_loss_weight * losses.k_budget_loss(k_B, budget, sae.k_loss_beta, valid_B)

  def soft(_):
    if _soft_candidates_on(sae, mesh):
      return _softsae_soft_candidates(params, x_BD, valid_B, sched.alpha, sched.kmax, k_loss, sae)
    codes = _softsae_soft_codes(params, x_BD, sched.alpha, sae, mesh, sched.kmax)
    return _dense_terms(params, x_BD, valid_B, codes.acts_BF, codes.pre_BF, sae, sparsity=k_loss(codes.k_B),
                        k_B=codes.k_B)

  def hard_phase(_):
    pre_BF = pre_acts(params, x_BD, sae)
    k_B = jax.lax.stop_gradient(estimate_k(params, x_BD, sae, sched.kmax, mesh, pre_BF=pre_BF))
    return _sparse_topk_terms(params, x_BD, valid_B, pre_BF, k_B, sae.kmax, mesh, stop=cfg.train.hard_freeze,
                              sparse_grad=sae_lib.sparse_grads_on(sae))

  if parallel.model_shards(mesh) == 1:
    return jax.lax.cond(sched.hard, hard_phase, soft, None)
  # Latent-sharded: both phases hold collectives, and a cond whose two branches both do was seen to
  # deadlock on XLA:CPU (the shards wait in different collectives); evaluate both and select instead.
  return jax.tree.map(lambda h, s: jnp.where(sched.hard, h, s), hard_phase(None), soft(None))


def _softsae_infer(params, arch_state, x_BD, cfg: SaeConfig, mesh):
  del arch_state
  pre_BF = pre_acts(params, x_BD, cfg)
  k_B = estimate_k(params, x_BD, cfg, mesh=mesh, pre_BF=pre_BF)
  return parallel.topk_acts(pre_BF, jnp.floor(k_B), cfg.kmax, mesh), k_B


def _softsae_frozen(sched: Schedule, any_dead, params: Params, cfg: Config):
  """The hard phase with ``train.hard_freeze`` (docs/method.md §3.6): the k-estimator gets no update at
  all, the encoder only on steps where AuxK has dead latents (PyTorch Adam skipping None gradients)."""
  if not cfg.train.hard_freeze:
    return None
  kest, enc = sched.hard, sched.hard & ~any_dead
  return Params(w_enc=enc, b_enc=enc, w_dec=jnp.asarray(False), b_dec=jnp.asarray(False),
                extra=jax.tree.map(lambda _: kest, params.extra))


# ------------------------------------------------------------------------------------- fixed k


def _anneals(cfg: Config) -> bool:
  return cfg.train.k_anneal_baselines and round(cfg.train.k_anneal_frac * cfg.train.steps) > 0


def _phase(sched: Schedule, annealing, final, mesh) -> Terms:
  """``annealing()`` while the k budget is above k (train.k_anneal_baselines), else ``final()``."""
  if parallel.model_shards(mesh) == 1:
    return jax.lax.cond(sched.annealing, lambda _: annealing(), lambda _: final(), None)
  # Both phases hold collectives: evaluate both and select (see _softsae_terms).
  return jax.tree.map(lambda a, f: jnp.where(sched.annealing, a, f), annealing(), final())


def _topk_terms(params, x_BD, valid_B, sched, cfg: Config, mesh) -> Terms:
  k_B = jnp.full(x_BD.shape[:1], sched.k, jnp.float32)
  final = lambda: _topk_final(params, x_BD, valid_B, k_B, cfg.sae.k, cfg.sae, mesh)  # noqa: E731
  if not _anneals(cfg):
    return final()

  def annealing():  # the top-budget codes (budget up to D), decoded densely: only the first steps
    pre_BF = pre_acts(params, x_BD, cfg.sae)
    budget_B = jnp.full(x_BD.shape[:1], sched.k_budget, jnp.float32)
    acts_BF = parallel.topk_acts(pre_BF, budget_B, min(cfg.sae.d_in, cfg.sae.F), mesh)
    return _dense_terms(params, x_BD, valid_B, acts_BF, pre_BF, cfg.sae, k_B=budget_B)

  return _phase(sched, annealing, final, mesh)


def _batch_selection(pre_BF, valid_B, sched, cfg: Config, mesh):
  """BatchTopK's training selection: the k*B largest of the batch (k = the annealed budget while
  train.k_anneal_baselines anneals it).

  Masked rows (``valid_B`` 0, zeroed inputs whose pre-activations ReLU(b_enc - b_dec W_enc) are not 0)
  take no part: their entries are zeroed before the selection and the budget is k per *valid* row, so
  the valid rows get exactly the selection of a batch without the masked ones (with every row valid the
  count is k itself)."""
  share = valid_B.sum() / valid_B.shape[0]
  pre_BF = jnp.where(valid_B[:, None] > 0, pre_BF, 0.0)
  final = lambda: parallel.batch_topk(pre_BF, cfg.sae.k, mesh, count=sched.k * share)  # noqa: E731
  if not _anneals(cfg):
    return final()
  annealing = lambda: parallel.batch_topk(pre_BF, min(cfg.sae.d_in, cfg.sae.F), mesh,  # noqa: E731
                                          count=sched.k_budget * share)
  if parallel.model_shards(mesh) == 1:
    return jax.lax.cond(sched.annealing, lambda _: annealing(), lambda _: final(), None)
  return jnp.where(sched.annealing, annealing(), final())


def _topk_infer(params, arch_state, x_BD, cfg: SaeConfig, mesh):
  k_B = jnp.full(x_BD.shape[:1], float(cfg.k), jnp.float32)
  acts_BF = parallel.topk_acts(pre_acts(params, x_BD, cfg), k_B, cfg.k, mesh)
  return acts_BF, _count(acts_BF)


def _batchtopk_terms(params, x_BD, valid_B, sched, cfg: Config, mesh) -> Terms:
  pre_BF = pre_acts(params, x_BD, cfg.sae)
  return _dense_terms(params, x_BD, valid_B, _batch_selection(pre_BF, valid_B, sched, cfg, mesh), pre_BF, cfg.sae)


def _matryoshka_terms(params, x_BD, valid_B, sched, cfg: Config, mesh) -> Terms:
  pre_BF = pre_acts(params, x_BD, cfg.sae)
  acts_BF = _batch_selection(pre_BF, valid_B, sched, cfg, mesh)
  main, recon_BD = losses.matryoshka_loss(params, x_BD, acts_BF, cfg.sae.group_sizes(), valid_B)
  return Terms(recon_BD, acts_BF, pre_BF, _count(acts_BF), main, jnp.zeros((), jnp.float32))


def _threshold_init(cfg: SaeConfig):
  return jnp.asarray(-1.0, jnp.float32)  # < 0: not yet set


def _threshold_infer(params, threshold, x_BD, cfg: SaeConfig, mesh):
  pre_BF = pre_acts(params, x_BD, cfg)
  acts_BF = jnp.where(pre_BF > threshold, pre_BF, 0.0)
  return acts_BF, _count(acts_BF)


def _threshold_update(threshold, step, terms: Terms, valid_B, cfg: Config, *, sched: Schedule):
  """The inference threshold: the smallest selected activation of each batch, averaged (docs/method.md §4.2).

  A running mean over the first 1/(1-beta) updates, then the EMA: the reference's plain EMA (beta
  0.999 from step 1000) stays biased towards early values in short runs.
  """
  del sched  # the EMA does not depend on the target k
  sae = cfg.sae
  acts_BF = terms.acts_BF
  sel_BF = (acts_BF > 0) & valid_B[:, None]
  min_act = jnp.min(jnp.where(sel_BF, acts_BF, jnp.inf))
  start = int(round(sae.threshold_start_frac * cfg.train.steps))
  n_upd = (step - start).astype(jnp.float32)
  beta = jnp.minimum(sae.threshold_beta, n_upd / (n_upd + 1.0))
  ema = jnp.where(threshold < 0, min_act, beta * threshold + (1 - beta) * min_act)
  return jnp.where((step >= start) & jnp.isfinite(min_act), ema, threshold)


# ------------------------------------------------------------------------------------------ relu


def _relu_terms(params, x_BD, valid_B, sched, cfg: Config, mesh) -> Terms:
  pre_BF = pre_acts(params, x_BD, cfg.sae)
  l1 = losses.l1_penalty(pre_BF, params.w_dec, valid_B)
  return _dense_terms(params, x_BD, valid_B, pre_BF, pre_BF, cfg.sae, sparsity=cfg.sae.l1_coeff * l1)


def _relu_infer(params, arch_state, x_BD, cfg: SaeConfig, mesh):
  acts_BF = pre_acts(params, x_BD, cfg)
  return acts_BF, _count(acts_BF)


# -------------------------------------------------------------------------------------- jumprelu


def _rectangle(u):
  """The rectangle kernel K(u) = 1 for |u| < 1/2, else 0."""
  return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def jumprelu(z_BF: jax.Array, theta_F: jax.Array, bandwidth: float) -> jax.Array:
  """JumpReLU z * H(z - theta) with Rajamanoharan et al.'s straight-through gradients (eq. 11):
  d/dz = H(z - theta); d/dtheta = -(theta / eps) K((z - theta) / eps)."""
  return z_BF * (z_BF > theta_F[None, :])


def _jumprelu_fwd(z_BF, theta_F, bandwidth):
  return jumprelu(z_BF, theta_F, bandwidth), (z_BF, theta_F, bandwidth)


def _jumprelu_bwd(res, g_BF):
  z_BF, theta_F, eps = res
  gate_BF = (z_BF > theta_F[None, :]).astype(g_BF.dtype)
  d_theta_F = -jnp.sum(g_BF * (theta_F[None, :] / eps) * _rectangle((z_BF - theta_F[None, :]) / eps), axis=0)
  return g_BF * gate_BF, d_theta_F, None


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def step_fn(z_BF: jax.Array, theta_F: jax.Array, bandwidth: float) -> jax.Array:
  """Heaviside H(z - theta) with the straight-through gradients of Rajamanoharan et al. (eq. 12):
  d/dz = 0; d/dtheta = -(1 / eps) K((z - theta) / eps). Summed over latents it is the L0 norm."""
  return (z_BF > theta_F[None, :]).astype(z_BF.dtype)


def _step_fwd(z_BF, theta_F, bandwidth):
  return step_fn(z_BF, theta_F, bandwidth), (z_BF, theta_F, bandwidth)


def _step_bwd(res, g_BF):
  z_BF, theta_F, eps = res
  d_theta_F = -jnp.sum(g_BF * _rectangle((z_BF - theta_F[None, :]) / eps) / eps, axis=0)
  return jnp.zeros_like(z_BF), d_theta_F, None


step_fn.defvjp(_step_fwd, _step_bwd)


def _jumprelu_init(keys, w_enc_DF, cfg: SaeConfig) -> JumpThreshold:
  del keys, w_enc_DF
  return JumpThreshold(threshold=jnp.full((cfg.F,), cfg.jumprelu_init_threshold, jnp.float32))


def _jumprelu_terms(params, x_BD, valid_B, sched: Schedule, cfg: Config, mesh) -> Terms:
  sae = cfg.sae
  theta_F = params.extra.threshold
  pre_BF = pre_acts(params, x_BD, sae)
  acts_BF = jumprelu(pre_BF, theta_F, sae.jumprelu_bandwidth)
  l0_B = step_fn(pre_BF, theta_F, sae.jumprelu_bandwidth).sum(axis=1)
  l0 = jnp.sum(l0_B * valid_B) / jnp.maximum(valid_B.sum(), 1.0)
  return _dense_terms(params, x_BD, valid_B, acts_BF, pre_BF, sae, sparsity=sched.l0_coeff * l0)


def _jumprelu_infer(params, arch_state, x_BD, cfg: SaeConfig, mesh):
  pre_BF = pre_acts(params, x_BD, cfg)
  acts_BF = jnp.where(pre_BF > params.extra.threshold[None, :], pre_BF, 0.0)
  return acts_BF, _count(acts_BF)


# ---------------------------------------------------------------------------------------- table


ARCHS: dict[str, Arch] = {
    "softsae": Arch(_softsae_init, _softsae_state, _softsae_terms, _softsae_infer, _softsae_update, _softsae_frozen),
    "topk": Arch(_none, _none, _topk_terms, _topk_infer, _keep_state, _none),
    "batchtopk": Arch(_none, _threshold_init, _batchtopk_terms, _threshold_infer, _threshold_update, _none),
    "matryoshka": Arch(_none, _threshold_init, _matryoshka_terms, _threshold_infer, _threshold_update, _none),
    "relu": Arch(_none, _none, _relu_terms, _relu_infer, _keep_state, _none),
    "jumprelu": Arch(_jumprelu_init, _none, _jumprelu_terms, _jumprelu_infer, _keep_state, _none),
}
if set(ARCHS) != set(config_lib.ARCHS):
  raise ImportError(f"archs.ARCHS {tuple(ARCHS)} and config.ARCHS {config_lib.ARCHS} differ")


def get(name: str) -> Arch:
  """The table entry of an architecture (names are checked by ``SaeConfig``)."""
  return ARCHS[name]


# ---------------------------------------------------------------------------------- public API


def init_params(key: jax.Array, cfg: SaeConfig) -> Params:
  """Initial parameters of ``cfg.arch``: the shared four (docs/method.md §2.1) and the arch's own ``extra``.

  Examples:
    >>> cfg = SaeConfig(arch="softsae", d_in=8, n_latents=32, k=4)
    >>> p = init_params(jax.random.key(0), cfg)
    >>> p.w_dec.shape, p.w_enc.shape, p.extra.w_k1.shape  # the top_acts estimator: [k_max + 16, k_hidden]
    ((32, 8), (8, 32), (24, 128))
    >>> init_params(jax.random.key(0), SaeConfig(arch="topk", d_in=8, n_latents=32, k=4)).extra is None
    True
  """
  k_core, *k_extra = jax.random.split(key, 3)
  params = init_core(k_core, cfg)
  return params._replace(extra=get(cfg.arch).init_extra(k_extra, params.w_enc, cfg))


def init_arch_state(cfg: SaeConfig):
  """The arch's initial non-trained state (``TrainState.arch_state``)."""
  return get(cfg.arch).init_state(cfg)


def encode(params: Params, x_BD: jax.Array, cfg: SaeConfig, *, train: bool = False,
           alpha: jax.Array | float | None = None, arch_state: Any = None, mesh=None) -> Codes:
  """Encodes normalised rows.

  Args:
    params: SAE parameters.
    x_BD: [B, D] normalised inputs.
    cfg: the SAE config (static).
    train: training-mode selection (SoftSAE: soft top-k with ``alpha``; BatchTopK/Matryoshka: batch
      top-k); False is the inference rule (SoftSAE: hard top-floor(k-hat); BatchTopK/Matryoshka: the
      ``arch_state`` threshold; JumpReLU: its per-latent threshold).
    alpha: soft top-k Laplace scale, required for ``softsae`` with ``train=True``.
    arch_state: the arch's trained state (``TrainState.arch_state``): BatchTopK/Matryoshka's threshold.
    mesh: a mesh whose 'model' axis splits the latents (selections then run shard-local), or None.

  Returns:
    Codes(pre_BF, acts_BF, k_B): ``k_B`` is k-hat for SoftSAE, the per-row count of active latents
    otherwise.

  Examples:
    >>> cfg = SaeConfig(arch="topk", d_in=8, n_latents=32, k=4)
    >>> p = init_params(jax.random.key(0), cfg)
    >>> c = encode(p, jnp.ones((2, 8)), cfg)
    >>> int((c.acts_BF > 0).sum(axis=1).max()) <= 4
    True
  """
  if x_BD.ndim != 2 or x_BD.shape[1] != cfg.d_in:
    raise ValueError(f"x_BD must be [B, D={cfg.d_in}], got {x_BD.shape}")
  if not train:
    if cfg.arch in ("batchtopk", "matryoshka") and arch_state is None:
      raise ValueError(f"Expected an inference threshold (arch_state) for {cfg.arch}, got None")
    acts_BF, k_B = get(cfg.arch).infer(params, arch_state, x_BD, cfg, mesh)
    return Codes(pre_acts(params, x_BD, cfg), acts_BF, k_B)
  if cfg.arch == "softsae":
    if alpha is None:
      raise ValueError("Expected alpha for softsae training-mode encode, got None")
    return _softsae_soft_codes(params, x_BD, alpha, cfg, mesh)
  full = Config(sae=cfg, train=config_lib.TrainConfig(steps=1))  # train_terms reads cfg.train only in
  # SoftSAE's hard phase, which this never enters
  sched = Schedule(jnp.float32(cfg.k), jnp.float32(cfg.alpha), jnp.asarray(False), jnp.float32(cfg.l0_coeff),
                   jnp.float32(cfg.k), jnp.float32(cfg.kmax), jnp.asarray(False))
  terms = get(cfg.arch).train_terms(params, x_BD, jnp.ones(x_BD.shape[:1], jnp.float32), sched, full, mesh)
  return Codes(terms.pre_BF, terms.acts_BF, terms.k_B)


def forward(params: Params, x_BD: jax.Array, cfg: SaeConfig, **kw) -> tuple[jax.Array, Codes]:
  """encode then decode; keyword arguments go to :func:`encode`."""
  codes = encode(params, x_BD, cfg, **kw)
  return decode(params, codes.acts_BF, cfg), codes
