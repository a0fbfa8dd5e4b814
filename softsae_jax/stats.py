"""Rank statistics used by eval, report and bench (numpy only): one rank function for all of them.

Ties get their average rank (as ``scipy.stats.rankdata``), so a Spearman correlation with an integer
quantity such as L0 does not depend on the rows' order.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def rankdata(x: Sequence[float]) -> np.ndarray:
  """1-based ranks with ties given their average rank (as ``scipy.stats.rankdata``), float64.

  Examples:
    >>> rankdata([10, 20, 20, 5]).tolist()
    [2.0, 3.5, 3.5, 1.0]
  """
  x = np.asarray(x, np.float64).ravel()
  n = len(x)
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]]) if n else np.zeros(0, np.int64)
  ends = np.r_[starts[1:], n]
  avg = (starts + ends - 1) / 2.0 + 1.0
  ranks = np.empty(n, np.float64)
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
  """Pearson correlation; NaN when either input is constant or has fewer than 2 entries."""
  x = np.asarray(x, np.float64).ravel()
  y = np.asarray(y, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"Expected x and y of the same length, got {x.shape} and {y.shape}")
  if len(x) < 2:
    return float("nan")
  xc, yc = x - x.mean(), y - y.mean()
  den = math.sqrt(float(np.dot(xc, xc)) * float(np.dot(yc, yc)))
  if den == 0.0:
    return float("nan")
  return float(np.clip(np.dot(xc, yc) / den, -1.0, 1.0))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman rank correlation (Pearson of average ranks); NaN when either input is constant.

  Examples:
    >>> spearman([1, 2, 3, 4], [1, 4, 9, 16])
    1.0
    >>> spearman([1, 1, 2, 2], [1, 2, 3, 4]) == spearman([1, 1, 2, 2], [2, 1, 4, 3])
    True
  """
  return pearson(rankdata(x), rankdata(y))
