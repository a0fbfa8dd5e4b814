"""The bench's metric functions (numpy only; unit-tested on hand-made inputs).

Each compares what a model does on the held-out rows with the ground truth of the synthetic data:

* :func:`kl_int`: KL(P_true || Q_L0) in nats between two integer distributions (the true k and the
  per-row L0), both histograms over 0..max, each smoothed by adding :data:`KL_SMOOTHING` (0.5, the
  Krichevsky-Trofimov pseudo-count) to every bin, so an empty bin costs a finite amount;
* :func:`wasserstein_int`: the 1-Wasserstein (earth mover's) distance between two integer
  distributions (no smoothing; in units of "latents"); :func:`wasserstein_real` the same for
  real-valued samples (SoftSAE's k-hat against the true k);
* :func:`kl_nearest_int`: KL(P_true || Q) for a real-valued Q (k-hat), binned at the nearest integer;
* :func:`dictionary_recovery`: mean over the true atoms of the largest *signed* cosine similarity
  with a decoder atom, and the fraction of true atoms with such a match above
  :data:`RECOVERY_THRESHOLD`;
* :func:`class_means` / :func:`increasing`: a per-row quantity averaged over the rows of each true k;
* :func:`mean_sd`: mean and sample standard deviation of a metric over seeds.

Rank correlations (Spearman, Pearson, ranks) are :mod:`softsae_jax.stats`'s.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

KL_SMOOTHING = 0.5
"""Pseudo-count added to every integer bin of both histograms before the KL divergence."""

RECOVERY_THRESHOLD = 0.9
"""A true atom counts as recovered when some decoder atom has cosine similarity above this."""


def _int_values(v: Sequence[float], name: str) -> np.ndarray:
  a = np.asarray(v, np.float64).ravel()
  if len(a) == 0 or np.any(a < 0) or np.any(a != np.round(a)):
    raise ValueError(f"Expected {name} to be non-empty non-negative integers, got {a[:5].tolist()}...")
  return a.astype(np.int64)


def int_histogram(values: Sequence[float], n_bins: int, smoothing: float = 0.0) -> np.ndarray:
  """The distribution of non-negative integers over bins 0..n_bins-1, with ``smoothing`` added to
  every bin's count before normalising.

  Examples:
    >>> int_histogram([0, 2, 2, 3], 4).tolist()
    [0.25, 0.0, 0.5, 0.25]
  """
  v = _int_values(values, "values")
  if v.max() >= n_bins:
    raise ValueError(f"Expected values < n_bins={n_bins}, got {int(v.max())}")
  counts = np.bincount(v, minlength=n_bins).astype(np.float64) + smoothing
  return counts / counts.sum()


def kl_int(p_values: Sequence[float], q_values: Sequence[float], smoothing: float = KL_SMOOTHING) -> float:
  """KL(P || Q) in nats between the integer distributions of two samples.

  Both are histograms over 0..max(all values), each with ``smoothing`` added to every bin (so a bin
  that Q never visits costs a finite amount). Identical samples give exactly 0.

  Examples:
    >>> kl_int([3, 3, 5], [3, 3, 5])
    0.0
  """
  p_v, q_v = _int_values(p_values, "p_values"), _int_values(q_values, "q_values")
  n_bins = int(max(p_v.max(), q_v.max())) + 1
  p = int_histogram(p_v, n_bins, smoothing)
  q = int_histogram(q_v, n_bins, smoothing)
  if np.any((p > 0) & (q == 0)):
    return float("inf")
  nz = p > 0
  return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def wasserstein_int(a_values: Sequence[float], b_values: Sequence[float]) -> float:
  """1-Wasserstein distance between the distributions of two samples of non-negative integers
  (sum over integers of |CDF_a - CDF_b|).

  Examples:
    >>> wasserstein_int([2, 2], [4, 4])
    2.0
  """
  a_v, b_v = _int_values(a_values, "a_values"), _int_values(b_values, "b_values")
  n_bins = int(max(a_v.max(), b_v.max())) + 1
  cdf_a = np.cumsum(int_histogram(a_v, n_bins))
  cdf_b = np.cumsum(int_histogram(b_v, n_bins))
  return float(np.sum(np.abs(cdf_a - cdf_b)))


def wasserstein_real(a_values: Sequence[float], b_values: Sequence[float]) -> float:
  """1-Wasserstein distance between the empirical distributions of two real-valued samples:
  the integral over t of |CDF_a(t) - CDF_b(t)| (exact; the samples may differ in size).

  On integer samples it equals :func:`wasserstein_int`. Used for the real k-hat against the true k,
  where flooring k-hat first (the inference L0) would add up to one latent of bias.

  Examples:
    >>> wasserstein_real([2, 4], [2.5, 4.5]), wasserstein_real([1.0, 2.0, 3.0], [3.0, 1.0, 2.0])
    (0.5, 0.0)
  """
  a = np.sort(np.asarray(a_values, np.float64).ravel())
  b = np.sort(np.asarray(b_values, np.float64).ravel())
  if len(a) == 0 or len(b) == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise ValueError(f"Expected two non-empty finite samples, got sizes {len(a)} and {len(b)}")
  t = np.concatenate([a, b])
  t.sort()
  cdf_a = np.searchsorted(a, t[:-1], side="right") / len(a)
  cdf_b = np.searchsorted(b, t[:-1], side="right") / len(b)
  return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(t)))


def kl_nearest_int(p_values: Sequence[float], q_values: Sequence[float], smoothing: float = KL_SMOOTHING) -> float:
  """:func:`kl_int` with the real-valued ``q_values`` rounded to the nearest integer first.

  For KL(true k || k-hat): k-hat is real, the true k an integer, so k-hat is binned at the integer it
  is closest to (the inference L0 floors it instead, which shifts every value down by 0.5 on average).

  Examples:
    >>> kl_nearest_int([2, 4, 4], [2.2, 3.6, 4.4])
    0.0
  """
  q = np.asarray(q_values, np.float64).ravel()
  if len(q) == 0 or not np.all(np.isfinite(q)) or np.any(q < -0.5):
    raise ValueError(f"Expected q_values to be non-empty finite numbers >= -0.5, got {q[:5].tolist()}...")
  return kl_int(p_values, np.maximum(np.rint(q), 0.0), smoothing)


def atom_cosines(a_AD, b_FD, what: str = "two [N, D] dictionaries") -> np.ndarray:
  """Cosine similarities [A, F] between the rows of two dictionaries (rows normalised; zero rows 0).

  Examples:
    >>> atom_cosines(np.eye(2), 2 * np.eye(2)).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  a = np.asarray(a_AD, np.float64)
  b = np.asarray(b_FD, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"Expected {what} of the same D, got {a.shape} and {b.shape}")
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
  return a @ b.T


def dictionary_recovery(true_AD: np.ndarray, learned_FD: np.ndarray,
                        threshold: float = RECOVERY_THRESHOLD) -> dict[str, float]:
  """How well the learned atoms (rows of ``learned_FD``) cover the true atoms (rows of ``true_AD``).

  Returns ``mean_max_cos`` (mean over true atoms of the largest signed cosine similarity with a
  learned atom) and ``frac_recovered`` (fraction of true atoms whose best match exceeds
  ``threshold``). Rows are normalised here; zero rows never match.

  Examples:
    >>> dictionary_recovery(np.eye(3), np.eye(3))["mean_max_cos"]
    1.0
  """
  best_A = atom_cosines(true_AD, learned_FD, "true_AD [A, D] and learned_FD [F, D]").max(axis=1)
  return {"mean_max_cos": float(np.mean(best_A)), "frac_recovered": float(np.mean(best_A > threshold))}


def class_means(values: Sequence[float], classes: Sequence[int]) -> dict[str, float]:
  """{str(class): mean of values over the rows of that class}, classes in increasing order.

  Examples:
    >>> class_means([1.0, 3.0, 10.0], [2, 2, 16])
    {'2': 2.0, '16': 10.0}
  """
  v = np.asarray(values, np.float64).ravel()
  c = np.asarray(classes).ravel()
  return {str(int(k)): float(v[c == k].mean()) for k in np.unique(c)}


def increasing(means: dict[str, float]) -> bool:
  """Whether the per-class means strictly increase with the class."""
  vals = [means[k] for k in sorted(means, key=int)]
  return bool(np.all(np.diff(vals) > 0))


def mean_sd(values: Sequence[float | None]) -> dict[str, float | int | None]:
  """Mean and sample standard deviation (ddof = 1) of a metric over seeds, and how many went in.

  None values (an undefined metric in one seed) are left out; ``sd`` is None with fewer than two
  values, ``mean`` with none.

  Examples:
    >>> mean_sd([1.0, 2.0, 3.0])
    {'mean': 2.0, 'sd': 1.0, 'n': 3}
    >>> mean_sd([4.0, None])
    {'mean': 4.0, 'sd': None, 'n': 1}
  """
  v = np.asarray([x for x in values if x is not None], np.float64)
  return {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
          "n": int(len(v))}


def finite_or_none(x: float | None) -> float | None:
  """``x`` as a float, or None when it is None, NaN or infinite (JSON has no NaN).

  Examples:
    >>> finite_or_none(float("nan")), finite_or_none(2)
    (None, 2.0)
  """
  return None if x is None or not math.isfinite(x) else float(x)
