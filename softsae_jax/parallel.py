"""Latent parallelism: every selection of the step as a ``jax.shard_map`` island over the 'model' axis.

With ``mesh.model > 1`` the latent dimension F of every state leaf is split over the 'model' axis
(:mod:`softsae_jax.sharding`), and GSPMD partitions the matmuls, the decoder's partial sums and the
optimizer by itself. It does not partition ``lax.top_k``: left alone it all-gathers whole [B, F]
rows for every selection. The functions here replace each selection by a shard-local computation
that moves only per-row candidates and [B]-sized sums between the shards:

* :func:`topk_decode` (TopK, SoftSAE's hard phase and inference, AuxK): each shard takes its local
  top-K values, the values alone are all-gathered ([B, S*K]), the global top-K positions are found
  (ties broken as one ``lax.top_k`` over the whole row would: lower index first), each shard keeps
  its own winners and decodes them against its own decoder rows, and the [B, D] partial
  reconstructions are summed over 'model'.
* :func:`soft_topk` (SoftSAE's soft phase): per-shard top-M candidates, all-gathered values, the
  global top-M, one psum'd tail log-sum-exp per row, then the unchanged threshold solve of
  :mod:`softsae_jax.topk`; the backward needs two psum'd [B] sums. Rows whose threshold lies below the
  candidates (near-ties at the boundary, k above max_k) fall back to a bisection on the threshold with
  psum'd weight sums: never a row gather.
* :func:`batch_topk` (BatchTopK, Matryoshka): per-shard top-(k*B) values gathered over the whole mesh
  give the global (k*B)-th value, which each shard applies as a threshold (exact up to ties at it).

Every ``lax.cond`` whose branches hold collectives takes a predicate reduced over the whole mesh,
so all shards take the same branch. With ``mesh`` None every function is the single-device one; any
mesh of more than one device runs the islands, even with ``mesh.model == 1``: left to GSPMD, the
selections of a batch-sharded step were seen to all-gather whole [B, F] blocks too. References: EleutherAI/sparsify ``latent_parallel.py`` and openai/sparse_autoencoder
``sharded_topk`` do the hard case in PyTorch; neither has a soft top-k across shards.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from softsae_jax import topk as topk_lib
from softsae_jax.sae import scatter_codes, sparse_decode, topk_sparse

ROWS = P("data", "model")  # [B, F]
ROW = P("data")  # [B]
ATOMS = P("model", None)  # [F, D]
DEC = P("data", None)  # [B, D]


class _Members:
  """The type of :data:`MEMBERS`."""

  def __repr__(self):
    return "parallel.MEMBERS"


MEMBERS = _Members()
"""Passed as ``mesh`` inside a sweep's ``jax.vmap`` over members (:func:`softsae_jax.train.sweep_train_step`):
every selection is the single-device one, and the soft top-k folds the member axis into its rows
(a plain vmap would turn its ``lax.cond``s into ``select``s that always run the full-sort path)."""


def _local(mesh) -> bool:
  return mesh is None or mesh is MEMBERS


def model_shards(mesh: Mesh | None) -> int:
  """How many shards F is split into (1 without a mesh)."""
  return 1 if _local(mesh) else int(mesh.shape["model"])


def _row_sum(a_bf):
  return lax.psum(jnp.sum(a_bf, axis=1), "model")


def _row_max(a_bf):
  return lax.pmax(jnp.max(a_bf, axis=1), "model")


def _any_on_mesh(flag) -> jax.Array:
  """True on every shard when ``flag`` holds anywhere (a cond predicate all shards agree on)."""
  return lax.pmax(jnp.any(flag).astype(jnp.int32), ("data", "model")) > 0


# -------------------------------------------------------------------------------------- hard top-k


def topk_decode(pre_BF, count_B, max_k: int, w_dec_FD, mesh: Mesh | None, *, stop: bool = False,
                dense_decode: bool = False, sparse_grad: bool = False):
  """The ``floor(count_B)`` largest entries of each row, decoded: ``(dec_BD, acts_BF)``.

  ``dec_BD`` is ``acts_BF @ w_dec_FD`` (no ``b_dec``); ``acts_BF`` holds the kept entries (zero
  elsewhere; non-finite kept values, e.g. AuxK's masked ``-inf``, count as zero). ``stop`` stops the
  gradient through the kept values; ``dense_decode`` decodes by one dense matmul of the scattered
  codes instead of the per-slot gather (AuxK's large K); ``sparse_grad``: dW_dec of the per-slot
  decode by scatter-adds (:func:`softsae_jax.sae.sparse_decode`). Differentiable in ``pre_BF`` and
  ``w_dec_FD``.
  """
  if _local(mesh):
    vals_BK, idx_BK = topk_sparse(pre_BF, count_B, max_k)
    return decode_kept(vals_BK, idx_BK, w_dec_FD, pre_BF.shape[1], stop=stop, dense_decode=dense_decode,
                       sparse_grad=sparse_grad)
  fn = functools.partial(_topk_decode_shard, max_k=max_k, stop=stop, dense_decode=dense_decode,
                         sparse_grad=sparse_grad, shards=model_shards(mesh))
  return jax.shard_map(fn, mesh=mesh, in_specs=(ROWS, ROW, ATOMS), out_specs=(DEC, ROWS),
                       check_vma=False)(pre_BF, count_B, w_dec_FD)


def topk_acts(pre_BF, count_B, max_k: int, mesh: Mesh | None):
  """``hard_topk``: the ``floor(count_B)`` largest entries of each row, zero elsewhere (inference)."""
  if _local(mesh):
    return topk_lib.hard_topk(pre_BF, count_B, max_k=max_k)
  fn = functools.partial(_topk_acts_shard, max_k=max_k, shards=model_shards(mesh))
  return jax.shard_map(fn, mesh=mesh, in_specs=(ROWS, ROW), out_specs=ROWS, check_vma=False)(pre_BF, count_B)


def top_values(pre_BF, m: int, mesh: Mesh | None):
  """The ``m`` largest entries of each row, sorted in decreasing order, [B, m] (no gradient): on a
  latent-sharded mesh from each shard's own top ``m`` (an all-gather of [b, S*m], never of [b, F])."""
  pre_BF = lax.stop_gradient(pre_BF)
  if _local(mesh):
    return topk_lib.top_k(pre_BF, m)[0]

  def shard(pre_bf):
    local_bK = lax.top_k(pre_bf, min(m, pre_bf.shape[1]))[0]
    return lax.top_k(lax.all_gather(local_bK, "model", axis=1, tiled=True), m)[0]

  return jax.shard_map(shard, mesh=mesh, in_specs=ROWS, out_specs=P("data", None), check_vma=False)(pre_BF)


def decode_kept(vals_BK, idx_BK, w_dec_FD, num_f: int, *, stop: bool = False, dense_decode: bool = False,
                sparse_grad: bool = False):
  """One device's decode of selected entries (vals_BK, idx_BK): ``(dec_BD, acts_BF)`` as :func:`topk_decode`."""
  vals_BK = jnp.where(jnp.isfinite(vals_BK), vals_BK, 0.0)
  if stop:
    vals_BK = lax.stop_gradient(vals_BK)
  acts_BF = scatter_codes(vals_BK, idx_BK, num_f)
  if dense_decode:
    return acts_BF @ w_dec_FD, acts_BF
  return sparse_decode(w_dec_FD, idx_BK, vals_BK, sparse_grad=sparse_grad), acts_BF


def _local_winners(pre_bf, count_b, max_k, shards):
  """This shard's entries among each row's global top-floor(count): (vals_bK, idx_bK), losers zeroed.

  The all-gathered local top-K lists are shard-major, i.e. in global column order, and each is sorted
  by value with ties in column order, so one ``lax.top_k`` over them ranks equal values by column,
  exactly as ``lax.top_k`` over the whole row does.
  """
  num_b, f_local = pre_bf.shape
  k_local = min(max_k, f_local)
  vals_bK, idx_bK = lax.top_k(pre_bf, k_local)
  gathered = lax.all_gather(lax.stop_gradient(vals_bK), "model", axis=1, tiled=True)  # [b, S*K]
  _, pos_bM = lax.top_k(gathered, max_k)
  keep_bM = jnp.arange(max_k)[None, :] < jnp.floor(count_b)[:, None]
  rows_bM = jnp.broadcast_to(jnp.arange(num_b)[:, None], pos_bM.shape)
  won = jnp.zeros(gathered.shape, bool).at[rows_bM, pos_bM].set(keep_bM, unique_indices=True)
  mine_bK = lax.dynamic_slice_in_dim(won, lax.axis_index("model") * k_local, k_local, axis=1)
  return jnp.where(mine_bK, vals_bK, 0.0), idx_bK


def _topk_decode_shard(pre_bf, count_b, w_dec_fD, *, max_k, stop, dense_decode, sparse_grad, shards):
  vals_bK, idx_bK = _local_winners(pre_bf, count_b, max_k, shards)
  dec_bD, acts_bf = decode_kept(vals_bK, idx_bK, w_dec_fD, pre_bf.shape[1], stop=stop, dense_decode=dense_decode,
                                sparse_grad=sparse_grad)
  return lax.psum(dec_bD, "model"), acts_bf


def _topk_acts_shard(pre_bf, count_b, *, max_k, shards):
  vals_bK, idx_bK = _local_winners(pre_bf, count_b, max_k, shards)
  return scatter_codes(vals_bK, idx_bK, pre_bf.shape[1])


# ------------------------------------------------------------------------------------- batch top-k


def batch_topk(pre_BF, k: int, mesh: Mesh | None, *, count: jax.Array | None = None):
  """Keeps the k*B largest entries of the whole batch, zeros elsewhere (BatchTopK's training rule).

  ``count``: a traced k <= ``k`` (a sweep member's own k, an annealed budget, or k per valid row): the
  round(count*B) largest are kept; ``k`` stays the static bound.

  Sharded: the global (count*B)-th value becomes a threshold each shard applies; entries tied with it
  are all kept (a measure-zero difference from the single-device ``lax.top_k`` order).
  """
  from softsae_jax.sae import batch_topk as batch_topk_local

  if _local(mesh):
    return batch_topk_local(pre_BF, k, count)
  rows = pre_BF.shape[0]
  total = k * rows
  count = jnp.asarray(k if count is None else count, jnp.float32)

  def shard(pre_bf, count):
    cap = min(total, pre_bf.size)
    vals, _ = lax.top_k(lax.stop_gradient(pre_bf).reshape(-1), cap)
    gathered = lax.all_gather(vals, ("data", "model"), tiled=True)
    top = lax.top_k(gathered, min(total, gathered.shape[0]))[0]
    thr = top[jnp.clip(jnp.round(count * rows).astype(jnp.int32) - 1, 0, top.shape[0] - 1)]
    return jnp.where(pre_bf >= thr, pre_bf, 0.0)

  return jax.shard_map(shard, mesh=mesh, in_specs=(ROWS, P()), out_specs=ROWS, check_vma=False)(pre_BF, count)


# -------------------------------------------------------------------------------------- soft top-k


def soft_topk(x_BF, k_B, alpha, *, max_k: int, mesh: Mesh | None):
  """LapSum soft top-k (:func:`softsae_jax.topk.soft_topk`) of float32 rows [B, F] with k_B [B]."""
  if mesh is None:
    return topk_lib.soft_topk(x_BF, k_B, alpha, max_k=max_k)
  if mesh is MEMBERS:
    return _members_soft_topk(max_k)(x_BF, k_B, jnp.asarray(alpha, x_BF.dtype))
  num_m = topk_lib._candidate_count(max_k, x_BF.shape[1])
  if num_m is None:
    raise ValueError(f"the sharded soft top-k needs max_k + 16 < F; got max_k={max_k}, F={x_BF.shape[1]}")
  return _sharded_soft_topk(mesh, num_m)(x_BF, k_B, jnp.asarray(alpha, x_BF.dtype))


@functools.lru_cache(maxsize=None)
def _members_soft_topk(max_k: int):
  """``topk.soft_topk`` whose vmap over sweep members folds the members into rows ([S, B, F] -> [S*B, F]).

  Only ever called under that vmap: a ``custom_vmap`` function is differentiable through ``grad(vmap(f))``
  (the sweep's gradient is taken outside the vmap) but not by itself.
  """

  @jax.custom_batching.custom_vmap
  def op(x_BF, k_B, alpha):
    return topk_lib.soft_topk(x_BF, k_B, alpha, max_k=max_k)

  @op.def_vmap
  def _rule(axis_size, in_batched, x_BF, k_B, alpha):
    x_batched, k_batched, alpha_batched = in_batched
    if alpha_batched:
      raise ValueError("sweep members share alpha (the schedule depends on the step only)")
    x_SBF = x_BF if x_batched else jnp.broadcast_to(x_BF, (axis_size, *x_BF.shape))
    k_SB = k_B if k_batched else jnp.broadcast_to(k_B, (axis_size, *k_B.shape))
    w = topk_lib.soft_topk(x_SBF.reshape(-1, x_SBF.shape[-1]), k_SB.reshape(-1), alpha, max_k=max_k)
    return w.reshape(x_SBF.shape), True

  return op


_SOL_SPECS = topk_lib._Solution(*([ROW] * len(topk_lib._Solution._fields)))


@functools.lru_cache(maxsize=None)
def _sharded_soft_topk(mesh: Mesh, num_m: int):

  @jax.custom_vjp
  def op(x_BF, k_B, alpha):
    return fwd(x_BF, k_B, alpha)[0]

  def fwd(x_BF, k_B, alpha):
    shard = functools.partial(_soft_fwd_shard, num_m=num_m, shards=model_shards(mesh))
    w_BF, sol = jax.shard_map(shard, mesh=mesh, in_specs=(ROWS, ROW, P()), out_specs=(ROWS, _SOL_SPECS),
                              check_vma=False)(x_BF, k_B, alpha)
    return w_BF, (x_BF, sol, alpha)

  def bwd(res, v_BF):
    x_BF, sol, alpha = res
    shard = functools.partial(_soft_bwd_shard, shards=model_shards(mesh))
    return jax.shard_map(shard, mesh=mesh, in_specs=(ROWS, _SOL_SPECS, P(), ROWS), out_specs=(ROWS, ROW, P()),
                         check_vma=False)(x_BF, sol, alpha, v_BF)

  op.defvjp(fwd, bwd)
  return op


def _soft_fwd_shard(x_bf, k_b, alpha, *, num_m, shards):
  dtype = x_bf.dtype
  num_f = x_bf.shape[1] * shards
  inv_a = topk_lib._inv_alpha(alpha, dtype)
  bound, _ = topk_lib._finite_bounds(dtype)
  local, _ = lax.top_k(x_bf, min(num_m, x_bf.shape[1]))
  raw_bM, _ = lax.top_k(lax.all_gather(local, "model", axis=1, tiled=True), num_m)  # NaN sorts first
  n_pos_b = jnp.sum(raw_bM == jnp.inf, axis=1, dtype=dtype)
  n_live_b = jnp.sum(raw_bM > -jnp.inf, axis=1, dtype=dtype)
  cand_bM = jnp.clip(raw_bM, -bound, bound)
  # The tail: every candidate above -inf contributes exactly 1 to the sum, every other entry
  # exp((x - s_M)/a) <= 1 (the single-device path's tail pass, psum'd over the shards).
  below_b = _row_sum(jnp.exp(jnp.minimum(x_bf - cand_bM[:, -1:], 0.0) * inv_a))
  tail_lse_b = jnp.log(jnp.maximum(below_b - n_live_b, 0.0))
  nan_b = jnp.any(jnp.isnan(raw_bM), axis=1) | jnp.isnan(below_b)
  anchor_b, beta_b, tmin_b, rel_sum_b, _, outside_b = topk_lib._solve_threshold(
      cand_bM, tail_lse_b, k_b, inv_a, complete=False)
  zero_b, one_b = jnp.zeros_like(k_b), jnp.ones_like(k_b)
  fast = topk_lib._Solution(anchor_b, beta_b, tmin_b, rel_sum_b, jnp.zeros(k_b.shape, jnp.int32), zero_b, one_b,
                            ~nan_b)
  interior_b = (k_b > 0) & (k_b < num_f) & ~nan_b
  hard_b = (outside_b | (k_b <= n_pos_b) | (k_b > n_live_b)) & interior_b
  sol = lax.cond(_any_on_mesh(hard_b), lambda: _bisect_solution(x_bf, k_b, inv_a, fast, hard_b), lambda: fast)
  sol = topk_lib._finish_solution(sol, k_b, alpha, num_f)
  return topk_lib._weights(x_bf, sol, inv_a), sol


def _laplace_cdf(t):
  e = jnp.exp(-jnp.abs(t))
  return jnp.where(t > 0, 1.0 - 0.5 * e, 0.5 * e)


def _bisect_solution(x_bf, k_b, inv_a, fast, rows_b, iters: int = 80):
  """The threshold of ``rows_b`` by bisection with psum'd weight sums (the rows the candidates cannot
  solve): first on b itself, then, for precision, on beta = (b - anchor)/a with ``anchor`` the entry
  nearest to b, so that t = (x - anchor)/a - beta keeps float32 resolution where the weights are
  not 0 or 1."""
  dtype = x_bf.dtype
  bound, _ = topk_lib._finite_bounds(dtype)
  x_c = jnp.clip(x_bf, -bound, bound)
  a = 1.0 / inv_a
  lo = -_row_max(-x_c) - 50.0 * a
  hi = _row_max(x_c) + 50.0 * a

  def bisect(weight_sum, lo, hi):
    def body(_, lohi):
      lo, hi = lohi
      mid = 0.5 * (lo + hi)
      above = weight_sum(mid) > k_b  # the threshold is higher
      return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    return lax.fori_loop(0, iters, body, (lo, hi))

  lo, hi = bisect(lambda b: _row_sum(_laplace_cdf((x_c - b[:, None]) * inv_a)), lo, hi)
  b = 0.5 * (lo + hi)
  dist_bf = jnp.abs(x_c - b[:, None])
  nearest_b = -_row_max(-dist_bf)
  anchor = _row_max(jnp.where(dist_bf == nearest_b[:, None], x_c, -bound))
  rel_bf = (x_c - anchor[:, None]) * inv_a
  blo, bhi = bisect(lambda beta: _row_sum(_laplace_cdf(rel_bf - beta[:, None])),
                    (lo - anchor) * inv_a - 4.0, (hi - anchor) * inv_a + 4.0)
  beta = 0.5 * (blo + bhi)
  abs_t = jnp.abs(rel_bf - beta[:, None])
  tmin = -_row_max(-abs_t)
  rel_sum = _row_sum(jnp.exp(tmin[:, None] - abs_t))
  bis = fast._replace(anchor_B=anchor, beta_B=beta, tmin_B=tmin, rel_sum_B=rel_sum)
  return jax.tree.map(lambda f, s: jnp.where(rows_b, s, f), fast, bis)


def _soft_bwd_shard(x_bf, sol, alpha, v_bf, *, shards):
  inv_a = topk_lib._inv_alpha(alpha, x_bf.dtype)
  # v at a densest entry of the row (the accuracy pivot of topk._vjp_dense): the lowest shard holding
  # the row's smallest |t| contributes its value.
  abs_t = jnp.abs(topk_lib._laplace_t(x_bf, sol.anchor_B, sol.beta_B, jnp.broadcast_to(inv_a, sol.beta_B.shape)))
  local_min = jnp.min(abs_t, axis=1)
  v_local = jnp.take_along_axis(v_bf, jnp.argmin(abs_t, axis=1)[:, None], axis=1)[:, 0]
  me = lax.axis_index("model")
  owner = -lax.pmax(-jnp.where(local_min == -lax.pmax(-local_min, "model"), me, shards), "model")
  v_pivot = lax.psum(jnp.where(me == owner, v_local, 0.0), "model")
  dx_bf, slope_b, da = topk_lib._vjp_dense(x_bf, v_bf, sol, inv_a, topk_lib._log_scale(sol, inv_a), v_pivot,
                                           row_sum=_row_sum)
  dk_b = jnp.where(sol.grad_on_B | jnp.isnan(sol.scale_B), slope_b, 0.0)
  return dx_bf, dk_b, lax.psum(da, ("data", "model"))
