"""Hard and soft (LapSum) top-k selection over the last axis.

Dimension key: ``B`` rows (all leading dims of the input flattened), ``F`` entries per row (latents),
``M`` candidates per row on the fast path (``lax.top_k``), ``K`` the static ``max_k`` bound.

The soft operator is LapSum (Struski, Bednarczyk, Podolak, Tabor, "LapSum -- One Method to
Differentiate Them All: Ranking, Sorting and Top-k Selection", ICML 2025, arXiv 2503.06242) as used by
SoftSAE (Stępień, Mazur, Tabor, Spurek, arXiv 2605.06610). With ``L`` the standard Laplace CDF and
``a > 0`` the scale, each row gets the weights ``w_j = L((x_j - b) / a)`` with the scalar threshold ``b``
solved exactly so that ``sum_j w_j = k``.

How the threshold is solved (``_solve_threshold``). Sort the relevant entries of a row descending,
``s_1 >= ... >= s_M``; with the gaps ``d_m = s_m - s_{m+1}`` and ``E_m = exp(-d_m / a) <= 1`` the head
and tail sums

    U_m = sum_{i <= m} exp(-(s_i - s_m) / a),   V_m = sum_{i >= m} exp(-(s_m - s_i) / a)

follow the affine recursions ``U_{m+1} = 1 + E_m U_m`` and ``V_m = 1 + E_m V_{m+1}`` (every multiplier
<= 1, so a scan is stable; ``logcumsumexp(-s/a) - s_m/a`` is not, at a = 1e-4 in float32).
The knot values ``G(s_m) = m - 1/2 + (V_m - U_m)/2`` increase with ``m``; between two knots the equation
is a quadratic in ``exp(b/a)`` whose cancellation-free root is evaluated in log space, so that a gap of
thousands of ``a`` (where ``exp(-d/a)`` underflows, e.g. an integer ``k`` with the threshold in the middle
of a gap) still gives the right threshold.

Candidates plus a tail. Once ``b >= s_M`` every entry below the candidates is on the left branch of
``L`` and contributes ``exp((x_j - b)/a) / 2``; all of them together contribute
``exp(tail_lse) * exp((s_M - b)/a) / 2`` with the single per-row scalar
``tail_lse = log sum_{tail} exp((x_j - s_M)/a)``. So a row's threshold is determined exactly by its top-M
values and that scalar, whenever ``k <= G(s_M)``. The solve takes ``(cand_BM, tail_lse_B)`` as inputs,
which is also what a latent-sharded layout can produce from per-shard reductions plus a gather of
``M`` values per shard. Rows with ``k > G(s_M)`` (threshold below the candidates: many near-ties at the
candidate boundary, or ``k`` above ``max_k``) are detected and the whole batch is then recomputed on the
exact full-sort path.

Precision. The threshold is kept as ``b = anchor + a * beta`` with ``anchor`` a candidate next to it, so
``t_j = (x_j - anchor)/a - beta`` is accurate to float32 rounding of ``t`` itself, not of ``b / a``
(at a = 1e-4 the latter would be off by ~5e-3 for x ~ 5).

Cost on XLA:CPU (fast path, B x F rows): one ``lax.top_k``; one exp-and-sum pass for the tail (skipped
when the tail provably weighs < 1e-10); one fused pass for the weights; in the backward one reduction
pass and one pass writing dL/dx, or (small alpha, negligible tail density) a gather, [B, M] arithmetic
and a scatter into zeros. ``_pass_vectors`` explains how each pass is kept a single fused kernel.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from softsae_jax import native

__all__ = ["soft_topk", "soft_topk_candidates", "SoftCandidates", "hard_topk_mask", "hard_topk", "top_k"]

# Extra candidates beyond max_k on the fast path. They keep a few near-ties at the candidate boundary
# from forcing the full-sort fallback, and they widen the gap between the threshold and the smallest
# candidate, which decides whether the tail pass and the dense backward can be skipped at small
# alpha. lax.top_k costs ~5% more for 16 extra than for 8.
_EXTRA_CANDIDATES = 16


# top_k: rows are cut into chunks of this many entries, and the chunked selection is used where a row
# has at least _CHUNKED_MIN_RATIO * k entries (measured on XLA:CPU at B = 1024, benchmarks/topk.py --top-k:
# F = 4096, k = 32 and F = 16384, k = 64 or 144 gain 1.15x, 1.54x and 1.08x; F = 4096, k = 80, below the
# ratio, lost 1.13x chunked; docs/benchmarks.md).
_CHUNK = 16
_CHUNKED_MIN_RATIO = 64


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """``lax.top_k(x, k)``: the same values and indices, ties and NaN ordered the same, faster on the CPU.

  On XLA:CPU ``lax.top_k`` is a partial sort of every row with a per-row cost of a few microseconds
  whatever the row's width, on one thread. For float32 on the CPU this calls the native kernel
  (:mod:`softsae_jax.native`: the same selection in C++, rows shared among XLA's threads) where it is
  available. Without it, where a row has at least ``64 k`` entries, a multiple of 16, this selects
  in two narrow steps instead: each chunk of 16 consecutive entries is represented by its largest, the
  ``k`` best chunks are taken by ``lax.top_k`` over those maxima, and the answer by ``lax.top_k`` over
  the ``16 k`` entries of these chunks, gathered in column order. Exact: an entry among the row's
  ``k`` largest lies in one of those chunks (else ``k`` chunks would each hold a larger entry). The
  order is ``lax.top_k``'s total order (a float's bits as an integer key: -0.0 below 0.0, NaN above
  everything with the sign bit clear, below everything with it set; equal keys by lower column), used
  for the chunks' maxima too, so ties select the same columns. Other backends and narrower rows call
  ``lax.top_k`` itself.
  """
  if _cpu_float32(x, k) and native.available():
    return native.top_k(x, k)
  return xla_top_k(x, k)


def _cpu_float32(x: jax.Array, k: int) -> bool:
  """Whether :func:`top_k`'s CPU paths apply: float32 on the CPU backend, 0 < k <= the row's width."""
  return jax.default_backend() == "cpu" and x.dtype == jnp.float32 and 0 < k <= x.shape[-1]


def xla_top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """:func:`top_k` without the native kernel: the chunked selection where a row has at least ``64 k``
  entries, a multiple of 16, and float32 on the CPU; ``lax.top_k`` itself otherwise."""
  f = x.shape[-1]
  if not _cpu_float32(x, k) or f % _CHUNK or f < _CHUNKED_MIN_RATIO * k:
    return lax.top_k(x, k)
  lead = x.shape[:-1]
  x_BF = x.reshape(-1, f)
  n_rows, n_chunks = x_BF.shape[0], f // _CHUNK
  # Each chunk's largest entry under XLA:CPU's TopK order: the maximum of the integer keys (the float's
  # bits, magnitude bits flipped when negative; the map is its own inverse), back to its float, since
  # lax.top_k on int32 is far slower than on float32 there.
  key_BF = _order_key(lax.bitcast_convert_type(x_BF, jnp.int32))
  chunk_max_BC = lax.bitcast_convert_type(_order_key(jnp.max(key_BF.reshape(n_rows, n_chunks, _CHUNK), axis=2)),
                                          jnp.float32)
  _, chunks_BK = lax.top_k(chunk_max_BC, k)
  chunks_BK = jnp.sort(chunks_BK, axis=1)  # column order, so equal values keep lax.top_k's tie order
  cand_BKC = jnp.take_along_axis(x_BF.reshape(n_rows, n_chunks, _CHUNK), chunks_BK[:, :, None], axis=1)
  vals_BK, pos_BK = lax.top_k(cand_BKC.reshape(n_rows, k * _CHUNK), k)
  idx_BK = jnp.take_along_axis(chunks_BK, pos_BK // _CHUNK, axis=1) * _CHUNK + pos_BK % _CHUNK
  return vals_BK.reshape(*lead, k), idx_BK.reshape(*lead, k)


def _order_key(bits):
  """int32 float bits <-> a key whose integer order is XLA:CPU TopK's float order (an involution)."""
  return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _compute_dtype(dtype) -> jnp.dtype:
  """float64 stays float64 (only possible with x64 enabled); every other float computes in float32."""
  return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def _check_x(x, name: str = "x"):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"Expected {name} to be a floating array [..., F], got dtype {x.dtype}.")
  if x.ndim < 1 or x.shape[-1] < 1:
    raise ValueError(f"Expected {name} of shape [..., F] with F >= 1, got {x.shape}.")
  return x


def _check_max_k(max_k, num_f: int) -> int:
  if isinstance(max_k, bool) or not isinstance(max_k, (int, np.integer)):
    raise TypeError(f"Expected max_k to be a static Python int, got {type(max_k).__name__}.")
  if max_k < 0:
    raise ValueError(f"Expected max_k >= 0, got {max_k}.")
  if max_k > num_f:
    raise ValueError(f"Expected max_k <= F={num_f}, got {max_k}.")
  return int(max_k)


def _rows_k(k, lead_shape: tuple[int, ...], dtype) -> jax.Array:
  """k [...] (or a scalar, broadcast to every row) -> k_B in dtype."""
  k = jnp.asarray(k)
  if k.ndim == 0:
    k = jnp.broadcast_to(k, lead_shape)
  if k.shape != lead_shape:
    raise ValueError(f"Expected k of shape x.shape[:-1]={lead_shape} (or a scalar), got {k.shape}.")
  return k.astype(dtype).reshape(-1)


# --------------------------------------------------------------------------------------------------
# Hard top-k.


def hard_topk_mask(x, k, *, max_k: int):
  """Boolean mask of the ``floor(k)`` largest entries of each row.

  Args:
    x: ``[..., F]`` floating scores.
    k: ``[...]`` per-row count (or a scalar for every row). May be a float array: ``floor(k)`` is
      taken, then clipped to ``[0, max_k]`` (a NaN count selects nothing).
    max_k: static Python int, ``0 <= max_k <= F``, an upper bound on ``k`` over all rows (the size
      of the ``lax.top_k`` call).

  Returns:
    ``[..., F]`` bool mask with exactly ``clip(floor(k), 0, max_k)`` True entries per row. Ties are
    broken in ``lax.top_k`` order (the lower index first). NaN entries sort as the largest.

  Raises:
    TypeError: ``x`` is not floating or ``max_k`` is not an int.
    ValueError: wrong shapes, or ``max_k`` outside ``[0, F]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> hard_topk_mask(jnp.array([[3., 1., 2.], [0., 5., 4.]]), jnp.array([2, 1]), max_k=2)
    Array([[ True, False,  True],
           [False,  True, False]], dtype=bool)
  """
  x = _check_x(x)
  num_f = x.shape[-1]
  max_k = _check_max_k(max_k, num_f)
  lead_shape = x.shape[:-1]
  k_B = _rows_k(k, lead_shape, jnp.float32 if not jnp.issubdtype(jnp.asarray(k).dtype, jnp.integer)
                else jnp.int32)
  num_b = k_B.shape[0]
  if max_k == 0 or num_b == 0:
    return jnp.zeros(x.shape, bool)
  count_B = jnp.clip(jnp.floor(jnp.nan_to_num(k_B, nan=0.0)), 0, max_k).astype(jnp.int32)
  # lax.top_k on bf16/f16 is far slower than on f32 on CPU; the up-cast is exact, so order and ties
  # are unchanged.
  x_BF = x.reshape(num_b, num_f).astype(_compute_dtype(x.dtype))
  _, idx_BK = top_k(x_BF, max_k)
  keep_BK = jnp.arange(max_k, dtype=jnp.int32)[None, :] < count_B[:, None]
  rows_BK = jnp.broadcast_to(jnp.arange(num_b)[:, None], idx_BK.shape)
  mask_BF = jnp.zeros((num_b, num_f), bool).at[rows_BK, idx_BK].set(keep_BK, unique_indices=True)
  return mask_BF.reshape(x.shape)


def hard_topk(x, k, *, max_k: int):
  """Keep the ``floor(k)`` largest entries of each row, zero the rest.

  Args:
    x: ``[..., F]`` floating scores.
    k: ``[...]`` per-row count (or a scalar), see ``hard_topk_mask``.
    max_k: static Python int bound on ``k``, see ``hard_topk_mask``.

  Returns:
    ``[..., F]`` array, same dtype as ``x``: ``x`` where selected, 0 elsewhere. Differentiable in
    ``x`` (gradient 1 on the selected entries).

  Examples:
    >>> import jax.numpy as jnp
    >>> hard_topk(jnp.array([[3., 1., 2.]]), jnp.array([2.7]), max_k=3)
    Array([[3., 0., 2.]], dtype=float32)
  """
  x = _check_x(x)
  mask = hard_topk_mask(x, k, max_k=max_k)
  return jnp.where(mask, x, jnp.zeros((), x.dtype))


# --------------------------------------------------------------------------------------------------
# Soft top-k: the threshold solve.


def _head_tail_sums(decay_BM1, tail_sum_B):
  """U_m and V_m of the module docstring: U_1 = 1, U_{m+1} = 1 + E_m U_m and V_M = 1 + W,
  V_m = 1 + E_m V_{m+1}, with every multiplier E_m <= 1 (so both recursions are stable).

  One sequential ``lax.scan`` runs both directions at once: it compiles to one small loop (an
  associative scan unrolls into many fusions, which made compilation several times slower), and its
  per-step cost is negligible next to the top-k (M steps) or the sort (F steps) that precede it.
  """
  decay_M1B = decay_BM1.T

  def step(carry, decay):
    head_B, tail_B = carry
    head_B = 1.0 + decay[0] * head_B
    tail_B = 1.0 + decay[1] * tail_B
    return (head_B, tail_B), (head_B, tail_B)

  ones_B = jnp.ones_like(tail_sum_B)
  _, (head_M1B, tail_M1B) = lax.scan(step, (ones_B, ones_B + tail_sum_B),
                                     (decay_M1B, jnp.flip(decay_M1B, 0)))
  head_BM = jnp.concatenate([ones_B[:, None], head_M1B.T], axis=1)
  tail_BM = jnp.concatenate([jnp.flip(tail_M1B, 0).T, (ones_B + tail_sum_B)[:, None]], axis=1)
  return head_BM, tail_BM


def _finite_bounds(dtype):
  """(R, G): sorted/candidate values are clipped to [-R, R] (so +-inf act as extreme ties and
  differences never overflow) and scaled gaps d/a are capped at G (log-space terms stay finite)."""
  fmax = float(jnp.finfo(dtype).max)
  return fmax / 4, fmax / 16


class _Solution(NamedTuple):
  """Per-row result of the threshold solve (every field [B])."""

  anchor_B: jax.Array  # a candidate next to the threshold: b = anchor + a * beta
  beta_B: jax.Array  # (b - anchor) / a, moderate in size, so t = (x - anchor)/a - beta is precise
  tmin_B: jax.Array  # min_j |t_j|: the largest Laplace density is exp(-tmin) / (2a)
  rel_sum_B: jax.Array  # sum_j exp(tmin - |t_j|) >= 1: the total density relative to the largest
  pivot_B: jax.Array  # int32 column of the densest entry (argmin_j |t_j|)
  offset_B: jax.Array  # w = offset + scale * L(t): (0, 1) normally, other values for edge rows
  scale_B: jax.Array
  grad_on_B: jax.Array  # bool: implicit-function gradients apply (False: zero gradients)


def _solve_threshold(cand_BM, tail_lse_B, k_B, inv_a, *, complete: bool):
  """Solves sum_j L((x_j - b)/a) = k per row from the row's top-M values and its tail.

  This is the whole solve: the full-sort path calls it with the sorted row and an empty tail, the
  fast path with ``lax.top_k`` candidates and one tail reduction per row. A latent-sharded caller can
  build both inputs from per-shard top-M values and per-shard tail sums (rebased to the global s_M).

  Args:
    cand_BM: the M largest entries of each row, sorted descending, finite (clipped to [-R, R]).
    tail_lse_B: ``log sum_{j in tail} exp((x_j - s_M)/a)`` over the entries not among the candidates
      (all ``<= s_M``), relative to the smallest candidate ``s_M`` and in units of ``a``; ``-inf``
      for an empty tail. Relative units keep it exact to float precision at any offset of ``x``.
    k_B: per-row target, ``0 < k < F`` for rows whose result is used.
    inv_a: ``1 / a``, 0-d.
    complete: True when the candidates are the whole row (then the threshold may fall below s_M).

  Returns:
    ``(anchor_B, beta_B, tmin_B, rel_sum_B, pivot_B, outside_B)``, see ``_Solution``; ``pivot`` is a
    position in the candidate axis here; ``outside`` marks rows whose threshold lies below ``s_M``
    and were therefore solved incorrectly (only possible when ``complete`` is False).
  """
  dtype = cand_BM.dtype
  num_b, num_m = cand_BM.shape
  _, gap_cap = _finite_bounds(dtype)
  log2 = math.log(2.0)

  # Scaled gaps d_m / a >= 0 and E_m = exp(-d_m / a) in (0, 1].
  gap_BM1 = jnp.minimum((cand_BM[:, :-1] - cand_BM[:, 1:]) * inv_a, gap_cap)
  tail_sum_B = jnp.exp(tail_lse_B)
  if num_m > 1:
    head_BM, tail_BM = _head_tail_sums(jnp.exp(-gap_BM1), tail_sum_B)  # U_m, V_m
  else:
    head_BM = jnp.ones_like(cand_BM)
    tail_BM = head_BM + tail_sum_B[:, None]

  # Knot values G(s_m), increasing in m; count = number of knots <= k.
  m_M = jnp.arange(1, num_m + 1, dtype=dtype)
  knot_BM = (m_M[None, :] - 0.5) + 0.5 * (tail_BM - head_BM)
  count_B = jnp.sum(knot_BM <= k_B[:, None], axis=1, dtype=jnp.int32)

  # Above the largest entry (count == 0): b = s_1 + a log(V_1 / 2k), i.e. w = k softmax(x/a).
  top_anchor_B = cand_BM[:, 0]
  top_beta_B = jnp.log(tail_BM[:, 0]) - log2 - jnp.log(k_B)
  # Below the smallest entry (count == M, complete rows only): b = s_M + a log(2(M - k) / U_M).
  bot_anchor_B = cand_BM[:, -1]
  bot_beta_B = jnp.log(2.0 * (num_m - k_B)) - jnp.log(head_BM[:, -1])

  if num_m > 1:
    # Between knots c and c+1 (c entries above b): the root of the quadratic in u = exp((b - s_c)/a),
    # log(D + sqrt(D^2 + U_c V_{c+1} E_c)) evaluated with every exponent <= 0.
    c_B = jnp.clip(count_B, 1, num_m - 1)
    lo_B1 = (c_B - 1)[:, None]
    hi_B1 = c_B[:, None]
    take = lambda a_BM, i_B1: jnp.take_along_axis(a_BM, i_B1, axis=1)[:, 0]
    s_hi_B, s_lo_B = take(cand_BM, lo_B1), take(cand_BM, hi_B1)  # s_c >= s_{c+1}
    log_u_B = jnp.log(take(head_BM, lo_B1))  # log U_c
    log_v_B = jnp.log(take(tail_BM, hi_B1))  # log V_{c+1}
    log_e_B = -take(gap_BM1, lo_B1)  # log E_c
    c_f_B = c_B.astype(dtype)
    log_d_B = jnp.log(jnp.abs(k_B - c_f_B))  # -inf when k == c
    half_B = 0.5 * (log_u_B + log_v_B + log_e_B)  # log sqrt(U V E)
    ref_B = jnp.maximum(log_d_B, half_B)
    scaled_d_B = jnp.exp(log_d_B - ref_B)
    root_B = ref_B + jnp.log(scaled_d_B + jnp.sqrt(scaled_d_B**2 + jnp.exp(2.0 * (half_B - ref_B))))
    upper_B = k_B <= c_f_B  # b in the upper part of the gap: anchor s_c, beta = root - log U_c
    mid_anchor_B = jnp.where(upper_B, s_hi_B, s_lo_B)
    mid_beta_B = jnp.where(upper_B, root_B - log_u_B, log_v_B - root_B)
    anchor_B = jnp.where(count_B == 0, top_anchor_B, mid_anchor_B)
    beta_B = jnp.where(count_B == 0, top_beta_B, mid_beta_B)
  else:
    anchor_B, beta_B = top_anchor_B, top_beta_B

  bottom_B = count_B >= num_m
  if complete:
    anchor_B = jnp.where(bottom_B, bot_anchor_B, anchor_B)
    beta_B = jnp.where(bottom_B, bot_beta_B, beta_B)
    outside_B = jnp.zeros_like(bottom_B)
  else:
    # k == G(s_M) is still solved exactly (b = s_M) by the last interval's root.
    outside_B = k_B > knot_BM[:, -1]

  # Densities: the candidates bracket b and the tail lies below s_M <= b, so the densest entry is a
  # candidate and the tail's total density is W exp(-|t_M|).
  dist_BM = jnp.abs((cand_BM - anchor_B[:, None]) * inv_a - beta_B[:, None])
  pivot_B = jnp.argmin(dist_BM, axis=1).astype(jnp.int32)
  tmin_B = jnp.take_along_axis(dist_BM, pivot_B[:, None], axis=1)[:, 0]
  rel_sum_B = (jnp.sum(jnp.exp(tmin_B[:, None] - dist_BM), axis=1)
               + jnp.exp(tail_lse_B + tmin_B - dist_BM[:, -1]))
  return anchor_B, beta_B, tmin_B, rel_sum_B, pivot_B, outside_B


def _laplace_t(x_BF, anchor_B, beta_B, inv_a_B):
  """t = (x - b)/a with b = anchor + a beta (x unclipped: +-inf give t = +-inf)."""
  return (x_BF - anchor_B[:, None]) * inv_a_B[:, None] - beta_B[:, None]


def _pass_vectors(seed_B, *values):
  """The scalars / per-row values one [B, F] pass needs, as [B] vectors private to that pass.

  Speed only, never the values. XLA:CPU (jax 0.10) runs an elementwise-then-row-sum pass as one fast
  YNNPACK kernel only when every operand is a full array or a row broadcast used by that pass alone;
  a scalar constant (``jnp.minimum(t, 0.0)``) or a row vector that another pass also broadcasts is
  first materialised as a [B, F] array, which costs as much as the pass itself (a 2x slower backward
  was measured). Adding ``0 * seed`` (not foldable: it is NaN for non-finite seeds) makes each vector
  a distinct value, and a different ``seed`` per pass keeps common subexpression elimination from
  merging them across passes. NaN in the seed makes the row NaN, which callers rely on anyway.
  """
  zero_B = jnp.minimum(jnp.abs(seed_B), 1.0) * 0.0
  return tuple(jnp.asarray(v, zero_B.dtype) + zero_B for v in values)


def _full_solution(x_BF, k_B, inv_a) -> _Solution:
  """Exact path: the sorted row is the candidate set (O(F log F) per row). Handles +-inf fully."""
  num_f = x_BF.shape[1]
  dtype = x_BF.dtype
  bound, _ = _finite_bounds(dtype)
  iota_BF = lax.broadcasted_iota(jnp.int32, x_BF.shape, 1)
  neg_sorted_BF, order_BF = lax.sort((-x_BF, iota_BF), dimension=1, num_keys=1)  # NaN sorts last
  sorted_BF = -neg_sorted_BF  # descending
  n_pos_B = jnp.sum(sorted_BF == jnp.inf, axis=1, dtype=dtype)
  n_neg_B = jnp.sum(sorted_BF == -jnp.inf, axis=1, dtype=dtype)
  empty_tail_B = jnp.full(k_B.shape, -jnp.inf, dtype)
  anchor_B, beta_B, tmin_B, rel_sum_B, pivot_B, _ = _solve_threshold(
      jnp.clip(sorted_BF, -bound, bound), empty_tail_B, k_B, inv_a, complete=True)
  pivot_B = jnp.take_along_axis(order_BF, pivot_B[:, None], axis=1)[:, 0]
  # Threshold at +inf (at least k entries are +inf): they share k; at -inf (k exceeds the number of
  # entries above -inf): those get 1 and the -inf entries share the rest. With the anchor at +-R and
  # unclipped x, L(t) is then the 0/1 indicator of x = +inf (resp. x > -inf).
  at_pos_inf_B = k_B <= n_pos_B
  at_neg_inf_B = (k_B > num_f - n_neg_B) & ~at_pos_inf_B
  share_B = (k_B - (num_f - n_neg_B)) / jnp.maximum(n_neg_B, 1.0)
  at_inf_B = at_pos_inf_B | at_neg_inf_B
  zero_B, one_B = jnp.zeros_like(k_B), jnp.ones_like(k_B)
  return _Solution(
      anchor_B=jnp.where(at_pos_inf_B, bound, jnp.where(at_neg_inf_B, -bound, anchor_B)),
      beta_B=jnp.where(at_inf_B, zero_B, beta_B),
      tmin_B=jnp.where(at_inf_B, zero_B, tmin_B),
      rel_sum_B=jnp.where(at_inf_B, one_B, rel_sum_B),
      pivot_B=pivot_B,
      offset_B=jnp.where(at_neg_inf_B, share_B, zero_B),
      scale_B=jnp.where(at_pos_inf_B, k_B / jnp.maximum(n_pos_B, 1.0),
                        jnp.where(at_neg_inf_B, 1.0 - share_B, one_B)),
      grad_on_B=~at_inf_B & ~jnp.isnan(sorted_BF[:, -1]),
  )


# exp(-23) ~ 1e-10: a tail whose total weight / density is below this fraction (of one entry, resp.
# of the densest entry) is dropped: far below float32 resolution of the row sums.
_LOG_NEGLIGIBLE = -23.0


def _fast_solution(x_BF, k_B, inv_a, num_m: int):
  """Top-M candidates + one tail reduction per row; the exact full path if any row needs it.

  Returns ``(solution, index_BM, sparse_grad, rel_sum_complete)``: the candidates' columns; a scalar
  bool, True when every row's tail is negligible in the backward (its total density is below 1e-10
  of the largest one), so the VJP can work on the candidates alone; and a scalar bool, False when the
  tail pass was skipped, so ``solution.rel_sum_B`` lacks the tail's (negligible weight, but not
  necessarily negligible density) share and a dense VJP must recompute it.
  """
  raw_BM, index_BM = top_k(x_BF, num_m)  # NaN sorts first
  cs = _candidate_solve(x_BF, raw_BM, k_B, inv_a)
  fast = cs.solution._replace(
      pivot_B=jnp.take_along_axis(index_BM, cs.solution.pivot_B[:, None], axis=1)[:, 0])
  solution = lax.cond(cs.needs_full, lambda: _full_solution(x_BF, k_B, inv_a), lambda: fast)
  sparse_grad = ~cs.needs_full & jnp.all(cs.tail_negligible_B)
  return solution, index_BM, sparse_grad, cs.needs_full | cs.tail_computed


class _CandidateSolve(NamedTuple):
  """What ``_candidate_solve`` returns."""

  solution: _Solution  # the fast path's solution; pivot_B is a position in the candidate axis
  needs_full: jax.Array  # scalar bool: some row's threshold lies outside what the candidates solve
  tail_negligible_B: jax.Array  # bool [B]: the row's tail density is < 1e-10 of its largest (or not interior)
  tail_computed: jax.Array  # scalar bool: the tail pass ran (else rel_sum_B lacks the tail's share)
  nan_B: jax.Array  # bool [B]: NaN in the row


def _candidate_solve(x_BF, raw_BM, k_B, inv_a) -> _CandidateSolve:
  """The fast path's solve from each row's top-M values ``raw_BM`` (``lax.top_k(x_BF, M)[0]``, sorted
  descending) plus, only when a bound says it may matter, one tail pass over ``x_BF``.

  Shared by ``_fast_solution`` (dense weights) and ``soft_topk_candidates`` (weights at the
  candidates only); neither the full-sort fallback nor the column of the pivot is decided here.
  """
  num_f = x_BF.shape[1]
  num_m = raw_BM.shape[1]
  dtype = x_BF.dtype
  bound, _ = _finite_bounds(dtype)
  n_pos_B = jnp.sum(raw_BM == jnp.inf, axis=1, dtype=dtype)
  n_live_B = jnp.sum(raw_BM > -jnp.inf, axis=1, dtype=dtype)
  nan_B = jnp.any(jnp.isnan(raw_BM), axis=1)
  cand_BM = jnp.clip(raw_BM, -bound, bound)
  interior_B = (k_B > 0) & (k_B < num_f) & ~nan_B
  log_tail_count = math.log(num_f - num_m)

  def tail_gap(anchor_B, beta_B):  # (b - s_M)/a, >= 0 unless the threshold is below the candidates
    return (anchor_B - cand_BM[:, -1]) * inv_a + beta_B

  def tail_lse():
    # One exp-and-sum pass: every candidate above -inf contributes exactly 1, every tail entry
    # exp((x - s_M)/a) <= 1; NaN propagates.
    zero_B, inv_a_B, last_B = _pass_vectors(cand_BM[:, -1], 0.0, inv_a, cand_BM[:, -1])
    below_sum_B = jnp.sum(
        jnp.exp(jnp.minimum(x_BF - last_B[:, None], zero_B[:, None]) * inv_a_B[:, None]), axis=1)
    return jnp.log(jnp.maximum(below_sum_B - n_live_B, 0.0)), jnp.isnan(below_sum_B)

  # The F - M tail entries (each <= s_M) carry a total weight below (F - M) exp(-(b - s_M)/a) / 2.
  # Without solving, b >= s_r - a log(r/2) with r = floor(k) + 2 (else the top r entries alone would
  # weigh more than k). When that bounds the tail's weight below 1e-10 in every row (small alpha),
  # the tail pass is skipped and tail_lse is replaced by its upper bound log(F - M) where only a
  # bound is needed (the sparse-backward test below); the solve then uses an empty tail.
  rank_B = jnp.clip(jnp.floor(k_B).astype(jnp.int32) + 2, 2, num_m)
  s_rank_B = jnp.take_along_axis(cand_BM, (rank_B - 1)[:, None], axis=1)[:, 0]
  gap_bound_B = (s_rank_B - cand_BM[:, -1]) * inv_a - jnp.log(0.5 * rank_B.astype(dtype))
  tail_matters_B = log_tail_count - gap_bound_B > _LOG_NEGLIGIBLE
  tail_computed = jnp.any(tail_matters_B & interior_B)
  tail_lse_B, tail_nan_B = lax.cond(
      tail_computed, tail_lse,
      lambda: (jnp.full(k_B.shape, -jnp.inf, dtype), jnp.zeros_like(nan_B)))
  nan_B = nan_B | tail_nan_B
  anchor_B, beta_B, tmin_B, rel_sum_B, pivot_B, outside_B = _solve_threshold(
      cand_BM, tail_lse_B, k_B, inv_a, complete=False)
  tail_bound_lse_B = jnp.where(tail_matters_B, tail_lse_B, log_tail_count)

  # Rows the candidates cannot solve: threshold below s_M, or at +-inf.
  hard_B = outside_B | (k_B <= n_pos_B) | (k_B > n_live_B)
  needs_full = jnp.any(hard_B & interior_B & ~nan_B)
  zero_B, one_B = jnp.zeros_like(k_B), jnp.ones_like(k_B)
  fast = _Solution(anchor_B, beta_B, tmin_B, rel_sum_B, pivot_B, zero_B, one_B, ~nan_B)
  # Backward on the candidates alone when the tail's total density relative to the largest one,
  # W exp(tmin - |t_M|), is negligible in every row.
  tail_density_log_B = tail_bound_lse_B + tmin_B - tail_gap(anchor_B, beta_B)
  tail_negligible_B = ~((tail_density_log_B > _LOG_NEGLIGIBLE) & interior_B)
  return _CandidateSolve(fast, needs_full, tail_negligible_B, tail_computed, nan_B)


def _candidate_count(max_k: int | None, num_f: int) -> int | None:
  """Size M of the fast path's candidate set, or None for the full-sort path."""
  if max_k is None:
    return None
  num_m = max_k + _EXTRA_CANDIDATES
  return None if num_m >= num_f else num_m


def _soft_topk_fwd_impl(x_BF, k_B, alpha, num_m):
  inv_a = _inv_alpha(alpha, x_BF.dtype)
  if num_m is None:
    sol, sparse = _full_solution(x_BF, k_B, inv_a), None
  else:
    sol, index_BM, sparse_grad, rel_sum_complete = _fast_solution(x_BF, k_B, inv_a, num_m)
    sparse = (index_BM, sparse_grad, rel_sum_complete)
  sol = _finish_solution(sol, k_B, alpha, x_BF.shape[1])
  return _weights(x_BF, sol, inv_a), (x_BF, sol, inv_a, sparse)


def _inv_alpha(alpha, dtype):
  return jnp.where(alpha > 0, 1.0 / alpha, jnp.nan).astype(dtype)


def _finish_solution(sol: _Solution, k_B, alpha, num_f: int) -> _Solution:
  """Rows outside 0 < k < F: constant 0 or 1; NaN in x, k or alpha: NaN (scale NaN reaches every entry)."""
  zeros_B = k_B <= 0
  ones_B = k_B >= num_f
  flat_B = zeros_B | ones_B
  bad_B = jnp.isnan(k_B) | ~(alpha > 0) | jnp.isnan(sol.beta_B)
  zero_B = jnp.zeros_like(k_B)
  return sol._replace(
      anchor_B=jnp.where(flat_B, zero_B, sol.anchor_B),
      beta_B=jnp.where(flat_B, zero_B, sol.beta_B),
      tmin_B=jnp.where(sol.grad_on_B & ~flat_B, sol.tmin_B, zero_B),
      rel_sum_B=jnp.where(sol.grad_on_B & ~flat_B, sol.rel_sum_B, 1.0),
      offset_B=jnp.where(ones_B, 1.0, jnp.where(zeros_B, 0.0, sol.offset_B)),
      scale_B=jnp.where(bad_B & ~flat_B, jnp.nan, jnp.where(flat_B, 0.0, sol.scale_B)),
      grad_on_B=sol.grad_on_B & ~flat_B,
  )


def _weights(x_BF, sol: _Solution, inv_a):
  """w = offset + scale * L(t) with L(t) = e/2 + H(t) (1 - e), e = exp(-|t|), H the unit step
  (min(max(t * huge, 0), 1) is exact wherever it matters: for |t| < 1/huge, 1 - e = 0). One exp, no
  select, so XLA can fuse it into a consumer's reduction; tiny weights keep full relative precision."""
  zero_B, one_B, half_B, huge_B, inv_a_B, anchor_B, beta_B, offset_B, scale_B = _pass_vectors(
      sol.tmin_B, 0.0, 1.0, 0.5, float(jnp.finfo(x_BF.dtype).max) / 4, inv_a, sol.anchor_B,
      sol.beta_B, sol.offset_B, sol.scale_B)
  t_BF = _laplace_t(x_BF, anchor_B, beta_B, inv_a_B)
  e_BF = jnp.exp(jnp.minimum(t_BF, -t_BF))
  step_BF = jnp.minimum(jnp.maximum(t_BF * huge_B[:, None], zero_B[:, None]), one_B[:, None])
  cdf_BF = half_B[:, None] * e_BF + step_BF * (one_B[:, None] - e_BF)
  return offset_B[:, None] + scale_B[:, None] * cdf_BF


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _soft_topk_rows(x_BF, k_B, alpha, num_m):
  return _soft_topk_fwd_impl(x_BF, k_B, alpha, num_m)[0]


def _soft_topk_rows_fwd(x_BF, k_B, alpha, num_m):
  return _soft_topk_fwd_impl(x_BF, k_B, alpha, num_m)


def _soft_topk_rows_bwd(num_m, res, v_BF):
  """Implicit differentiation of sum_j L((x_j - b)/a) = k (LapSum, docs/method.md §1.5)."""
  del num_m
  x_BF, sol, inv_a, sparse = res
  log_scale_B = _log_scale(sol, inv_a)
  v_pivot_B = jnp.take_along_axis(v_BF, sol.pivot_B[:, None], axis=1)[:, 0]
  args = (x_BF, v_BF, sol, inv_a, log_scale_B, v_pivot_B)
  if sparse is None:
    dx_BF, slope_B, da = _vjp_dense(*args)
  else:
    index_BM, sparse_grad, rel_sum_complete = sparse
    dx_BF, slope_B, da = lax.cond(sparse_grad, lambda: _vjp_candidates(*args, index_BM),
                                  lambda: _vjp_dense(*args, rel_sum_complete=rel_sum_complete))
  dk_B = jnp.where(sol.grad_on_B | jnp.isnan(sol.scale_B), slope_B, 0.0)
  return dx_BF, dk_B.astype(x_BF.dtype), da.astype(inv_a.dtype)


def _log_scale(sol: _Solution, inv_a):
  """log of the Laplace density's scale 1/(2a): q = exp(-|t|) / (2a) is evaluated as
  exp(log_scale - |t|); rows without gradient get q = 0 (log_scale -inf), NaN rows NaN."""
  nan_B = jnp.isnan(sol.scale_B)
  return jnp.where(sol.grad_on_B, jnp.log(0.5 * inv_a), jnp.where(nan_B, jnp.nan, -jnp.inf))


def _vjp_dense(x_BF, v_BF, sol, inv_a, log_scale_B, v_pivot_B, rel_sum_complete=None, row_sum=None):
  """dL/dx, S = dL/dk and dL/da with two passes over [B, F]: a row reduction, then dx (plus one
  more reduction for the density total when the forward skipped the tail pass)."""
  # S = sum v q / sum q from densities relative to the largest one (exponents <= 0, the largest term
  # is 1; the denominator comes from the solve), so it survives when every q underflows (threshold
  # deep inside a gap). It is accumulated as an offset from v at the densest entry (the pivot): when
  # one entry carries nearly all the density, v_pivot - S is then exact instead of a cancellation.
  # Pass 1 writes t as -t so that XLA does not share one materialised [B, F] t between the passes.
  inv_a_B, anchor_B, beta_B, tmin_B, v_pivot_1_B = _pass_vectors(
      v_pivot_B, inv_a, sol.anchor_B, sol.beta_B, sol.tmin_B, v_pivot_B)
  minus_t_BF = (anchor_B[:, None] - x_BF) * inv_a_B[:, None] + beta_B[:, None]
  rel_BF = jnp.exp(jnp.minimum(minus_t_BF, -minus_t_BF) + tmin_B[:, None])
  rel_sum_B = sol.rel_sum_B
  if rel_sum_complete is not None:
    # The solve's total lacks the tail when the forward skipped the tail pass.
    inv_a_0_B, anchor_0_B, beta_0_B, tmin_0_B = _pass_vectors(
        sol.rel_sum_B, inv_a, sol.anchor_B, sol.beta_B, sol.tmin_B)
    rel_sum_B = lax.cond(
        rel_sum_complete, lambda: sol.rel_sum_B,
        lambda: jnp.sum(jnp.exp(tmin_0_B[:, None] - jnp.abs(
            _laplace_t(x_BF, anchor_0_B, beta_0_B, inv_a_0_B))), axis=1))
  # ``row_sum``: a latent-sharded caller sums each row over its shards (softsae_jax.parallel).
  row_sum = (lambda a_BF: jnp.sum(a_BF, axis=1)) if row_sum is None else row_sum
  offset_B = row_sum(rel_BF * (v_BF - v_pivot_1_B[:, None])) / rel_sum_B
  slope_B = v_pivot_B + offset_B  # S = dL/dk
  # Pass 2: dL/dx = q (v - S).
  inv_a_B, anchor_B, beta_B, log_scale_B, v_pivot_2_B, offset_B = _pass_vectors(
      offset_B, inv_a, sol.anchor_B, sol.beta_B, log_scale_B, v_pivot_B, offset_B)
  t_BF = _laplace_t(x_BF, anchor_B, beta_B, inv_a_B)
  q_BF = jnp.exp(log_scale_B[:, None] - jnp.maximum(t_BF, -t_BF))
  dx_BF = q_BF * ((v_BF - v_pivot_2_B[:, None]) - offset_B[:, None])
  return dx_BF, slope_B, _alpha_grad(dx_BF, t_BF)


def _vjp_candidates(x_BF, v_BF, sol, inv_a, log_scale_B, v_pivot_B, index_BM):
  """The same VJP from the top-M candidates alone (their tail's density is negligible): a gather,
  [B, M] arithmetic and a scatter into zeros instead of two passes over [B, F]."""
  x_BM = jnp.take_along_axis(x_BF, index_BM, axis=1)
  v_BM = jnp.take_along_axis(v_BF, index_BM, axis=1)
  dx_BM, slope_B, da = _vjp_on_candidates(x_BM, v_BM, sol, inv_a, log_scale_B, v_pivot_B)
  rows_BM = lax.broadcasted_iota(jnp.int32, index_BM.shape, 0)
  dx_BF = jnp.zeros_like(x_BF).at[rows_BM, index_BM].set(dx_BM, unique_indices=True)
  return dx_BF, slope_B, da


def _vjp_on_candidates(x_BM, v_BM, sol, inv_a, log_scale_B, v_pivot_B, tail_v_zero: bool = False):
  """``_vjp_dense``'s (dL/dx, S = dL/dk, dL/da) restricted to the candidates, all [B, M] arithmetic.

  The tail's entries are left out of dL/dx. In S = sum_j v_j q_j / sum_j q_j the denominator is the
  solve's ``sol.rel_sum_B`` (with the tail's density whenever the tail pass ran); in the numerator the
  tail's v is taken as v at the pivot (``tail_v_zero`` False: exact up to the tail's share, for callers
  that checked it is negligible, below 1e-10 of the largest density) or as 0 (True: exact for a function
  whose outputs are the candidates' weights alone, the tail held fixed)."""
  t_BM = _laplace_t(x_BM, sol.anchor_B, sol.beta_B, jnp.broadcast_to(inv_a, sol.beta_B.shape))
  neg_abs_t_BM = jnp.minimum(t_BM, -t_BM)
  rel_BM = jnp.exp(neg_abs_t_BM + sol.tmin_B[:, None])
  offset_sum_B = jnp.sum(rel_BM * (v_BM - v_pivot_B[:, None]), axis=1)
  if tail_v_zero:  # the tail's terms (0 - v_pivot) q_j: its density is the total less the candidates'
    offset_sum_B = offset_sum_B - v_pivot_B * jnp.maximum(sol.rel_sum_B - jnp.sum(rel_BM, axis=1), 0.0)
  offset_B = offset_sum_B / sol.rel_sum_B
  q_BM = jnp.exp(neg_abs_t_BM + log_scale_B[:, None])
  dx_BM = q_BM * ((v_BM - v_pivot_B[:, None]) - offset_B[:, None])
  return dx_BM, v_pivot_B + offset_B, _alpha_grad(dx_BM, t_BM)


def _alpha_grad(dx_BF, t_BF):
  """dL/da = -(1/a) sum_j v_j q_j (x_j - X) = -sum_j dx_j t_j (sum_j dx_j = 0 absorbs the shift);
  t is clipped so that dx = 0 at t = +-inf contributes 0."""
  big = float(jnp.finfo(t_BF.dtype).max) ** 0.5
  return -jnp.sum(dx_BF * jnp.clip(t_BF, -big, big))


_soft_topk_rows.defvjp(_soft_topk_rows_fwd, _soft_topk_rows_bwd)


def soft_topk(x, k, alpha, *, max_k: int | None = None):
  r"""LapSum soft top-k: weights in [0, 1] per row that sum exactly to ``k``.

  For each row ``x`` (last axis, ``F`` entries) and target ``k``, returns

      w_j = L((x_j - b) / alpha),   L(t) = e^t / 2 (t <= 0),  1 - e^{-t} / 2 (t > 0),

  the Laplace CDF, with the threshold ``b`` solved exactly (closed form between sorted knots, in log
  space) so that ``sum_j w_j = k``. Larger ``x_j`` gives larger ``w_j``; tied entries get identical
  weights. ``alpha`` is the Laplace scale: **smaller alpha is harder**. As ``alpha -> 0`` (distinct
  values) the ``floor(k)`` largest entries get 1, the next one gets ``frac(k)``, the rest 0. When
  ``k <= sum_j exp((x_j - max x)/alpha) / 2`` (large alpha or small k) the result is exactly
  ``k * softmax(x / alpha)``.

  Args:
    x: ``[..., F]`` floating scores. float16/bfloat16/float32 compute in float32; float64 (with
      ``jax_enable_x64``) computes in float64. The result has the dtype of ``x``.
    k: ``[...]`` per-row real target (or a scalar for every row), normally ``0 < k < F``.
    alpha: scale ``> 0``: a Python float or a 0-d array. It is a traced argument, so an annealed alpha
      never recompiles a jitted caller. ``alpha <= 0`` gives NaN weights.
    max_k: optional static Python int upper bound on ``k`` over all rows (e.g. SoftSAE's ``k_max``).
      When given (and ``max_k + 16 < F``), the forward uses the ``M = max_k + 16`` largest entries of
      each row (``lax.top_k``) plus one log-sum-exp of the remaining "tail" entries per row instead
      of sorting full rows. This is exact whenever the threshold lies at or above the smallest
      candidate ``s_M`` (then every tail entry contributes ``exp((x_j - b)/alpha) / 2``). Rows where
      it does not (many near-ties at the candidate boundary, ``k > max_k``, or ``+-inf`` thresholds)
      are detected, and then the whole batch is recomputed on the exact full-sort path inside a
      ``lax.cond``: ``max_k`` affects speed, not the result. Two further shortcuts apply only when
      they are negligible in every row of the batch: the tail pass is skipped when the tail's
      total weight is provably below 1e-10, and the VJP is computed from the candidates alone when
      the tail's total density is below 1e-10 of the largest one (typical at small alpha); the
      dropped terms are far below float32 resolution. Under ``jax.vmap`` the ``cond``s become
      ``select``s that run both branches (correct, slower): pass batched ``[..., F]`` arrays
      directly instead of vmapping. ``None`` (default): the exact full-sort path (O(F log F) per
      row, slow on CPU).

  Returns:
    ``[..., F]`` weights in ``[0, 1]``, dtype of ``x``, with ``sum_j w_j = k`` per row.

  Edge cases (all defined, none raises inside jit):
    * ``k <= 0``: all zeros (the limit); gradients 0.
    * ``k >= F``: all ones; gradients 0.
    * Ties and constant rows are exact: an all-zero (or constant) row gives ``k / F`` everywhere.
    * ``+inf`` / ``-inf`` entries behave as ties at an extreme value: with ``p`` entries at ``+inf``,
      they get weight 1 if ``p < k`` (the finite entries share ``k - p``), else ``k / p`` each and the
      rest 0; ``-inf`` entries get 0 unless ``k`` exceeds the number of other entries, in which case
      they share the remainder equally.
    * NaN in a row of ``x`` (or a NaN ``k``) makes that row's weights NaN; other rows are unaffected.

  Gradients (custom VJP by implicit differentiation, LapSum section 1.5): with ``v = dL/dw``,
  ``q_j = exp(-|x_j - b|/alpha) / (2 alpha)`` (the Laplace density at the solution) and
  ``S = sum_j v_j q_j / sum_j q_j``:

      dL/dx_j = q_j (v_j - S),   dL/dk = S,   dL/dalpha = -sum_j q_j (v_j - S) (x_j - b) / alpha.

  ``S`` is computed relative to the largest density, so ``dL/dk`` stays correct (the density-weighted
  mean of ``v`` next to the threshold) even when every ``q_j`` underflows, e.g. an integer ``k`` with
  the threshold in a gap of thousands of ``alpha``; there ``dL/dx`` is genuinely ~0. ``dL/dalpha``
  is the true derivative w.r.t. the positive scale (not the reference kernel's derivative w.r.t. the
  negated alpha). Edge-case rows (``k <= 0``, ``k >= F``, threshold at ``+-inf``) get zero
  gradients; NaN rows get NaN gradients.

  References:
    Struski, Bednarczyk, Podolak, Tabor, "LapSum -- One Method to Differentiate Them All: Ranking,
    Sorting and Top-k Selection", ICML 2025, arXiv 2503.06242. Stępień, Mazur, Tabor, Spurek,
    "SoftSAE: Dynamic Top-K Selection for Adaptive Sparse Autoencoders", arXiv 2605.06610.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[3.0, 1.0, 2.0, 0.0]])
    >>> w = soft_topk(x, jnp.array([2.5]), 1e-3)
    >>> print(jnp.round(w, 3))
    [[1.  0.5 1.  0. ]]
    >>> print(jnp.round(soft_topk(x, jnp.array([2.5]), 1e-3, max_k=3), 3))
    [[1.  0.5 1.  0. ]]
    >>> print(jnp.round(soft_topk(x, jnp.array([2.0]), 1.0).sum(), 4))
    2.0
  """
  x = _check_x(x)
  lead_shape, num_f = x.shape[:-1], x.shape[-1]
  if max_k is not None:
    max_k = _check_max_k(max_k, num_f)
  cdtype = _compute_dtype(x.dtype)
  k_B = _rows_k(k, lead_shape, cdtype)
  alpha = jnp.asarray(alpha)
  if alpha.ndim != 0:
    raise ValueError(f"Expected alpha to be a scalar (0-d), got shape {alpha.shape}.")
  x_BF = x.reshape(-1, num_f).astype(cdtype)
  w_BF = _soft_topk_rows(x_BF, k_B, alpha.astype(cdtype), _candidate_count(max_k, num_f))
  return w_BF.astype(x.dtype).reshape(x.shape)


# --------------------------------------------------------------------------------------------------
# Soft top-k on the candidates only.


class SoftCandidates(NamedTuple):
  """What :func:`soft_topk_candidates` returns (``...`` the leading dims of ``x``, ``M = max_k + 16``)."""

  w: jax.Array  # [..., M] the candidates' weights: differentiable in their scores, k and alpha
  idx: jax.Array  # [..., M] int32 columns of the candidates (``lax.top_k`` order, descending scores)
  exact: jax.Array  # bool scalar: ``w`` and its gradients (the tail held fixed) are exact in every row
  tail_negligible: jax.Array  # bool [...]: the row's tail weighs < 1e-10 in total (weight and density)
  full: jax.Array | None  # [..., F] every weight from the same solution, no gradient (``full_weights``)

  @property
  def negligible(self) -> jax.Array:
    """bool scalar: ``exact`` and every row's tail negligible: ``w`` is then the whole soft top-k."""
    return self.exact & jnp.all(self.tail_negligible)


def soft_topk_candidates(x, k, alpha, *, max_k: int, top=None, full_weights: bool = False) -> SoftCandidates:
  r"""LapSum soft top-k weights of each row's ``M = max_k + 16`` largest entries only, with their columns.

  The fast path of :func:`soft_topk` stopped before its [..., F] passes: the same ``lax.top_k``
  candidates, the same threshold solve (``_candidate_solve``, with the tail's log-sum-exp wherever it
  may matter), and ``w = soft_topk(x, k, alpha, max_k=max_k)`` at the candidates,
  ``w_m = L((x_{idx_m} - b) / alpha)``. The entries outside the candidates (the tail) are not returned.

  Two traced flags say what the result is worth (where a flag is False a caller falls back to
  :func:`soft_topk`, e.g. with ``lax.cond``):

  * ``exact`` (one for the batch): ``w`` equals the soft top-k's weights at the candidates and the VJP
    below is exact for them, the tail held fixed. False when any row needs the exact full-sort path
    (threshold below the candidates), has ``k >= F``, a NaN in ``x`` or ``k``, when ``alpha <= 0``, or
    when the tail pass was skipped although some row's tail density is not negligible.
  * ``tail_negligible`` (per row): the tail's total weight and total Laplace density are below 1e-10
    (of one entry, resp. of the largest density), the rule by which :func:`soft_topk` skips its tail
    pass and takes its sparse backward. ``negligible = exact & all(tail_negligible)``: the candidates
    are then the whole soft top-k to float32 resolution. At small alpha (SoftSAE after its anneal,
    alpha = 1e-4) this is the usual case; at large alpha the weight is spread over all ``F`` entries.
    A caller that knows more about the tail may accept other rows: SoftSAE multiplies the weights by
    ReLU outputs, so a row whose candidates end at 0 has an all-zero tail whose weights multiply zeros.

  Gradients (custom VJP, the implicit differentiation of :func:`soft_topk` restricted to the
  candidates, [B, M] arithmetic, no [..., F] pass): w.r.t. the candidates' scores, ``k`` and ``alpha``,
  with the cotangent of the (not returned) tail weights 0 and the tail's density in ``S``'s
  denominator. The gradient w.r.t. the tail's scores, ``-q_j S``, is not formed: below float32
  resolution where ``tail_negligible`` holds (as :func:`soft_topk`'s own sparse backward drops it).

  Args:
    x: ``[..., F]`` floating scores (as for :func:`soft_topk`).
    k: ``[...]`` per-row target (or a scalar), ``k <= max_k`` on the rows that matter.
    alpha: 0-d Laplace scale > 0.
    max_k: static Python int with ``max_k + 16 < F``.
    top: optional ``(vals, idx)`` = ``lax.top_k(x, max_k + 16)``, computed by the caller, e.g. inside a
      custom VJP that forms an encoder's gradient from the cotangent of ``vals``. Then ``x`` is only
      read (for the tail and ``full``), never differentiated, and the gradient w.r.t. the scores goes
      to ``vals`` alone. Without it the candidates come from ``lax.top_k(x, ...)`` here and the
      gradient reaches ``x`` through it (a scatter into [..., F]).
    full_weights: also return ``full``, all [..., F] weights evaluated from the same solution (one
      fused pass, no gradient): equal to :func:`soft_topk`'s forward whenever ``exact`` holds,
      for statistics that read every entry (which latents fired, L0).

  Returns:
    :class:`SoftCandidates` ``(w, idx, exact, tail_negligible, full)`` (and ``.negligible``); ``w`` in
    the dtype of ``x``.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[3.0, 1.0, 2.0, 0.0] + [-5.0] * 20])
    >>> c = soft_topk_candidates(x, jnp.array([2.5]), 1e-3, max_k=1)
    >>> print(c.idx[0, :4], jnp.round(c.w[0, :4], 3), bool(c.negligible))
    [0 2 1 3] [1.  1.  0.5 0. ] True
  """
  x = _check_x(x)
  lead_shape, num_f = x.shape[:-1], x.shape[-1]
  max_k = _check_max_k(max_k, num_f)
  num_m = _candidate_count(max_k, num_f)
  if num_m is None:
    raise ValueError(f"Expected max_k + {_EXTRA_CANDIDATES} < F for the candidates, got max_k={max_k}, F={num_f}.")
  cdtype = _compute_dtype(x.dtype)
  k_B = _rows_k(k, lead_shape, cdtype)
  alpha = jnp.asarray(alpha)
  if alpha.ndim != 0:
    raise ValueError(f"Expected alpha to be a scalar (0-d), got shape {alpha.shape}.")
  alpha = alpha.astype(cdtype)
  x_BF = x.reshape(-1, num_f).astype(cdtype)
  stop = lax.stop_gradient
  if top is None:
    vals_BM, idx_BM = top_k(x_BF, num_m)
  else:
    vals, idx = (jnp.asarray(a) for a in top)
    if vals.shape != (*lead_shape, num_m) or idx.shape != vals.shape:
      raise ValueError(f"Expected top = (vals, idx) of shape {(*lead_shape, num_m)}, got {vals.shape} and {idx.shape}.")
    vals_BM, idx_BM = vals.reshape(-1, num_m).astype(cdtype), idx.reshape(-1, num_m)
    x_BF = stop(x_BF)
  inv_a = _inv_alpha(stop(alpha), cdtype)
  k_0_B = stop(k_B)
  cs = _candidate_solve(stop(x_BF), stop(vals_BM), k_0_B, inv_a)
  sol = _finish_solution(cs.solution, k_0_B, stop(alpha), num_f)
  # The solve is exact without the full sort; S's denominator holds the tail's density where it matters.
  exact = (~cs.needs_full & jnp.all((cs.tail_computed | cs.tail_negligible_B) & ~cs.nan_B & (k_0_B < num_f))
           & (stop(alpha) > 0))
  w_BM = _candidate_weights(vals_BM, k_B, alpha, sol)
  full = None
  if full_weights:
    full = _weights(stop(x_BF), sol, inv_a).astype(x.dtype).reshape(x.shape)
  return SoftCandidates(w_BM.astype(x.dtype).reshape(*lead_shape, num_m), idx_BM.reshape(*lead_shape, num_m),
                        exact, cs.tail_negligible_B.reshape(lead_shape), full)


@jax.custom_vjp
def _candidate_weights(vals_BM, k_B, alpha, sol):
  """The weights of the candidates from a solution ``sol`` solved (without gradient) from these
  values, ``k`` and ``alpha``; the VJP differentiates that solution implicitly."""
  return _weights(vals_BM, sol, _inv_alpha(alpha, vals_BM.dtype))


def _candidate_weights_fwd(vals_BM, k_B, alpha, sol):
  inv_a = _inv_alpha(alpha, vals_BM.dtype)
  return _weights(vals_BM, sol, inv_a), (vals_BM, sol, inv_a)


def _candidate_weights_bwd(res, v_BM):
  vals_BM, sol, inv_a = res
  v_pivot_B = jnp.take_along_axis(v_BM, sol.pivot_B[:, None], axis=1)[:, 0]  # pivot: a candidate position
  dx_BM, slope_B, da = _vjp_on_candidates(vals_BM, v_BM, sol, inv_a, _log_scale(sol, inv_a), v_pivot_B,
                                          tail_v_zero=True)
  dk_B = jnp.where(sol.grad_on_B | jnp.isnan(sol.scale_B), slope_B, 0.0)
  return dx_BM, dk_B.astype(vals_BM.dtype), da.astype(inv_a.dtype), None


_candidate_weights.defvjp(_candidate_weights_fwd, _candidate_weights_bwd)
