"""The bench's metric functions (numpy only; unit-tested on hand-made inputs).

Each compares what a model does on the held-out rows with the ground truth of the synthetic data:

* :func:`kl_int`: KL(P_true || Q_L0) in nats between two integer distributions (the true k and the
  per-row L0), both histograms over 0..max, each smoothed by adding :data:`KL_SMOOTHING` (0.5, the
  Krichevsky-Trofimov pseudo-count) to every bin, so an empty bin costs a finite amount;
* :func:`wasserstein_int`: the 1-Wasserstein (earth mover's) distance between two integer
  distributions (no smoothing; in units of "latents");
* :func:`dictionary_recovery`: mean over the true atoms of the largest *signed* cosine similarity
  with a decoder atom, and the fraction of true atoms with such a match above
  :data:`RECOVERY_THRESHOLD`;
* :func:`class_means` / :func:`increasing`: a per-row quantity averaged over the rows of each true k.

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


def finite_or_none(x: float | None) -> float | None:
  """``x`` as a float, or None when it is None, NaN or infinite (JSON has no NaN).

  Examples:
    >>> finite_or_none(float("nan")), finite_or_none(2)
    (None, 2.0)
  """
  return None if x is None or not math.isfinite(x) else float(x)
