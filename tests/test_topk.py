"""Tests for softsae_jax.topk: LapSum soft top-k and hard top-k.

Compilation dominates on CPU, so the tests share a few jitted functions (``_vjp_fn``, ``_fwd_fn``) and
shapes, and those are compiled with LLVM's backend optimisation off (same HLO and fusions, same
float semantics -- XLA never reassociates floats -- about half the compile time). The tests of jit,
vmap, retracing and finite differences compile with the default options, and so do the
``chex.variants`` tests (``TestWithAndWithoutJit``), which run each pure function both under
``jax.jit`` and op by op. Tests marked ``slow`` (tens of seconds of compiling on 2 CPU cores) run in
``make test-all`` only.
"""

import functools
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softsae_jax import topk
from softsae_jax.topk import hard_topk, hard_topk_mask, soft_topk

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "lapsum_topk_vectors.npz")
NUM_B, NUM_F, MAX_K = 8, 96, 24
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


# ------------------------------------------------------------------------------------------------
# Independent float64 NumPy reference: bisection on sum_j L((x_j - b)/a) = k.


def _laplace_cdf(t):
  return np.where(t <= 0, 0.5 * np.exp(np.minimum(t, 0.0)), 1.0 - 0.5 * np.exp(-np.maximum(t, 0.0)))


def np_soft_topk(x_BF, k_B, alpha, iters=200):
  x_BF = np.asarray(x_BF, np.float64)
  k_B = np.asarray(k_B, np.float64)
  num_f = x_BF.shape[1]
  pad = alpha * (math.log(2 * num_f) + 40.0)
  lo_B = x_BF.min(axis=1) - pad  # G(lo) ~ F > k
  hi_B = x_BF.max(axis=1) + pad  # G(hi) ~ 0 < k
  for _ in range(iters):
    mid_B = 0.5 * (lo_B + hi_B)
    above_B = _laplace_cdf((x_BF - mid_B[:, None]) / alpha).sum(axis=1) > k_B
    lo_B = np.where(above_B, mid_B, lo_B)
    hi_B = np.where(above_B, hi_B, mid_B)
  return _laplace_cdf((x_BF - 0.5 * (lo_B + hi_B)[:, None]) / alpha)


def _rel(out, ref):
  return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref))


# ------------------------------------------------------------------------------------------------
# Shared jitted functions.


@functools.lru_cache(maxsize=None)
def _vjp_fn(max_k):
  """jit of (x, k, alpha, v) -> (w, (dx, dk, dalpha))."""

  def run(x, k, alpha, v):
    w, vjp = jax.vjp(lambda x_, k_, a_: soft_topk(x_, k_, a_, max_k=max_k), x, k, alpha)
    return w, vjp(v)

  return jax.jit(run, compiler_options=_FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def _fwd_fn(max_k):
  return jax.jit(lambda x, k, alpha: soft_topk(x, k, alpha, max_k=max_k),
                 compiler_options=_FAST_COMPILE)


def _data(seed, num_b=NUM_B, num_f=NUM_F, relu=False):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_b, num_f))
  if relu:
    x = np.maximum(0.3 * x - 0.3, 0.0)
  return jnp.asarray(x, jnp.float32)


def _ks(seed, num_b=NUM_B, lo=1.0, hi=MAX_K):
  return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, size=num_b), jnp.float32)


# ------------------------------------------------------------------------------------------------
# Reference vectors from the authors' kernel (float64), evaluated in float32.


def _golden_cases():
  data = np.load(GOLDEN)
  return [{name: data[f"case{i}_{name}"] for name in
           ("x", "k", "alpha", "weights", "cotangent", "grad_x", "grad_k")}
          for i in range(int(data["n_cases"]))]


@pytest.mark.parametrize("path", ["full", pytest.param("max_k", marks=pytest.mark.slow)])
def test_reference_vectors(path):
  # All cases are padded to one shape with -inf entries (weight 0, no effect on the threshold, zero
  # gradient) so that one compilation serves every case on the full path.
  pad_b, pad_f = 8, 4096
  for i, case in enumerate(_golden_cases()):
    num_b, num_f = case["x"].shape
    x = np.full((pad_b, pad_f), -np.inf)
    x[:num_b, :num_f] = case["x"]
    k = np.full(pad_b, 1.0)
    k[:num_b] = case["k"]
    v = np.zeros((pad_b, pad_f))
    v[:num_b, :num_f] = case["cotangent"]
    max_k = None if path == "full" else int(math.ceil(case["k"].max()))
    alpha = float(case["alpha"])
    w, (dx, dk, _) = _vjp_fn(max_k)(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32),
                                    jnp.float32(alpha), jnp.asarray(v, jnp.float32))
    chex.assert_type(w, np.float32)
    assert np.all(np.asarray(w)[:num_b, num_f:] == 0)  # the -inf padding weighs nothing
    w = np.asarray(w)[:num_b, :num_f]
    dx = np.asarray(dx)[:num_b, :num_f]
    dk = np.asarray(dk)[:num_b]
    assert _rel(w, case["weights"]) <= 1e-4, i
    assert np.max(np.abs(w.astype(np.float64).sum(1) - case["k"]) / case["k"]) <= 1e-4, i
    # Gradient rows: skip rows where the reference is identically zero (its density underflowed
    # everywhere and the kernel returns 0 by convention). Rows whose reference is at the float64
    # rounding floor of q * v (|g| < 1e-9 max|v| / a, e.g. 1e-13 noise or 1e-42) carry no signal:
    # there only require that ours is also negligible on the same absolute scale.
    scale = np.abs(case["cotangent"]).max() / alpha
    row_norm = np.linalg.norm(case["grad_x"], axis=1)
    live = row_norm > 1e-9 * scale
    quiet = (row_norm > 0) & ~live
    if live.any():
      assert _rel(dx[live], case["grad_x"][live]) <= 5e-3, i
      assert _rel(dk[live], case["grad_k"][live]) <= 5e-3, i
    if quiet.any():
      assert np.abs(dx[quiet]).max() <= 1e-6 * scale, i
    # Where even float64 underflowed, dL/dk is still the density-weighted mean of v next to the
    # threshold (relative densities): finite and bounded by |v|.
    chex.assert_tree_all_finite(dk)
    assert np.all(np.abs(dk) <= np.abs(case["cotangent"]).max() + 1e-6)


def test_integer_k_small_alpha_slope_does_not_vanish():
  # Integer k puts the threshold mid-gap: every density underflows in float32, yet dL/dk = S must be
  # the density-weighted mean of v at the two entries adjacent to the threshold.
  x = jnp.asarray([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0]], jnp.float32)
  v = jnp.asarray([[0.0, 0.0, 0.7, 0.3, 0.0, 0.0]], jnp.float32)
  w, (dx, dk, _) = _vjp_fn(None)(x, jnp.asarray([3.0]), jnp.float32(1e-4), v)
  np.testing.assert_allclose(w, [[1, 1, 1, 0, 0, 0]], atol=1e-6)
  np.testing.assert_allclose(dk, [0.5], rtol=1e-5)  # equal densities at 1.0 and 0.0
  chex.assert_tree_all_finite(dx)


# ------------------------------------------------------------------------------------------------
# Invariants and limits.


@pytest.mark.parametrize("max_k", [None, MAX_K])
@pytest.mark.parametrize("alpha", [1e-3, 0.1, 3.0])
def test_invariants(max_k, alpha):
  x = _data(0)
  k = _ks(1).at[0].set(7.0)  # one integer k
  w = np.asarray(_fwd_fn(max_k)(x, k, jnp.float32(alpha)))
  assert np.all(w >= 0) and np.all(w <= 1)
  np.testing.assert_allclose(w.sum(1), k, rtol=1e-5)
  # Monotone: a larger score never gets a smaller weight.
  order = np.argsort(np.asarray(x), axis=1)
  assert np.all(np.diff(np.take_along_axis(w, order, axis=1), axis=1) >= -1e-6)
  # Permutation equivariance.
  perm = np.random.default_rng(2).permutation(NUM_F)
  w_perm = np.asarray(_fwd_fn(max_k)(x[:, perm], k, jnp.float32(alpha)))
  np.testing.assert_allclose(w_perm, w[:, perm], atol=1e-6)
  # Independent float64 bisection.
  np.testing.assert_allclose(w, np_soft_topk(x, k, alpha), atol=2e-5)


def test_numpy_reference_relu_rows_and_ties():
  x = np.array(_data(3, relu=True))  # mostly exact zeros
  x[1, :10] = 0.5  # a block of ties
  k = np.asarray(_ks(4, lo=0.5, hi=60.0))
  for alpha in (1e-3, 0.05, 1.0):
    w = np.asarray(_fwd_fn(None)(jnp.asarray(x), jnp.asarray(k), jnp.float32(alpha)))
    np.testing.assert_allclose(w, np_soft_topk(x, k, alpha), atol=2e-5)
    assert np.ptp(w[1, :10]) == 0  # tied entries, identical weights


def test_hard_limit_small_alpha():
  rng = np.random.default_rng(5)
  x = jnp.asarray(np.stack([rng.permutation(NUM_F) for _ in range(NUM_B)]) * 0.01, jnp.float32)
  whole = rng.integers(1, MAX_K - 1, size=NUM_B)
  frac = rng.uniform(0.05, 0.45, size=NUM_B)
  k = jnp.asarray(whole + frac, jnp.float32)
  for max_k in (None, MAX_K):
    w = np.asarray(_fwd_fn(max_k)(x, k, jnp.float32(1e-5)))
    ranks = np.argsort(np.argsort(-np.asarray(x), axis=1), axis=1)
    expected = np.where(ranks < whole[:, None], 1.0, 0.0)
    expected = np.where(ranks == whole[:, None], frac[:, None], expected)
    np.testing.assert_allclose(w, expected, atol=1e-5)
    mask = np.asarray(hard_topk_mask(x, k, max_k=MAX_K))
    np.testing.assert_array_equal(mask, w > 0.5)


# ------------------------------------------------------------------------------------------------
# Fast (max_k) path == full path, including the fallback.


def test_max_k_path_matches_full_path_values_and_grads():
  for seed, relu, alpha in [(7, False, 0.3), (8, True, 1e-2), (9, False, 1e-4), (10, True, 1e-4)]:
    x = _data(seed, relu=relu)
    k = _ks(seed + 1)
    v = _data(seed + 2)
    w_full, grads_full = _vjp_fn(None)(x, k, jnp.float32(alpha), v)
    w_fast, grads_fast = _vjp_fn(MAX_K)(x, k, jnp.float32(alpha), v)
    np.testing.assert_allclose(w_fast, w_full, atol=2e-6)
    scale = np.abs(np.asarray(grads_full[0])).max() + 1e-30
    np.testing.assert_allclose(grads_fast[0], grads_full[0], atol=1e-4 * scale)
    np.testing.assert_allclose(grads_fast[1], grads_full[1], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(grads_fast[2], grads_full[2], rtol=1e-3, atol=1e-3 * scale)


def test_max_k_fallback_rows():
  x = np.array(_data(11))
  k = np.array(_ks(12))
  num_m = MAX_K + topk._EXTRA_CANDIDATES
  # Row 0: 44 entries tied at 5 (more than the M = max_k + 16 = 40 candidates), k = 23 <= max_k.
  # At b = s_M = 5 the row weighs only 44 / 2 = 22 < k, so the threshold lies below the candidates:
  # the exact full-sort fallback must run, and the tied entries share k (23 / 44 each at small
  # alpha).
  assert num_m < 44
  x[0, :44] = 5.0
  k[0] = 23.0
  # Row 1: all-zero row: 0 < k < F gives k / F everywhere (also below s_M for k > F / 2).
  x[1] = 0.0
  k[1] = 60.0
  # Row 2: k above max_k (max_k is only a hint).
  x[2, :40] += 10.0
  k[2] = 30.5
  cand = np.sort(x[0])[::-1][:num_m]
  g_at_s_m = np.sum(_laplace_cdf((x[0] - cand[-1]) / 1e-4))
  assert k[0] > g_at_s_m  # the setup really forces the fallback
  x, k = jnp.asarray(x), jnp.asarray(k)
  v = _data(13)
  for alpha in (1e-4, 0.1):
    w_full, g_full = _vjp_fn(None)(x, k, jnp.float32(alpha), v)
    w_fast, g_fast = _vjp_fn(MAX_K)(x, k, jnp.float32(alpha), v)
    np.testing.assert_allclose(w_fast, w_full, atol=2e-6)
    np.testing.assert_allclose(np.asarray(w_fast).sum(1), k, rtol=1e-5)
    np.testing.assert_allclose(g_fast[0], g_full[0], atol=1e-5 / alpha)
    np.testing.assert_allclose(g_fast[1], g_full[1], atol=1e-5)
    if alpha == 1e-4:
      np.testing.assert_allclose(w_fast[0, :44], 23.0 / 44, rtol=1e-5)
    np.testing.assert_allclose(w_fast[1], 60.0 / NUM_F, rtol=1e-5)


def test_max_k_path_skipped_tail_with_dense_backward():
  # Near-ties above the threshold: the tail provably weighs < 1e-10 (tail pass skipped), yet its
  # density is not negligible next to the largest one, so the dense backward must recompute the
  # density total itself.
  alpha = 0.01
  x = np.full((NUM_B, NUM_F), 1.0 - 30.3 * alpha, np.float32)
  x[:, :19] = 1.0 + np.linspace(0, 0.5 * alpha, 19)[None, :] * (np.arange(NUM_B) % 2)[:, None]
  k = jnp.full((NUM_B,), 17.5, jnp.float32)
  x = jnp.asarray(x)
  # Jitted like inside _vjp_fn(MAX_K) (op by op it compiles for longer than the test runs).
  fast_solution = jax.jit(topk._fast_solution, static_argnums=3, compiler_options=_FAST_COMPILE)
  _, _, sparse_grad, rel_sum_complete = fast_solution(x, k, jnp.float32(1 / alpha),
                                                      MAX_K + topk._EXTRA_CANDIDATES)
  assert not bool(sparse_grad) and not bool(rel_sum_complete)  # the case this test is about
  v = _data(27)
  w_full, g_full = _vjp_fn(None)(x, k, jnp.float32(alpha), v)
  w_fast, g_fast = _vjp_fn(MAX_K)(x, k, jnp.float32(alpha), v)
  np.testing.assert_allclose(w_fast, w_full, atol=2e-6)
  np.testing.assert_allclose(g_fast[0], g_full[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_fast[1], g_full[1], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Gradients: finite differences in float64.


@pytest.mark.parametrize("max_k", [None, MAX_K])
def test_finite_differences_float64(max_k):
  with jax.enable_x64(True):
    rng = np.random.default_rng(13)
    x = jnp.asarray(rng.normal(size=(3, 40)), jnp.float64)
    k = jnp.asarray([2.5, 7.25, 16.0], jnp.float64)
    alpha = jnp.asarray(0.4, jnp.float64)
    v = jnp.asarray(rng.normal(size=(3, 40)), jnp.float64)
    fn = jax.jit(lambda x_, k_, a_: jnp.sum(soft_topk(x_, k_, a_, max_k=max_k if max_k else None)
                                            * v))
    chex.assert_type(jax.eval_shape(soft_topk, x, k, alpha), jnp.float64)
    jax.test_util.check_grads(fn, (x, k, alpha), order=1, modes=["rev"], eps=1e-5, atol=1e-6,
                              rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Transformations and dtypes.


@pytest.mark.slow
def test_jit_equals_no_jit_and_vmap_equals_row_loop():
  x, k = _data(14), _ks(15)
  batched_full = _fwd_fn(None)(x, k, jnp.float32(0.05))
  batched_fast = _fwd_fn(MAX_K)(x, k, jnp.float32(0.05))
  np.testing.assert_allclose(batched_fast, batched_full, atol=2e-6)
  # No jit: op-by-op on single rows ([F] scores, 0-d k).
  for i in range(2):
    np.testing.assert_allclose(soft_topk(x[i], k[i], 0.05), batched_full[i], atol=1e-6)
  # vmap over rows of the max_k path (its lax.cond becomes a select there).
  row_fn = jax.jit(jax.vmap(lambda r, kk: soft_topk(r, kk, 0.05, max_k=MAX_K)))
  np.testing.assert_allclose(row_fn(x, k), batched_fast, atol=1e-6)
  # [..., F] with two leading dims and a scalar k.
  w3 = jax.jit(lambda x_: soft_topk(x_, 3.0, 0.05))(x.reshape(2, 4, NUM_F))
  chex.assert_shape(w3, (2, 4, NUM_F))
  np.testing.assert_allclose(np.asarray(w3).sum(-1), 3.0, rtol=1e-5)


def test_no_retrace_when_alpha_changes():
  traces = []

  @jax.jit
  def step(x, k, alpha):
    traces.append(1)
    return soft_topk(x, k, alpha)

  x, k = _data(18), _ks(19)
  for alpha in (1.0, 0.5, 1e-2, 1e-4):  # an annealed 0-d array: one trace
    step(x, k, jnp.float32(alpha)).block_until_ready()
  assert len(traces) == 1
  # Python floats are traced jit arguments too (weakly typed, hence one more trace, then none).
  for alpha in (0.3, 0.03, 3e-4):
    step(x, k, alpha).block_until_ready()
  assert len(traces) == 2


def test_low_precision_in_low_precision_out():
  x, k = _data(20).astype(jnp.bfloat16), _ks(21)
  w, (dx, dk, _) = _vjp_fn(None)(x, k, jnp.float32(0.1), jnp.ones_like(x))
  chex.assert_type([w, dx, dk], [jnp.bfloat16, jnp.bfloat16, jnp.float32])
  ref = _fwd_fn(None)(x.astype(jnp.float32), k, jnp.float32(0.1))  # computed in float32 inside
  np.testing.assert_allclose(np.asarray(w, np.float32), ref, atol=1e-2)
  w16 = _fwd_fn(MAX_K)(x.astype(jnp.float16), k, jnp.float32(0.1))
  chex.assert_type(w16, jnp.float16)
  np.testing.assert_allclose(np.asarray(w16, np.float32), ref, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Edge cases.


@pytest.mark.parametrize("max_k", [None, MAX_K])
def test_edge_rows(max_k):
  x = np.array(_data(22))
  k = np.full(NUM_B, 5.0, np.float32)
  k[0], k[1], k[2] = 0.0, -1.0, NUM_F + 3  # k <= 0 -> zeros, k >= F -> ones
  x[3] = 0.0  # all-zero row: k / F everywhere
  x[4, 3] = np.nan  # NaN row
  x[5, :2] = np.inf  # 2 < k entries at +inf: weight 1, the rest share k - 2
  x[5, 10:20] = -np.inf  # -inf: weight 0
  x[6, :8] = np.inf  # 8 >= k entries at +inf: they share k
  x[7, 3:] = -np.inf  # 3 finite entries < k = 5: they get 1, the -inf entries share 2
  x, k = jnp.asarray(x), jnp.asarray(k)
  v = _data(23)
  w, (dx, dk, _) = _vjp_fn(max_k)(x, k, jnp.float32(0.1), v)
  w, dx, dk = map(np.asarray, (w, dx, dk))
  np.testing.assert_array_equal(w[0], 0.0)
  np.testing.assert_array_equal(w[1], 0.0)
  np.testing.assert_array_equal(w[2], 1.0)
  np.testing.assert_allclose(w[3], 5.0 / NUM_F, rtol=1e-6)
  assert np.all(np.isnan(w[4]))
  np.testing.assert_array_equal(w[5, :2], 1.0)
  np.testing.assert_array_equal(w[5, 10:20], 0.0)
  np.testing.assert_allclose(w[5].sum(), 5.0, rtol=1e-5)
  finite = np.isfinite(np.asarray(x)[5])
  np.testing.assert_allclose(w[5, finite], np_soft_topk(np.asarray(x)[5:6, finite], [3.0], 0.1)[0],
                             atol=1e-5)
  np.testing.assert_allclose(w[6, :8], 5.0 / 8, rtol=1e-6)
  np.testing.assert_array_equal(w[6, 8:], 0.0)
  np.testing.assert_array_equal(w[7, :3], 1.0)
  np.testing.assert_allclose(w[7, 3:], 2.0 / (NUM_F - 3), rtol=1e-5)
  # Other rows are untouched by the NaN row.
  chex.assert_tree_all_finite(np.delete(w, 4, axis=0))
  # Gradients: zero on the constant rows, NaN on the NaN row, finite elsewhere.
  for r in (0, 1, 2, 6, 7):
    np.testing.assert_array_equal(dx[r], 0.0)
    assert dk[r] == 0.0
  assert np.all(np.isnan(dx[4]))
  chex.assert_tree_all_finite(np.delete(dx, 4, axis=0))
  np.testing.assert_allclose(dx[3].sum(), 0.0, atol=1e-5)  # tied row: dx sums to zero
  np.testing.assert_allclose(dk[3], np.asarray(v)[3].mean(), rtol=1e-5)  # S = mean v


def test_argument_errors():
  with pytest.raises(TypeError, match="floating"):
    soft_topk(jnp.arange(6).reshape(2, 3), jnp.ones(2), 0.1)
  with pytest.raises(ValueError, match="k of shape"):
    soft_topk(jnp.ones((2, 3)), jnp.ones(3), 0.1)
  with pytest.raises(ValueError, match="alpha"):
    soft_topk(jnp.ones((2, 3)), jnp.ones(2), jnp.ones(2))
  with pytest.raises(TypeError, match="max_k"):
    soft_topk(jnp.ones((2, 3)), jnp.ones(2), 0.1, max_k=2.0)
  with pytest.raises(ValueError, match="max_k"):
    hard_topk_mask(jnp.ones((2, 3)), jnp.ones(2), max_k=4)


# ------------------------------------------------------------------------------------------------
# Hard top-k, and the pure functions with and without jit (chex.variants).


class TestWithAndWithoutJit(chex.TestCase):
  """The pure functions under ``jax.jit`` and op by op (``chex.variants``): the same results."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_softmax_regime_large_alpha(self):
    x = _data(6)
    k = jnp.full((NUM_B,), 1.5, jnp.float32)
    alpha = 20.0  # k <= sum_j exp((x_j - max x)/a) / 2 holds by a wide margin
    w = self.variant(soft_topk)(x, k, jnp.float32(alpha))
    chex.assert_shape(w, (NUM_B, NUM_F))
    chex.assert_trees_all_close(w, k[:, None] * jax.nn.softmax(x / alpha, axis=1), rtol=1e-5, atol=0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_nonpositive_alpha_gives_nan(self):
    w = self.variant(soft_topk)(_data(24), _ks(25), jnp.float32(0.0))
    assert np.all(np.isnan(np.asarray(w)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_hard_topk_mask_per_row_k_matches_numpy(self):
    rng = np.random.default_rng(26)
    x = rng.normal(size=(NUM_B, NUM_F)).astype(np.float32)
    k = np.array([0, 1, 2.9, 5, 7.5, 11, MAX_K, 3.0], np.float32)
    mask = np.asarray(self.variant(hard_topk_mask, static_argnames="max_k")(x, k, max_k=MAX_K))
    order = np.argsort(-x, axis=1, kind="stable")
    for r in range(NUM_B):
      expected = np.zeros(NUM_F, bool)
      expected[order[r, :int(np.floor(k[r]))]] = True
      np.testing.assert_array_equal(mask[r], expected)
    np.testing.assert_array_equal(mask.sum(1), np.floor(k))
    kept = self.variant(hard_topk, static_argnames="max_k")(jnp.asarray(x, jnp.bfloat16),
                                                             jnp.asarray(k, jnp.int32), max_k=MAX_K)
    chex.assert_type(kept, jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(kept, np.float32) != 0, mask)

  @chex.variants(with_jit=True, without_jit=True)
  def test_hard_topk_ties_follow_lax_top_k_order(self):
    x = jnp.zeros((1, 6), jnp.float32)
    mask = self.variant(hard_topk_mask, static_argnames="max_k")(x, jnp.asarray([2]), max_k=3)
    np.testing.assert_array_equal(mask, [[True, True, False, False, False, False]])


def test_docstring_documents_the_operator():
  doc = soft_topk.__doc__
  for needle in ("Args:", "Returns:", "Examples:", "Edge cases", "Gradients", "2503.06242",
                 "2605.06610", "NaN", "inf", "max_k"):
    assert needle in doc, needle


@pytest.mark.parametrize("f,k", [(4096, 32), (2048, 32), (1024, 16)])
def test_chunked_top_k_is_lax_top_k_exactly(f, k):
  """topk.top_k's pure-XLA path (chunked on the CPU where F >= 64 k; what runs without the native
  kernel) returns lax.top_k's values and indices bit for bit: ReLU zeros of both signs, many ties, NaN
  and infinities, leading dims. The native kernel's own test is tests/test_native.py."""
  assert f >= topk._CHUNKED_MIN_RATIO * k and f % topk._CHUNK == 0  # the chunked path runs
  rng = np.random.default_rng(f + k)
  x = rng.normal(size=(24, f)).astype(np.float32)
  relu = np.maximum(x - 0.5, 0.0)
  relu[::2] *= -1.0  # -0.0 zeros in every other row
  zeros = np.zeros((6, f), np.float32)
  zeros[:, ::7] = -0.0
  zeros[1, 5], zeros[2, 100:] = 1.0, 2.0
  odd = x.copy()
  odd[0, [3, 70, 500]] = np.nan
  odd[1, :] = -np.inf
  odd[2, 9] = np.inf
  for case in (x, relu, zeros, np.round(x * 2) / 2, odd, x.reshape(2, 12, f)):
    want_v, want_i = jax.jit(lambda a: jax.lax.top_k(a, k))(case)
    got_v, got_i = jax.jit(lambda a: topk.xla_top_k(a, k))(case)
    np.testing.assert_array_equal(np.asarray(got_v).view(np.int32), np.asarray(want_v).view(np.int32))
    np.testing.assert_array_equal(got_i, want_i)
