"""Loss terms and batch metrics (float32). Every reduction takes a row weight ``valid_B`` (1 for a
row that counts, 0 for a masked non-finite row) so shapes stay static under jit.

References: docs/method.md §3.1 (loss), §3.2 (AuxK, from Gao et al. arXiv 2406.04093), §5.1 (FVU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from softsae_jax.types import Params


def _n(valid_B):
  return jnp.maximum(valid_B.sum(), 1.0)


def recon_loss(x_BD, recon_BD, valid_B):
  """mean_b ||x_b - recon_b||^2 (summed over D, averaged over valid rows), docs/method.md §3.1."""
  e2_B = jnp.sum(jnp.square(x_BD - recon_BD), axis=1)
  return jnp.sum(e2_B * valid_B) / _n(valid_B)


def fvu(x_BD, recon_BD, valid_B):
  """Fraction of variance unexplained: sum ||x - recon||^2 / sum ||x - mean_b x||^2."""
  n = _n(valid_B)
  mean_D = jnp.sum(x_BD * valid_B[:, None], axis=0) / n
  tot = jnp.sum(jnp.square(x_BD - mean_D[None, :]) * valid_B[:, None])
  err = jnp.sum(jnp.square(x_BD - recon_BD) * valid_B[:, None])
  return err / jnp.maximum(tot, 1e-30)


def k_budget_loss(k_B, budget, beta, valid_B):
  """softplus_beta(mean_b k_b - budget) = log(1 + exp(beta * delta)) / beta, docs/method.md §3.1."""
  delta = jnp.sum(k_B * valid_B) / _n(valid_B) - budget
  return jax.nn.softplus(beta * delta) / beta


def auxk_loss(params: Params, pre_BF, err_BD, dead_F, k_aux: int, valid_B, mesh=None, run=None, *, x_BD=None,
              compute_dtype="float32"):
  """AuxK: reconstruct the residual from the k_aux largest activations of dead latents.

  ``pre_BF`` are post-ReLU activations before top-k; ``err_BD`` the residual x - recon (its
  gradient is stopped here). k_aux is static; when fewer latents are dead, only the first
  ``n_dead`` ranks count (a mask, not a shape). Normalised by the residual's total variance;
  0 when nothing is dead (and then not computed at all), NaN mapped to 0 (docs/method.md §3.2).
  With a mesh splitting the latents the selection is shard-local (:mod:`softsae_jax.parallel`).
  ``run``: the predicate of the "compute at all" ``cond`` when given (a sweep passes "any member has
  dead latents", unbatched, so the vmap over members keeps the ``cond``); the result is still 0 for a
  member with nothing dead.

  ``x_BD`` (the normalised batch ``pre_BF`` was computed from; one device, not a sweep): on steps with
  at most k_aux dead latents (in training runs, most steps that have any) every row's selection is
  the set of dead latents itself, so the same loss is computed from those columns alone
  (:func:`_auxk_few`): their pre-activations recomputed by a [B, D] x [D, k_aux] matmul and decoded
  by a [B, k_aux] x [k_aux, D] one, with gradients to the same parameters, instead of a selection over
  all F latents, a dense decode and a dense [B, F] gradient into the encoder (about 5 [B, D] x [D, F]
  matmuls; docs/benchmarks.md); with at most 64 dead, from 64 columns. More dead latents take the full path.
  """
  from softsae_jax import parallel

  err_BD = jax.lax.stop_gradient(err_BD)
  n_dead = dead_F.sum()

  def compute(_):
    masked_BF = jnp.where(dead_F[None, :], pre_BF, -jnp.inf)
    count_B = jnp.full(pre_BF.shape[:1], jnp.minimum(n_dead, k_aux), jnp.float32)
    # Decoded dense (scatter, then one matmul): k_aux is D/2, so gathering k_aux decoder rows per
    # row would materialise B*k_aux*D floats.
    aux_BD, _ = parallel.topk_decode(masked_BF, count_B, k_aux, params.w_dec, mesh, dense_decode=True)
    return _auxk_ratio(err_BD, aux_BD, valid_B, n_dead)

  zero = lambda _: jnp.zeros((), jnp.float32)  # noqa: E731
  if x_BD is None or mesh is not None or run is not None:
    return jax.lax.cond(n_dead > 0 if run is None else run, compute, zero, None)
  k_aux = min(k_aux, dead_F.shape[0])
  # Column widths: a narrow one for the few dead latents of most steps (0.13% of the latents, a median
  # over the MiniLM runs' steps), then k_aux.
  widths = tuple(sorted({min(_AUXK_NARROW, k_aux), k_aux}))
  branches = [zero] + [functools.partial(_auxk_few, params, x_BD, err_BD, dead_F, n_dead, w, valid_B, compute_dtype)
                       for w in widths] + [compute]
  branch = (n_dead > 0).astype(jnp.int32) + sum((n_dead > w).astype(jnp.int32) for w in widths)
  return jax.lax.switch(branch, branches, None)


_AUXK_NARROW = 64  # the narrow width of AuxK's dead columns (auxk_loss)


def _auxk_few(params: Params, x_BD, err_BD, dead_F, n_dead, a: int, valid_B, compute_dtype, _=None):
  """AuxK when at most ``a`` <= k_aux latents are dead: each row's k_aux largest dead activations are
  all of the dead latents (a ReLU zero among them decodes to nothing, as in the full selection)."""
  from softsae_jax.sae import affine

  cols_A = jnp.nonzero(dead_F, size=a, fill_value=0)[0]  # the dead latents, ascending; then padding
  live_A = jnp.arange(a) < n_dead
  pre_BA = jax.nn.relu(affine(x_BD, params.b_dec, jnp.take(params.w_enc, cols_A, axis=1),
                              jnp.take(params.b_enc, cols_A), compute_dtype))
  acts_BA = jnp.where(live_A[None, :], pre_BA, 0.0)
  aux_BD = acts_BA @ jnp.take(params.w_dec, cols_A, axis=0).astype(jnp.float32)
  return _auxk_ratio(err_BD, aux_BD, valid_B, n_dead)


def _auxk_ratio(err_BD, aux_BD, valid_B, n_dead):
  """||err - aux||^2 over the residual's total variance (valid rows), 0 where not finite or nothing is dead."""
  n = _n(valid_B)
  num = jnp.sum(jnp.sum(jnp.square(err_BD - aux_BD), axis=1) * valid_B) / n
  mean_D = jnp.sum(err_BD * valid_B[:, None], axis=0) / n
  den = jnp.sum(jnp.sum(jnp.square(err_BD - mean_D[None, :]), axis=1) * valid_B) / n
  out = num / den
  return jnp.where(jnp.isfinite(out) & (n_dead > 0), out, 0.0)


def l1_penalty(acts_BF, w_dec_FD, valid_B):
  """mean_b sum_j |f_bj| * ||w_dec_j|| (the decoder-norm-weighted L1; norms are 1 after projection)."""
  norms_F = jnp.linalg.norm(w_dec_FD, axis=1)
  return jnp.sum(jnp.sum(jnp.abs(acts_BF) * norms_F[None, :], axis=1) * valid_B) / _n(valid_B)


def matryoshka_loss(params: Params, x_BD, acts_BF, group_sizes: tuple[int, ...], valid_B):
  """Mean over nested prefixes g of ||x - (b_dec + sum_{g' <= g} W_dec,g' f_g')||^2 (docs/method.md §4.3).

  The reference divides by the number of groups twice (weights 1/G, then a mean; docs/method.md §4.3),
  which only shrinks the reconstruction relative to AuxK; we divide once. Returns
  (loss, full reconstruction).
  """
  partial = []
  lo = 0
  for size in group_sizes:
    partial.append(acts_BF[:, lo:lo + size] @ params.w_dec[lo:lo + size])
    lo += size
  cum_GBD = jnp.cumsum(jnp.stack(partial), axis=0) + params.b_dec[None, None, :]
  e2_GB = jnp.sum(jnp.square(x_BD[None] - cum_GBD), axis=2)
  loss = jnp.mean(jnp.sum(e2_GB * valid_B[None, :], axis=1) / _n(valid_B))
  return loss, cum_GBD[-1]


def l0(acts_BF, valid_B):
  """Mean number of nonzero latents per valid row."""
  return jnp.sum((acts_BF != 0).sum(axis=1) * valid_B) / _n(valid_B)
