"""``softsae bench headroom``: what can a per-token k gain with one trained dictionary?

A per-token-k SAE (SoftSAE, BatchTopK at inference, JumpReLU) differs from TopK in two ways: it
learns another dictionary, and it spends the same mean L0 differently across tokens. This bench
holds the dictionary fixed and measures the second part alone, on the rows passed as ``--data``
(pass held-out rows).

Each row t keeps its j largest ReLU pre-activations (the TopK/SoftSAE inference rule, ties in
``lax.top_k`` order, for any arch's workdir) and is decoded by the run's decoder:

  e_t(j) = ||x_t - b_dec - sum_{i<j} a_t,(i) W_dec[(i)]||^2,   j = 0..K_max    (normalised units)

and an allocation (j_t) has FVU = sum_t e_t(j_t) / sum_t ||x_t - mean x||^2, the FVU of
``softsae eval`` (:meth:`softsae_jax.evaluate.Accumulator.fvu`; the ratio does not depend on the
norm factor). At a mean L0 m (budget M = round(N m) atoms over the N rows) it compares:

* **fixed**: j_t = m for every row (the FVU curve at m). A non-integer m is the linear interpolation
  between floor(m) and ceil(m): the expected FVU of giving ceil(m) to a random share m - floor(m)
  of the rows.
* **oracle**: the allocation minimising sum_t e_t(j_t) subject to sum_t j_t = M, 0 <= j_t <= K_max
  (:func:`oracle_allocation`). Marginal gains g_t(j) = e_t(j-1) - e_t(j) need not decrease in j
  (the codes are the encoder's, not least-squares fits; an atom can even raise the error), so greedy
  water-filling on raw gains is not optimal. The oracle is water-filling on each row's lower convex
  hull of e_t: a water level lambda (a Lagrange multiplier) gives each row argmin_j e_t(j) + lambda j,
  bisected until sum_t j_t brackets M; the rows at the margin are then filled up to exactly M. Its
  FVU is achievable; ``fvu_bound`` is the Lagrangian dual max_lambda [sum_t min_j (e_t(j) + lambda j)
  - lambda M], a certified lower bound on every allocation of M atoms. The two differ by at most the
  hull gap of the one row filled partly, so the exact optimum is pinned between them.
* **k-hat** (SoftSAE runs): j_t = floor(k-hat_t), the run's own inference rule. Its mean L0 is its
  own, so it gets a row of its own with every other allocation at that same mean L0.
* **threshold**: one global threshold tau on the pre-activations, chosen on these same rows so that
  the mean count is exactly m (the M largest of the rows' top-K_max activations; ties at tau broken
  arbitrarily): the BatchTopK/JumpReLU-style inference rule with the best single threshold in hindsight.

``oracle/fixed`` is the best any per-token allocation of this dictionary's top-j latents can do
relative to TopK: if it is close to 1, a per-token-k method can beat TopK at matched L0 only through
a better dictionary. It bounds allocation over the encoder's ranking with the encoder's
coefficients; picking other subsets or refitting coefficients (matching pursuit) is not covered.
``k-hat/fixed`` and ``khat_share_of_headroom`` = (fixed - k-hat)/(fixed - oracle) say how much of
that SoftSAE's own allocation captures. ``fvu_by_j[j]`` is the FVU of every row keeping j latents
(j = 0..K_max): TopK's FVU at k = j *with this dictionary*, which for a TopK run at its own k is
what ``softsae eval`` reports.

Shapes: ``N`` rows, ``K`` = K_max, ``J`` = K_max + 1 (j = 0..K_max). e_NJ is float32 (4 N J bytes:
cap it with ``--max-rows``); sums are float64.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from typing import Any, NamedTuple

import numpy as np

from softsae_jax.cli_types import positive_float_list, positive_int
from softsae_jax.config import THRESHOLD_ARCHS, ConfigError

K_MAX_FACTOR = 4  # the default K_max: this many times the run's k (at least SoftSAE's k-hat bound), capped at F
DEFAULT_MAX_ROWS = 100_000


# ------------------------------------------------------------------------------ the per-row curves


def error_curves(params, x_BD, cfg, k_max: int):
  """Per row, the squared error of keeping its j largest ReLU pre-activations, j = 0..k_max.

  Pure (callers jit it, with ``cfg`` and ``k_max`` static).

  Args:
    params: the SAE's :class:`~softsae_jax.types.Params` (normalised units).
    x_BD: rows in normalised units (raw / norm factor).
    cfg: the run's :class:`~softsae_jax.config.SaeConfig` (the encoder's compute dtype).
    k_max: the largest count, ``1 <= k_max <= F``.

  Returns:
    ``(e_BJ, top_BK)``: ``e_BJ[b, j] = ||x_b - b_dec - sum_{i<j} top_BK[b, i] w_dec[idx_b(i)]||^2``
    (float32, J = k_max + 1), and the k_max largest pre-activations of each row in decreasing order
    (ties in ``lax.top_k`` order, as TopK/SoftSAE inference selects them).

  Examples:
    >>> import jax.numpy as jnp
    >>> from softsae_jax.config import SaeConfig
    >>> from softsae_jax.types import Params
    >>> eye = jnp.eye(3)
    >>> p = Params(w_enc=eye, b_enc=jnp.zeros(3), w_dec=eye, b_dec=jnp.zeros(3))
    >>> e_BJ, top_BK = error_curves(p, jnp.array([[3., 0., 1.]]), SaeConfig(arch="topk", d_in=3, n_latents=3, k=1), 3)
    >>> e_BJ.tolist(), top_BK.tolist()
    ([[10.0, 1.0, 0.0, 0.0]], [[3.0, 1.0, 0.0]])
  """
  import jax
  import jax.numpy as jnp

  from softsae_jax.sae import pre_acts

  pre_BF = pre_acts(params, x_BD, cfg)
  top_BK, idx_BK = jax.lax.top_k(pre_BF, k_max)
  r0_BD = x_BD.astype(jnp.float32) - params.b_dec[None, :]

  def add_one(r_BD, val_idx):
    val_B, idx_B = val_idx
    r_BD = r_BD - val_B[:, None] * jnp.take(params.w_dec, idx_B, axis=0)
    return r_BD, jnp.sum(r_BD * r_BD, axis=1)

  _, e_KB = jax.lax.scan(add_one, r0_BD, (top_BK.T, idx_BK.T))
  e_BJ = jnp.concatenate([jnp.sum(r0_BD * r0_BD, axis=1)[:, None], e_KB.T], axis=1)
  return e_BJ, top_BK


class Curves(NamedTuple):
  """A run's per-row error curves over a dataset's valid rows (see :func:`collect`)."""

  e_NJ: np.ndarray  # float32: squared error keeping the j largest, normalised units
  top_NK: np.ndarray  # float32: the K largest pre-activations, decreasing, normalised units
  khat_N: np.ndarray | None  # SoftSAE's k-hat; None for the other archs
  total_var: float  # sum_t ||x_t - mean x||^2, normalised units
  model: dict[str, Any]  # the run's own inference rule on these rows: fvu, l0_mean (as softsae eval)
  n_skipped: int  # non-finite rows left out (with skip_nonfinite)
  true_k_N: np.ndarray | None = None  # synthetic data's ground truth (its ``true_k`` side file); else None


def collect(model, ds, *, k_max: int, batch_size: int = 1024, max_rows: int | None = None,
            skip_nonfinite: bool = False) -> Curves:
  """:func:`error_curves` over the first ``max_rows`` rows of ``ds``, through the inference engine.

  The same scan as ``softsae eval`` (:func:`softsae_jax.evaluate.batches` and its
  :class:`~softsae_jax.evaluate.Accumulator`) also gives the run's own FVU and L0, the FVU
  denominator and SoftSAE's k-hat; only the valid rows are kept.
  """
  import jax

  from softsae_jax.evaluate import Accumulator, batches
  from softsae_jax.shards import DataError

  fn = jax.jit(functools.partial(error_curves, cfg=model.cfg.sae, k_max=k_max))
  acc = Accumulator(model)
  e_parts, top_parts, k_parts = [], [], []
  for b in batches(model, ds, batch_size=batch_size, skip_nonfinite=skip_nonfinite, max_rows=max_rows):
    acc.update(b)
    e_BJ, top_BK = fn(model.params, model.pad(b.x / np.float32(model.norm_factor), batch_size))
    n = len(b.x)
    e_parts.append(np.asarray(e_BJ)[:n][b.valid])
    top_parts.append(np.asarray(top_BK)[:n][b.valid])
    k_parts.append(np.asarray(b.k, np.float64)[b.valid])
  if acc.n == 0:
    raise DataError(f"{ds.path}: no finite rows among the {acc.n_skipped} rows scanned")
  summary = acc.summary()
  total_var = (acc.sum_x2 - float(np.sum(acc.sum_x_D ** 2)) / acc.n) / model.norm_factor ** 2
  return Curves(np.concatenate(e_parts), np.concatenate(top_parts),
                np.concatenate(k_parts) if model.arch == "softsae" else None, float(total_var),
                {"fvu": summary["fvu"], "l0_mean": summary["l0_mean"]}, acc.n_skipped)


# ---------------------------------------------------------------------------------- allocations


class Oracle(NamedTuple):
  """The oracle allocation of a budget (see :func:`oracle_allocation`)."""

  j_N: np.ndarray  # int64 atoms per row; sums to the budget
  err: float  # sum_t e_t(j_t): achieved
  bound: float  # a lower bound on sum_t e_t(j_t) over every allocation of the budget
  level: float | None  # the water level lambda: error reduction per atom at the margin (None: trivial budget)


def _lagrangian(e_NJ: np.ndarray, lam: float, chunk: int = 16384) -> tuple[np.ndarray, float]:
  """argmin_j e_t(j) + lam j per row (the smallest j on ties) and sum_t min_j (e_t(j) + lam j), float64."""
  n, jn = e_NJ.shape
  lam_J = lam * np.arange(jn, dtype=np.float64)
  j_N = np.empty(n, np.int64)
  total = 0.0
  for lo in range(0, n, chunk):
    v_CJ = e_NJ[lo:lo + chunk].astype(np.float64) + lam_J[None, :]
    j_C = np.argmin(v_CJ, axis=1)
    j_N[lo:lo + chunk] = j_C
    total += float(np.take_along_axis(v_CJ, j_C[:, None], axis=1).sum())
  return j_N, total


def _error(e_NJ: np.ndarray, j_N: np.ndarray) -> float:
  return float(np.take_along_axis(e_NJ, j_N[:, None], axis=1).sum(dtype=np.float64))


def oracle_allocation(e_NJ: np.ndarray, budget: int, *, max_iter: int = 200) -> Oracle:
  """The allocation of ``budget`` atoms over rows that (nearly) minimises the total error.

  Water-filling on each row's lower convex hull of e_t(j) (the module docstring): bisect the level
  lambda until the rows' Lagrangian choices argmin_j e_t(j) + lambda j bracket the budget, then fill
  the rows whose choice changes inside the bracket (best error reduction per atom first) up to
  exactly ``budget``, the last one partly. Every evaluated lambda gives the weak-duality bound
  sum_t min_j (e_t(j) + lambda j) - lambda budget <= the error of any allocation of ``budget``;
  ``bound`` is the largest. With convex e_t (decreasing gains) and no partial row, ``err`` is the
  optimum; otherwise optimum - ``bound`` and ``err`` - optimum are both at most one row's hull gap.

  Args:
    e_NJ: [N, J] errors e_t(j) for j = 0..J-1 (any real values).
    budget: total atoms, ``0 <= budget <= N (J - 1)``.
    max_iter: bisection steps at most (it stops earlier at float64 resolution).

  Returns:
    An :class:`Oracle`.

  Raises:
    ValueError: ``budget`` out of range.

  Examples:
    Row 0 gains little from its first atom and a lot from its second, so greedy on raw marginal
    gains (4, then 0.5, on row 1) misses the optimum (2, 0):

    >>> e_NJ = np.array([[10.0, 9.9, 0.0], [5.0, 1.0, 0.5]])
    >>> o = oracle_allocation(e_NJ, 2)
    >>> o.j_N.tolist(), o.err, round(o.bound, 6)
    ([2, 0], 5.0, 5.0)
  """
  n, jn = e_NJ.shape
  k_max = jn - 1
  if not 0 <= budget <= n * k_max:
    raise ValueError(f"Expected 0 <= budget <= N * K_max = {n * k_max}, got {budget}")
  if budget in (0, n * k_max):
    j_N = np.full(n, budget // n if n else 0, np.int64)
    err = _error(e_NJ, j_N)
    return Oracle(j_N, err, err, None)
  scale = float(np.max(np.abs(e_NJ))) + 1.0
  # at lo every row takes K_max atoms, at hi none (|e_t(j) - e_t(j')| < scale)
  lo, hi = -2.0 * scale, 2.0 * scale
  j_more, j_fewer = np.full(n, k_max, np.int64), np.zeros(n, np.int64)
  bound, level = -math.inf, 0.0
  for _ in range(max_iter):
    mid = 0.5 * (lo + hi)
    if not lo < mid < hi:
      break
    j_N, total = _lagrangian(e_NJ, mid)
    bound = max(bound, total - mid * budget)
    s = int(j_N.sum())
    if s == budget:
      return Oracle(j_N, _error(e_NJ, j_N), bound, mid)
    if s > budget:
      lo, j_more = mid, j_N
    else:
      hi, j_fewer = mid, j_N
    level = mid
  j_more = np.maximum(j_more, j_fewer)  # the choice is monotone in lambda; guard against float ties
  missing = budget - int(j_fewer.sum())
  rows = np.flatnonzero(j_more > j_fewer)
  steps = j_more[rows] - j_fewer[rows]
  gain_per_atom = (e_NJ[rows, j_fewer[rows]].astype(np.float64) - e_NJ[rows, j_more[rows]]) / steps
  order = np.argsort(-gain_per_atom, kind="stable")
  rows, steps = rows[order], steps[order]
  before = np.cumsum(steps) - steps  # atoms given to the rows ahead in line
  take = np.clip(missing - before, 0, steps)
  j_N = j_fewer.copy()
  j_N[rows] += take
  return Oracle(j_N, _error(e_NJ, j_N), bound, level)


def threshold_allocation(top_NK: np.ndarray, budget: int) -> tuple[np.ndarray, float | None]:
  """One global threshold: the ``budget`` largest of all rows' top-K activations.

  Args:
    top_NK: [N, K] each row's K largest pre-activations, in decreasing order.
    budget: total atoms, ``0 <= budget <= N K``.

  Returns:
    ``(j_N, tau)``: the count per row above the threshold (ties at tau broken arbitrarily so that
    the counts sum to ``budget``) and tau, the smallest kept activation (None when none is kept).

  Examples:
    >>> j_N, tau = threshold_allocation(np.array([[5.0, 1.0, 0.5], [3.0, 2.0, 0.0]]), 3)
    >>> j_N.tolist(), tau
    ([1, 2], 2.0)
  """
  n, k = top_NK.shape
  if not 0 <= budget <= n * k:
    raise ValueError(f"Expected 0 <= budget <= N * K = {n * k}, got {budget}")
  if budget == 0:
    return np.zeros(n, np.int64), None
  flat = top_NK.reshape(-1)
  keep = np.argpartition(-flat, budget - 1)[:budget]
  return np.bincount(keep // k, minlength=n).astype(np.int64), float(flat[keep].min())


def fixed_fvu(fvu_J: np.ndarray, m: float) -> float:
  """The FVU of every row keeping m latents; a non-integer m interpolates linearly between
  floor(m) and ceil(m) (the expected FVU of giving ceil(m) to a random share m - floor(m) of rows).

  Examples:
    >>> fixed_fvu(np.array([1.0, 0.5, 0.3]), 1.25)
    0.45
  """
  lo = int(math.floor(m))
  p = m - lo
  return float(fvu_J[lo]) if p == 0 else float((1 - p) * fvu_J[lo] + p * fvu_J[lo + 1])


# ---------------------------------------------------------------------------------- the report


def _finite(x: float | None) -> float | None:
  return None if x is None or not math.isfinite(x) else float(x)


def _ratio(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None or b <= 0 else a / b


def _truth(curves: Curves, v_N: np.ndarray) -> dict[str, Any]:
  """With ground truth (synthetic data): ``v_N``'s Spearman with the true k and its mean per true k."""
  if curves.true_k_N is None:
    return {}
  from softsae_jax.stats import spearman

  t_N = curves.true_k_N
  return {"spearman_true_k": _finite(spearman(v_N, t_N)),
          "mean_by_true_k": {str(int(c)): float(v_N[t_N == c].mean()) for c in np.unique(t_N)}}


def _stats(curves: Curves, j_N: np.ndarray, err: float, **more: Any) -> dict[str, Any]:
  """FVU and the shape of one allocation: its mean L0 (the atoms it spends), the mean count of
  those that are nonzero, spread, histogram over 0..K_max, share of rows at K_max, its rank
  correlation with ||x - b_dec|| (the norm confound) and, on synthetic data, with the true k."""
  from softsae_jax.stats import spearman

  k_max = curves.e_NJ.shape[1] - 1
  n_pos_N = (curves.top_NK > 0).sum(axis=1)
  return {"fvu": err / curves.total_var, "l0_mean": float(j_N.mean()),
          "active_l0_mean": float(np.minimum(j_N, n_pos_N).mean()), "j_std": float(j_N.std()),
          "j_hist": np.bincount(j_N, minlength=k_max + 1).tolist(), "at_k_max_frac": float(np.mean(j_N == k_max)),
          "spearman_j_norm": _finite(spearman(j_N, curves.e_NJ[:, 0])), **_truth(curves, j_N), **more}


def compare_at(curves: Curves, fvu_J: np.ndarray, budget: int, *, source: str,
               j_khat_N: np.ndarray | None = None) -> dict[str, Any]:
  """Every allocation of ``budget`` atoms (mean L0 = budget / N) on ``curves``: one row of the table.

  ``j_khat_N``: SoftSAE's allocation floor(k-hat) (which spends ``budget`` atoms), compared too.
  """
  from softsae_jax.stats import spearman

  n = curves.e_NJ.shape[0]
  m = budget / n
  lo = int(math.floor(m))
  p = m - lo
  fixed = {"fvu": fixed_fvu(fvu_J, m), "l0_mean": m, "interpolated": p > 0, "j_low": lo,
           "share_j_high": p}
  n_pos_N = (curves.top_NK > 0).sum(axis=1)
  fixed["active_l0_mean"] = float((1 - p) * np.minimum(lo, n_pos_N).mean() + p * np.minimum(lo + 1, n_pos_N).mean())
  orc = oracle_allocation(curves.e_NJ, budget)
  oracle = _stats(curves, orc.j_N, orc.err, fvu_bound=orc.bound / curves.total_var, level=_finite(orc.level))
  j_thr, tau = threshold_allocation(curves.top_NK, budget)
  threshold = _stats(curves, j_thr, _error(curves.e_NJ, j_thr), tau=tau)
  row: dict[str, Any] = {"source": source, "budget": budget, "l0_mean": m, "fixed": fixed, "oracle": oracle,
                         "threshold": threshold}
  f = fixed["fvu"]
  row["ratios"] = {"oracle_over_fixed": _ratio(oracle["fvu"], f), "bound_over_fixed": _ratio(oracle["fvu_bound"], f),
                   "threshold_over_fixed": _ratio(threshold["fvu"], f)}
  if j_khat_N is not None:
    row["khat"] = _stats(curves, j_khat_N, _error(curves.e_NJ, j_khat_N), k_hat_mean=float(curves.khat_N.mean()),
                         spearman_khat_oracle_j=_finite(spearman(curves.khat_N, orc.j_N)),
                         **{f"k_hat_{key}": v for key, v in _truth(curves, curves.khat_N).items()})
    row["ratios"]["khat_over_fixed"] = _ratio(row["khat"]["fvu"], f)
    row["ratios"]["khat_share_of_headroom"] = (None if f - oracle["fvu"] <= 0 else
                                               (f - row["khat"]["fvu"]) / (f - oracle["fvu"]))
  return row


def headroom(curves: Curves, targets: list[float]) -> dict[str, Any]:
  """The allocations compared at every mean-L0 target, and at SoftSAE's own k-hat allocation.

  Args:
    curves: from :func:`collect` (or built by hand).
    targets: mean-L0 targets m, each ``0 < m <= K_max``; the budget is round(N m).

  Returns:
    ``{"fvu_by_j": [...], "rows": [...]}``: one row per target (source "target"), then for a
    SoftSAE run one at its k-hat allocation's own mean L0 (source "k-hat"); see :func:`compare_at`.

  Examples:
    Orthonormal atoms; half the rows need one atom, half three: at mean L0 2 the oracle and the
    threshold reconstruct every row exactly, TopK at k = 2 drops the third atom of half the rows.

    >>> e_NJ = np.array([[1., 0., 0., 0.], [1.25, 0.25, 0.09, 0.]] * 2, np.float32)
    >>> top_NK = np.array([[1., 0., 0.], [1., .4, .3]] * 2, np.float32)
    >>> r = headroom(Curves(e_NJ, top_NK, None, float(e_NJ[:, 0].sum()), {}, 0), [2])["rows"][0]
    >>> round(r["fixed"]["fvu"], 4), r["oracle"]["fvu"], r["threshold"]["fvu"], r["oracle"]["j_hist"]
    (0.04, 0.0, 0.0, [0, 2, 0, 2])
  """
  n, jn = curves.e_NJ.shape
  fvu_J = curves.e_NJ.sum(axis=0, dtype=np.float64) / curves.total_var
  rows = [compare_at(curves, fvu_J, int(round(m * n)), source="target") for m in targets]
  if curves.khat_N is not None:
    j_k = np.clip(np.floor(curves.khat_N).astype(np.int64), 0, jn - 1)
    rows.append(compare_at(curves, fvu_J, int(j_k.sum()), source="k-hat", j_khat_N=j_k))
  return {"fvu_by_j": fvu_J.tolist(), "rows": rows}


def headroom_table(res: dict[str, Any]) -> str:
  """The readable summary printed by ``softsae bench headroom`` (a Markdown table and notes)."""
  from softsae_jax.bench.output import fmt

  run, data = res["run"], res["data"]
  soft = any(r["source"] == "k-hat" for r in res["rows"])
  lines = [f"# softsae bench headroom: {run['arch']} run {run['workdir']} (F={run['n_latents']}, k={run['k']}, "
           f"step {run['step']})", "",
           f"{data['n_rows']} rows of {data['path']}" + (f" ({data['n_skipped']} non-finite skipped)"
                                                         if data["n_skipped"] else "")
           + f"; K_max = {res['k_max']}. FVU of each allocation of the same mean L0 over these rows; "
           "every row keeps its j largest pre-activations (the TopK rule) with this dictionary.", "",
           "| mean L0 | at | fixed k | oracle | oracle bound | " + ("k-hat | " if soft else "")
           + "threshold | oracle/fixed | " + ("k-hat/fixed | " if soft else "") + "threshold/fixed |",
           "|---|---|---|---|---|" + ("---|" if soft else "") + "---|---|" + ("---|" if soft else "") + "---|"]
  for r in res["rows"]:
    ratios = r["ratios"]
    kh = r.get("khat")
    cells = [f"{r['l0_mean']:.2f}", "target" if r["source"] == "target" else "k-hat's L0",
             fmt(r["fixed"]["fvu"], 4) + ("*" if r["fixed"]["interpolated"] else ""), fmt(r["oracle"]["fvu"], 4),
             fmt(r["oracle"]["fvu_bound"], 4)]
    cells += [fmt(kh["fvu"], 4) if kh else "–"] if soft else []
    cells += [fmt(r["threshold"]["fvu"], 4), fmt(ratios["oracle_over_fixed"])]
    cells += [fmt(ratios.get("khat_over_fixed"))] if soft else []
    cells += [fmt(ratios["threshold_over_fixed"])]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  if any(r["fixed"]["interpolated"] for r in res["rows"]):
    lines.append("\\* non-integer mean L0: linear interpolation between floor and ceil (a random mix of rows).")
  for r in res["rows"]:
    if "khat" in r:
      share = r["ratios"]["khat_share_of_headroom"]
      lines.append(f"k-hat (mean {r['khat']['k_hat_mean']:.2f}, L0 {r['l0_mean']:.2f}) captures "
                   f"{'–' if share is None else f'{100 * share:.0f}%'} of the oracle's headroom over fixed k; "
                   f"Spearman(k-hat, oracle j) = {fmt(r['khat']['spearman_khat_oracle_j'])}.")
  if any("spearman_true_k" in r["oracle"] for r in res["rows"]):
    for r in res["rows"]:
      parts = [f"{name} {fmt(r[name]['spearman_true_k'])}" for name in ("oracle", "khat", "threshold") if name in r]
      if "khat" in r:
        parts.append(f"k-hat itself {fmt(r['khat']['k_hat_spearman_true_k'])}")
      lines.append(f"Spearman with the true k at mean L0 {r['l0_mean']:.2f}: " + ", ".join(parts).replace("khat", "k-hat")
                   + "; oracle j by true k: " + " / ".join(f"{v:.2f}" for v in r["oracle"]["mean_by_true_k"].values())
                   + f" (k = {' / '.join(r['oracle']['mean_by_true_k'])}).")
  lines.append("Oracle: water-filling on each row's convex hull of e_t(j) (achieved FVU; the bound is the "
               "Lagrangian dual, below any allocation). Threshold: one global threshold on these same rows.")
  curve = res["fvu_by_j"]
  shown = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, len(curve) - 1} & set(range(1, len(curve))))
  lines.append("Fixed j for every row (FVU): " + ", ".join(f"j={j} {curve[j]:.4f}" for j in shown) + ".")
  lines.append(f"The run's own inference rule on these rows (= softsae eval): FVU {res['model']['fvu']:.4f} at "
               f"mean L0 {res['model']['l0_mean']:.2f}.")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- the command


def add_parser(sub) -> None:
  """Adds ``softsae bench headroom`` to the bench's subparsers."""
  s = sub.add_parser(
      "headroom", help="one dictionary: fixed k vs oracle per-token allocation vs k-hat vs one threshold",
      description="With one trained dictionary, the per-row FVU of keeping its j largest latents (j = 0..K_max) on "
      "--data, then the FVU at the same mean L0 of: fixed k; the oracle per-row allocation (water-filling on the "
      "convex hull of the marginal gains); SoftSAE's own floor(k-hat) (softsae runs); one global threshold. "
      "Bounds what any per-token-k method can gain with this dictionary. Prints a table; writes JSON to --out.")
  s.add_argument("--workdir", required=True, help="a workdir written by `softsae train` (any arch)")
  s.add_argument("--data", required=True, help="a softsae-activations/1 directory: pass held-out rows")
  s.add_argument("--ks", type=positive_float_list, metavar="M[,M...]",
                 help="comma-separated mean-L0 targets (default: the run's sae.k)")
  s.add_argument("--k-max", type=positive_int, metavar="K",
                 help=f"largest count per row (default {K_MAX_FACTOR} x the run's k, at least SoftSAE's k-hat "
                 "bound, at most F)")
  s.add_argument("--max-rows", type=positive_int, default=DEFAULT_MAX_ROWS, metavar="N",
                 help=f"use the first N rows (memory: 4 N (K_max + 1) bytes; default {DEFAULT_MAX_ROWS})")
  s.add_argument("--batch-size", type=positive_int, default=1024, metavar="B",
                 help="rows per inference call (default 1024)")
  s.add_argument("--skip-nonfinite", dest="skip_nonfinite", action="store_true", default=None,
                 help="leave NaN/Inf rows out instead of stopping (default: the run's data.skip_nonfinite)")
  s.add_argument("--out", help="the JSON (default WORKDIR/headroom.json)")
  s.set_defaults(bench_func=cmd_headroom)


def resolve_k_max(cfg, k_max: int | None) -> int:
  """``--k-max`` checked against the run, or its default.

  Raises:
    ConfigError: above F, or below a SoftSAE run's k-hat bound (floor(k-hat) could not be scored).
  """
  sae = cfg.sae
  bound = sae.kmax if sae.arch == "softsae" else 0
  if k_max is None:
    return min(sae.F, max(K_MAX_FACTOR * sae.k, bound))
  if k_max > sae.F:
    raise ConfigError(f"--k-max {k_max} exceeds the run's n_latents {sae.F}")
  if k_max < bound:
    raise ConfigError(f"--k-max {k_max} is below the run's k-hat bound sae.k_max={bound}: the k-hat allocation "
                      f"keeps up to {bound} latents per row")
  return k_max


def _with_truth(curves: Curves, ds, path: str) -> Curves:
  """Attaches synthetic data's ``true_k`` side file (its first rows, the ones scanned) when every shard
  has one and no row was skipped; otherwise the curves as they are."""
  from softsae_jax import synthetic

  if curves.n_skipped or not all(ds.side("true_k", i) is not None for i in range(len(ds.shards))):
    return curves
  return curves._replace(true_k_N=np.asarray(synthetic.load_side(path, "true_k"), np.int64)[:curves.e_NJ.shape[0]])


def cmd_headroom(args) -> int:
  """``softsae bench headroom``: collect the curves, compare the allocations, print and write."""
  from softsae_jax import files
  from softsae_jax.bench import output
  from softsae_jax.evaluate import load
  from softsae_jax.shards import open_dataset

  t0 = time.time()
  model = load(args.workdir)
  ds = open_dataset(args.data, expect_d_model=model.d_in)
  k_max = resolve_k_max(model.cfg, args.k_max)
  targets = args.ks or [float(model.cfg.sae.k)]
  too_big = [m for m in targets if m > k_max]
  if too_big:
    raise ConfigError(f"--ks {too_big[0]:g} exceeds --k-max {k_max}: every target needs 0 < m <= K_max")
  skip = args.skip_nonfinite if args.skip_nonfinite is not None else model.cfg.data.skip_nonfinite
  curves = collect(model, ds, k_max=k_max, batch_size=args.batch_size, max_rows=args.max_rows, skip_nonfinite=skip)
  curves = _with_truth(curves, ds, args.data)
  res = headroom(curves, targets)
  sae = model.cfg.sae
  out = args.out or os.path.join(args.workdir, "headroom.json")
  ks = ",".join(f"{m:g}" for m in targets)
  command = (f"softsae bench headroom --workdir {args.workdir} --data {args.data} --ks {ks} "
             f"--k-max {k_max} --max-rows {args.max_rows} --batch-size {args.batch_size} --out {out}"
             + (" --skip-nonfinite" if args.skip_nonfinite else ""))
  meta = output.run_meta(argparse.Namespace(seed=None, set=None), command, t0)
  for key in ("seed", "overrides"):
    meta.pop(key)
  run = {"workdir": os.path.abspath(args.workdir), "arch": sae.arch, "n_latents": sae.F, "d_in": sae.d_in,
         "k": sae.k, "step": model.step, "norm_factor": model.norm_factor}
  if sae.arch == "softsae":
    run["k_hat_bound"] = sae.kmax
  if sae.arch in THRESHOLD_ARCHS:
    run["threshold"] = float(np.asarray(model.arch_state))  # its learned inference threshold, normalised units
  res = {"meta": meta, "run": run,
         "data": {"path": os.path.abspath(args.data), "n_rows": int(curves.e_NJ.shape[0]),
                  "n_skipped": curves.n_skipped, "max_rows": args.max_rows},
         "k_max": k_max, "targets": targets, "units": "normalised (raw / norm_factor); FVU is unit-free",
         "model": curves.model, **res}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  files.write_json(out, res, allow_nan=False)
  print(headroom_table(res), end="")
  return 0
