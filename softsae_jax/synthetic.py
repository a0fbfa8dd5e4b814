"""Synthetic data with known ground truth: sparse mixtures and unions of local manifolds (numpy only).

Two generators, each deterministic from an integer ``seed``:

* :func:`make_mixture` -- every row is a positive combination of ``k`` atoms of a random unit-norm
  dictionary, with ``k`` drawn per row from ``k_values``. The true support, coefficients and
  dictionary are returned, so feature recovery and per-row k estimates can be scored exactly.
* :func:`make_manifolds` -- every row is a point near one of several curved patches of intrinsic
  dimension ``m`` (drawn from ``dims``) embedded in R^D. The local dimension and the manifold id of
  every row are returned: the analogue of the true k when the data is not a sparse code.

Train and held-out sets share the ground truth (dictionary or manifolds) and differ only in the
samples: ``split="train"`` and ``split="test"`` draw from two independent random streams of the same
``seed``, and :func:`make_mixture_pair` / :func:`make_manifolds_pair` return both at once. A set is
fully reproduced by calling its generator again with the parameters stored in ``meta``.

:func:`write_dataset` writes a set as a ``softsae-activations/1`` directory (through
:class:`~softsae_jax.shards.ShardWriter`) with per-shard side files ``true_k`` and ``group``, the
ground truth next to the shards, and a ``synthetic`` block in the manifest; :func:`load_side` reads a
side file back in data order. :data:`PRESETS` names the sizes the benchmarks use.

Dimension key (suffixes of array names): ``N`` rows, ``D`` input width, ``A`` ground-truth atoms
(not the SAE's latent count F), ``K`` = max(k_values) (padded support width), ``G`` manifolds,
``M`` = max(dims) (padded local-coordinate width), ``P`` normal directions of a manifold (padded to M).

Random streams: ``numpy.random.default_rng([seed, stream])`` with stream 0 for the ground truth
(dictionary / manifolds), 1 for the ``train`` samples and 2 for the ``test`` samples. The ground
truth therefore does not depend on ``n_rows``, ``split`` or any sampling parameter, and the test set
does not depend on how many train rows were drawn.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from softsae_jax.shards import ShardWriter, DataError, open_dataset

VERSION = 1
SPLITS = ("train", "test")
COEF_KINDS = ("halfnormal", "lognormal", "constant")
_STREAM = {"truth": 0, "train": 1, "test": 2}
# Rows generated per block. Part of the definition of the random stream (changing it changes the
# data for a given seed), so it is a constant, not an argument.
_BLOCK = 4096

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Fast enough for a CPU benchmark: 70k rows of width 48 (13 MB float32 per set).
    "small": {
        "mixture": dict(n_train=60_000, n_test=10_000, d=48, n_atoms=256, k_values=(2, 4, 8, 16)),
        "manifolds": dict(n_train=60_000, n_test=10_000, d=48, dims=(1, 2, 4, 8, 16), n_manifolds_per_dim=4),
    },
    # The accelerator benchmark: 450k rows of width 128 (230 MB float32).
    "full": {
        "mixture": dict(n_train=400_000, n_test=50_000, d=128, n_atoms=1024, k_values=(2, 4, 8, 16)),
        "manifolds": dict(n_train=400_000, n_test=50_000, d=128, dims=(1, 2, 4, 8, 16), n_manifolds_per_dim=8),
    },
}
"""Benchmark sizes: ``PRESETS[name][kind]`` holds the keyword arguments of ``make_<kind>_pair``.

``small``: mixture D=48, A=256 atoms, k in (2, 4, 8, 16) uniform, 60k train + 10k held-out rows;
manifolds D=48, dims (1, 2, 4, 8, 16) with 4 patches each (20 manifolds), 60k + 10k rows.
``full``: mixture D=128, A=1024 atoms, k in (2, 4, 8, 16), 400k + 50k rows; manifolds D=128, dims
(1, 2, 4, 8, 16) with 8 patches each (40 manifolds), 400k + 50k rows. ``small-unitnorm`` and
``full-unitnorm``: the same with ``normalize_rows=True`` for both kinds. In ``small`` and ``full`` the
mixture's row norms grow like sqrt(k) (held-out Spearman of the norm with the true k: 0.885 on
``small``, seed 0), so the norm alone predicts k; in the ``-unitnorm`` presets it is ~0. Every other
parameter (noise, coefficients, curvature, ...) is the generator's default. The ground-truth atom
count A is a property of the data; the SAE's latent count F is chosen by the benchmark.
"""
# The same sizes with every row scaled to unit norm (``normalize_rows=True``), so that a row's norm
# says nothing about its k: the data for the claim that k-hat follows the true k.
PRESETS |= {f"{name}-unitnorm": {kind: {**kw, "normalize_rows": True} for kind, kw in PRESETS[name].items()}
            for name in ("small", "full")}


class Mixture(NamedTuple):
  """A sparse-mixture data set (see :func:`make_mixture`).

  Attributes:
    x_ND: float32 [N, D], the rows.
    true_k_N: int32 [N], the number of atoms in each row.
    group_N: int32 [N], the index of ``true_k_N`` in ``k_values`` (the row's k class).
    support_NK: int32 [N, K], the atom indices of each row in ascending order, padded with -1.
    coef_NK: float32 [N, K], the coefficient of each support atom (0 where padded).
    atoms_AD: float32 [A, D], the ground-truth dictionary; every row has unit norm.
    atom_weight_A: float64 [A], the selection weight of each atom (sums to 1; uniform by default).
    meta: the generator name, seed, split and every parameter (JSON-serialisable).
  """

  x_ND: np.ndarray
  true_k_N: np.ndarray
  group_N: np.ndarray
  support_NK: np.ndarray
  coef_NK: np.ndarray
  atoms_AD: np.ndarray
  atom_weight_A: np.ndarray
  meta: dict[str, Any]


class Manifolds(NamedTuple):
  """A union-of-manifolds data set (see :func:`make_manifolds`).

  Manifold ``g`` has intrinsic dimension ``m = dim_G[g]`` and ``p = min(m, D - m)`` normal
  directions; only the first ``m`` (resp. ``p``) entries of its padded arrays are used, the rest
  are zero. Its noiseless points are
  ``center_GD[g] + t @ tangent_GMD[g] + sum_a (t @ quad_GPMM[g, a] @ t) * normal_GPD[g, a]`` for
  local coordinates ``t`` (see :func:`clean_signal`).

  Attributes:
    x_ND: float32 [N, D], the rows.
    true_dim_N: int32 [N], the intrinsic dimension of the row's manifold.
    group_N: int32 [N], the manifold id in [0, G), ordered by ``dims`` then by patch.
    coords_NM: float32 [N, M], the local coordinates ``t`` of each row, zero beyond its dimension.
    dim_G: int32 [G], the intrinsic dimension of each manifold.
    center_GD: float32 [G, D], the point at ``t = 0``.
    tangent_GMD: float32 [G, M, D], orthonormal tangent directions (first ``m`` rows).
    normal_GPD: float32 [G, P, D], orthonormal normal directions, orthogonal to the tangents.
    quad_GPMM: float32 [G, P, M, M], symmetric quadratic forms, already scaled by the curvature.
    meta: the generator name, seed, split and every parameter (JSON-serialisable).
  """

  x_ND: np.ndarray
  true_dim_N: np.ndarray
  group_N: np.ndarray
  coords_NM: np.ndarray
  dim_G: np.ndarray
  center_GD: np.ndarray
  tangent_GMD: np.ndarray
  normal_GPD: np.ndarray
  quad_GPMM: np.ndarray
  meta: dict[str, Any]

  @property
  def true_k_N(self) -> np.ndarray:
    """The local intrinsic dimension, under the name the k-estimation benchmarks read."""
    return self.true_dim_N


# --------------------------------------------------------------------------------------------------
# Argument checks: ValueError "Expected X, got Y" naming the argument.


def _check_int(name: str, value: Any, lo: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
    raise ValueError(f"Expected {name} to be an integer >= {lo}, got {value!r}")
  return int(value)


def _check_float(name: str, value: Any, lo: float = 0.0) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise ValueError(f"Expected {name} to be a number >= {lo}, got {value!r}")
  if not math.isfinite(float(value)) or float(value) < lo:
    raise ValueError(f"Expected {name} to be a finite number >= {lo}, got {value!r}")
  return float(value)


def _check_split(split: Any) -> str:
  if split not in SPLITS:
    raise ValueError(f"Expected split to be one of {SPLITS}, got {split!r}")
  return split


def _check_sizes(name: str, values: Any, lo: int, hi: int, hi_name: str) -> tuple[int, ...]:
  """A non-empty sequence of distinct integers in [lo, hi]."""
  if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)) or len(values) == 0:
    raise ValueError(f"Expected {name} to be a non-empty sequence of integers, got {values!r}")
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise ValueError(f"Expected {name} to hold integers, got {v!r} in {list(values)!r}")
    if not lo <= v <= hi:
      raise ValueError(f"Expected every value in {name} to be in [{lo}, {hi_name}={hi}], got {int(v)}")
    out.append(int(v))
  if len(set(out)) != len(out):
    raise ValueError(f"Expected distinct values in {name}, got {out}")
  return tuple(out)


def _check_probs(name: str, probs: Any, n: int, of: str) -> np.ndarray:
  if probs is None:
    return np.full(n, 1.0 / n)
  p = np.asarray(probs, dtype=np.float64)
  if p.shape != (n,):
    raise ValueError(f"Expected {name} to have one entry per value of {of} ({n}), got shape {p.shape}")
  if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-6:
    raise ValueError(f"Expected {name} to be non-negative and sum to 1, got {p.tolist()}")
  return p / p.sum()


def _rng(seed: int, stream: str) -> np.random.Generator:
  return np.random.default_rng([seed, _STREAM[stream]])


# --------------------------------------------------------------------------------------------------
# Sparse mixtures.


def make_mixture(n_rows: int, d: int, n_atoms: int, k_values: Sequence[int] = (2, 4, 8, 16),
                 k_probs: Sequence[float] | None = None, *, seed: int, noise: float = 0.01,
                 coef: str = "halfnormal", freq_exponent: float = 0.0, normalize_rows: bool = False,
                 split: str = "train") -> Mixture:
  """Rows that are sparse positive combinations of a random dictionary, with k drawn per row.

  The ground truth (drawn from ``seed`` alone): ``atoms_AD``, ``n_atoms`` i.i.d. Gaussian vectors
  in R^d scaled to unit norm (in general position; with ``n_atoms > d`` the dictionary is
  overcomplete), and a selection weight per atom, proportional to ``(r + 1) ** -freq_exponent``
  where ``r`` is the atom's rank in a random order (``freq_exponent=0``: uniform; 0.5 to 1 gives a
  mild power law with frequent and rare atoms, as features of real models have).

  Each row then:

  1. draws its ``k`` from ``k_values`` with probabilities ``k_probs`` (default uniform);
  2. draws ``k`` distinct atoms, successively, each with probability proportional to its weight
     among the atoms not yet drawn (exponential races, exact for any weights);
  3. draws a positive coefficient per atom: ``"halfnormal"`` |N(0, 1)| + 0.5 (range [0.5, ~4],
     mean 1.3), ``"lognormal"`` exp(N(0, 0.5^2)) (median 1), or ``"constant"`` 1;
  4. sets ``x = sum_i coef_i * atom_i + noise * eps / sqrt(d)`` with ``eps ~ N(0, I_d)``, so the
     noise vector has norm ~ ``noise``.

  Row norms grow like sqrt(k), which lets a model read k off the norm. With
  ``normalize_rows=True`` the noiseless part of each row is divided by its norm before the noise
  is added (and ``coef_NK`` with it), so every row has norm ~ sqrt(1 + noise^2) and k must be
  inferred from the direction alone. In both cases
  ``x_ND - clean_signal(data)`` is exactly the noise.

  Args:
    n_rows: number of rows N (>= 1).
    d: row width D (>= 1).
    n_atoms: ground-truth dictionary size A (>= 1).
    k_values: the possible numbers of active atoms per row; distinct integers in [1, n_atoms].
    k_probs: probability of each entry of ``k_values`` (sums to 1); None for uniform.
    seed: non-negative integer; the same seed gives the same dictionary and rows.
    noise: standard deviation of the additive noise times sqrt(d) (>= 0).
    coef: coefficient distribution, one of ``COEF_KINDS``.
    freq_exponent: power-law exponent of the atom selection weights (>= 0; 0 = uniform).
    normalize_rows: scale the noiseless part of each row to unit norm.
    split: ``"train"`` or ``"test"``: two independent sample streams over the same dictionary.

  Returns:
    A :class:`Mixture`.

  Raises:
    ValueError: an argument is out of range (the message names it).

  Examples:
    >>> data = make_mixture(6, d=8, n_atoms=10, k_values=(1, 3), seed=0)
    >>> data.x_ND.shape, data.x_ND.dtype, data.support_NK.shape
    ((6, 8), dtype('float32'), (6, 3))
    >>> bool(np.all((data.support_NK >= 0).sum(1) == data.true_k_N))
    True
  """
  n_rows = _check_int("n_rows", n_rows, 1)
  d = _check_int("d", d, 1)
  n_atoms = _check_int("n_atoms", n_atoms, 1)
  k_values = _check_sizes("k_values", k_values, 1, n_atoms, "n_atoms")
  p_k = _check_probs("k_probs", k_probs, len(k_values), "k_values")
  seed = _check_int("seed", seed, 0)
  noise = _check_float("noise", noise)
  if coef not in COEF_KINDS:
    raise ValueError(f"Expected coef to be one of {COEF_KINDS}, got {coef!r}")
  freq_exponent = _check_float("freq_exponent", freq_exponent)
  if not isinstance(normalize_rows, (bool, np.bool_)):
    raise ValueError(f"Expected normalize_rows to be a bool, got {normalize_rows!r}")
  split = _check_split(split)

  atoms_AD, weight_A = _mixture_truth(_rng(seed, "truth"), d, n_atoms, freq_exponent)
  meta = {"generator": "mixture", "version": VERSION, "seed": seed, "split": split, "n_rows": n_rows,
          "params": {"d": d, "n_atoms": n_atoms, "k_values": list(k_values), "k_probs": p_k.tolist(),
                     "noise": noise, "coef": coef, "freq_exponent": freq_exponent,
                     "normalize_rows": bool(normalize_rows)}}
  x_ND, true_k_N, group_N, support_NK, coef_NK = _mixture_rows(
      _rng(seed, split), n_rows, atoms_AD, weight_A, np.asarray(k_values, np.int32), p_k, noise, coef,
      bool(normalize_rows))
  return Mixture(x_ND, true_k_N, group_N, support_NK, coef_NK, atoms_AD, weight_A, meta)


def make_mixture_pair(n_train: int, n_test: int, d: int, n_atoms: int, k_values: Sequence[int] = (2, 4, 8, 16),
                      k_probs: Sequence[float] | None = None, *, seed: int, **kwargs: Any) -> tuple[Mixture, Mixture]:
  """A train set and a held-out set over the same dictionary (different samples).

  Equivalent to ``make_mixture(n_train, ..., split="train")`` and
  ``make_mixture(n_test, ..., split="test")`` with the same arguments.

  Args:
    n_train: rows in the train set.
    n_test: rows in the held-out set.
    d: see :func:`make_mixture`.
    n_atoms: see :func:`make_mixture`.
    k_values: see :func:`make_mixture`.
    k_probs: see :func:`make_mixture`.
    seed: see :func:`make_mixture`.
    **kwargs: the other keyword arguments of :func:`make_mixture` (``noise``, ``coef``, ...).

  Returns:
    ``(train, test)``, two :class:`Mixture` with identical ``atoms_AD``.

  Examples:
    >>> train, test = make_mixture_pair(5, 3, d=4, n_atoms=6, k_values=(1, 2), seed=1)
    >>> bool(np.array_equal(train.atoms_AD, test.atoms_AD)), len(train.x_ND), len(test.x_ND)
    (True, 5, 3)
  """
  if "split" in kwargs:
    raise ValueError(f"Expected no split argument (the pair makes both), got split={kwargs['split']!r}")
  train = make_mixture(n_train, d, n_atoms, k_values, k_probs, seed=seed, split="train", **kwargs)
  test = make_mixture(n_test, d, n_atoms, k_values, k_probs, seed=seed, split="test", **kwargs)
  return train, test


def _mixture_truth(rng: np.random.Generator, d: int, n_atoms: int,
                   freq_exponent: float) -> tuple[np.ndarray, np.ndarray]:
  atoms_AD = rng.standard_normal((n_atoms, d))
  atoms_AD /= np.linalg.norm(atoms_AD, axis=1, keepdims=True)
  # The rank order is drawn even for uniform weights, so the dictionary and the sample stream do
  # not depend on freq_exponent beyond the weights themselves.
  rank_A = rng.permutation(n_atoms)
  weight_A = (rank_A + 1.0) ** -freq_exponent
  return atoms_AD.astype(np.float32), weight_A / weight_A.sum()


def _draw_coef(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
  if kind == "halfnormal":
    return np.abs(rng.standard_normal(shape, dtype=np.float32)) + np.float32(0.5)
  if kind == "lognormal":
    return np.exp(np.float32(0.5) * rng.standard_normal(shape, dtype=np.float32))
  return np.ones(shape, np.float32)


def _mixture_rows(rng: np.random.Generator, n_rows: int, atoms_AD: np.ndarray, weight_A: np.ndarray,
                  k_values: np.ndarray, p_k: np.ndarray, noise: float, coef: str, normalize_rows: bool):
  n_atoms, d = atoms_AD.shape
  k_max = int(k_values.max())
  group_N = rng.choice(len(k_values), size=n_rows, p=p_k).astype(np.int32)
  true_k_N = k_values[group_N]
  support_NK = np.full((n_rows, k_max), -1, np.int32)
  coef_NK = np.zeros((n_rows, k_max), np.float32)
  x_ND = np.empty((n_rows, d), np.float32)
  inv_weight_A = (1.0 / weight_A).astype(np.float32)
  for lo in range(0, n_rows, _BLOCK):
    hi = min(lo + _BLOCK, n_rows)
    k_R = true_k_N[lo:hi]
    # Exponential races: atom a finishes at E_a / w_a; the first k finishers are k draws without
    # replacement, each proportional to weight (Efraimidis & Spirakis, 2006).
    time_RA = rng.standard_exponential((hi - lo, n_atoms), dtype=np.float32) * inv_weight_A
    first_RK = np.argpartition(time_RA, k_max - 1, axis=1)[:, :k_max]
    order_RK = np.argsort(np.take_along_axis(time_RA, first_RK, axis=1), axis=1)
    first_RK = np.take_along_axis(first_RK, order_RK, axis=1)
    valid_RK = np.arange(k_max) < k_R[:, None]
    # Ascending atom ids with the padding (sentinel n_atoms) last.
    sup_RK = np.sort(np.where(valid_RK, first_RK, n_atoms), axis=1)
    c_RK = _draw_coef(rng, sup_RK.shape, coef) * valid_RK
    clean_RD = np.einsum("rk,rkd->rd", c_RK, atoms_AD[np.where(valid_RK, sup_RK, 0)])
    if normalize_rows:
      norm_R1 = np.linalg.norm(clean_RD, axis=1, keepdims=True)
      clean_RD /= norm_R1
      c_RK /= norm_R1
    eps_RD = rng.standard_normal((hi - lo, d), dtype=np.float32)
    x_ND[lo:hi] = clean_RD + np.float32(noise / math.sqrt(d)) * eps_RD
    support_NK[lo:hi] = np.where(valid_RK, sup_RK, -1)
    coef_NK[lo:hi] = c_RK
  return x_ND, true_k_N.astype(np.int32), group_N, support_NK, coef_NK


# --------------------------------------------------------------------------------------------------
# Unions of local manifolds.


def make_manifolds(n_rows: int, d: int, dims: Sequence[int] = (1, 2, 4, 8, 16), n_manifolds_per_dim: int = 4,
                   dim_probs: Sequence[float] | None = None, *, seed: int, curvature: float = 0.25,
                   radius: float = 1.0, center_norm: float = 2.0, noise: float = 0.01,
                   normalize_rows: bool = False, split: str = "train") -> Manifolds:
  """Rows near a union of curved patches of different intrinsic dimensions.

  The ground truth (drawn from ``seed`` alone): for each ``m`` in ``dims``,
  ``n_manifolds_per_dim`` patches. Patch ``g`` of dimension ``m`` has

  * a center ``c``: a uniformly random direction of norm ``center_norm``;
  * ``m`` orthonormal tangent directions ``T`` and ``p = min(m, d - m)`` normal directions ``Nrm``,
    together the first ``m + p`` columns of a random orthogonal matrix (QR of a Gaussian), so
    normals are orthogonal to the tangents;
  * ``p`` symmetric matrices ``S_a`` (m x m, symmetrised Gaussians scaled to spectral norm 1).

  Its points are the graph of a quadratic map over the tangent plane,
  ``f(t) = c + t @ T + (curvature / sqrt(p)) * sum_a (t @ S_a @ t) * Nrm_a``, for local coordinates
  ``t`` in the m-ball of radius ``radius``: a smooth embedded m-manifold (so its intrinsic dimension
  is exactly ``m`` everywhere), flat for ``curvature=0``, whose normal displacement obeys
  ``|f(t) - c - t @ T| <= curvature * |t|^2 <= curvature * radius^2``. Patches of different ids are
  independent; with the defaults (centers of norm 2, radius 1) they are well apart.

  Each row picks a dimension from ``dims`` with probabilities ``dim_probs`` (default uniform), then
  a patch of that dimension uniformly, then ``t`` uniformly in the m-ball (a Gaussian direction
  times ``radius * u ** (1 / m)``), and sets ``x = f(t) + noise * eps / sqrt(d)``,
  ``eps ~ N(0, I_d)``. Its ``true_dim`` is ``m`` and its ``group`` the patch id.

  With ``normalize_rows=True`` the noiseless point is divided by its norm before the noise is added,
  ``x = f(t) / |f(t)| + noise * eps / sqrt(d)``, so every row has norm ~ sqrt(1 + noise^2). The
  radial projection of a patch that stays away from the origin (with the defaults
  ``|f(t)| >= center_norm - radius - curvature * radius^2 = 0.75``) is again a smooth patch of the
  same intrinsic dimension ``m`` (generically: unless the radial direction lies in its tangent
  plane), so ``true_dim`` is unchanged; ``coords_NM`` still hold the ``t`` of the unprojected point
  and :func:`clean_signal` applies the projection.

  Args:
    n_rows: number of rows N (>= 1).
    d: row width D (>= 1).
    dims: the intrinsic dimensions; distinct integers in [1, d].
    n_manifolds_per_dim: patches per dimension (>= 1); G = len(dims) * n_manifolds_per_dim.
    dim_probs: probability of each entry of ``dims`` (sums to 1); None for uniform.
    seed: non-negative integer; the same seed gives the same patches and rows.
    curvature: size of the quadratic term (>= 0; 0 gives flat affine patches).
    radius: radius of the local-coordinate ball (> 0).
    center_norm: norm of every patch center (>= 0).
    noise: standard deviation of the additive noise times sqrt(d) (>= 0).
    normalize_rows: project the noiseless part of each row onto the unit sphere.
    split: ``"train"`` or ``"test"``: two independent sample streams over the same patches.

  Returns:
    A :class:`Manifolds`.

  Raises:
    ValueError: an argument is out of range (the message names it).

  Examples:
    >>> data = make_manifolds(10, d=6, dims=(1, 2), n_manifolds_per_dim=2, seed=0)
    >>> data.x_ND.shape, data.coords_NM.shape, data.dim_G.tolist()
    ((10, 6), (10, 2), [1, 1, 2, 2])
    >>> bool(np.all(data.dim_G[data.group_N] == data.true_dim_N))
    True
  """
  n_rows = _check_int("n_rows", n_rows, 1)
  d = _check_int("d", d, 1)
  dims = _check_sizes("dims", dims, 1, d, "d")
  n_per = _check_int("n_manifolds_per_dim", n_manifolds_per_dim, 1)
  p_dim = _check_probs("dim_probs", dim_probs, len(dims), "dims")
  seed = _check_int("seed", seed, 0)
  curvature = _check_float("curvature", curvature)
  radius = _check_float("radius", radius)
  if radius == 0:
    raise ValueError(f"Expected radius > 0, got {radius!r}")
  center_norm = _check_float("center_norm", center_norm)
  noise = _check_float("noise", noise)
  if not isinstance(normalize_rows, (bool, np.bool_)):
    raise ValueError(f"Expected normalize_rows to be a bool, got {normalize_rows!r}")
  split = _check_split(split)

  dim_G, center_GD, tangent_GMD, normal_GPD, quad_GPMM = _manifold_truth(
      _rng(seed, "truth"), d, dims, n_per, curvature, center_norm)
  meta = {"generator": "manifolds", "version": VERSION, "seed": seed, "split": split, "n_rows": n_rows,
          "params": {"d": d, "dims": list(dims), "n_manifolds_per_dim": n_per, "dim_probs": p_dim.tolist(),
                     "curvature": curvature, "radius": radius, "center_norm": center_norm, "noise": noise,
                     "normalize_rows": bool(normalize_rows)}}
  rng = _rng(seed, split)
  dim_idx_N = rng.choice(len(dims), size=n_rows, p=p_dim)
  group_N = (dim_idx_N * n_per + rng.integers(0, n_per, size=n_rows)).astype(np.int32)
  true_dim_N = dim_G[group_N]
  m_max = max(dims)
  # Uniform in the m-ball: an isotropic direction in the first m coordinates, radius u^(1/m).
  dir_NM = rng.standard_normal((n_rows, m_max)) * (np.arange(m_max) < true_dim_N[:, None])
  dir_NM /= np.linalg.norm(dir_NM, axis=1, keepdims=True)
  r_N = radius * rng.random(n_rows) ** (1.0 / true_dim_N)
  coords_NM = (dir_NM * r_N[:, None]).astype(np.float32)
  data = Manifolds(np.empty((n_rows, d), np.float32), true_dim_N, group_N, coords_NM, dim_G, center_GD,
                   tangent_GMD, normal_GPD, quad_GPMM, meta)
  x_ND = clean_signal(data)
  for lo in range(0, n_rows, _BLOCK):
    hi = min(lo + _BLOCK, n_rows)
    x_ND[lo:hi] += np.float32(noise / math.sqrt(d)) * rng.standard_normal((hi - lo, d), dtype=np.float32)
  return data._replace(x_ND=x_ND)


def make_manifolds_pair(n_train: int, n_test: int, d: int, dims: Sequence[int] = (1, 2, 4, 8, 16),
                        n_manifolds_per_dim: int = 4, dim_probs: Sequence[float] | None = None, *, seed: int,
                        **kwargs: Any) -> tuple[Manifolds, Manifolds]:
  """A train set and a held-out set on the same manifolds (different samples).

  Equivalent to ``make_manifolds(n_train, ..., split="train")`` and
  ``make_manifolds(n_test, ..., split="test")`` with the same arguments.

  Args:
    n_train: rows in the train set.
    n_test: rows in the held-out set.
    d: see :func:`make_manifolds`.
    dims: see :func:`make_manifolds`.
    n_manifolds_per_dim: see :func:`make_manifolds`.
    dim_probs: see :func:`make_manifolds`.
    seed: see :func:`make_manifolds`.
    **kwargs: the other keyword arguments of :func:`make_manifolds` (``curvature``, ``noise``, ...).

  Returns:
    ``(train, test)``, two :class:`Manifolds` with identical geometry.

  Examples:
    >>> train, test = make_manifolds_pair(5, 3, d=4, dims=(1, 2), seed=1)
    >>> bool(np.array_equal(train.tangent_GMD, test.tangent_GMD)), len(test.x_ND)
    (True, 3)
  """
  if "split" in kwargs:
    raise ValueError(f"Expected no split argument (the pair makes both), got split={kwargs['split']!r}")
  train = make_manifolds(n_train, d, dims, n_manifolds_per_dim, dim_probs, seed=seed, split="train", **kwargs)
  test = make_manifolds(n_test, d, dims, n_manifolds_per_dim, dim_probs, seed=seed, split="test", **kwargs)
  return train, test


def _manifold_truth(rng: np.random.Generator, d: int, dims: tuple[int, ...], n_per: int, curvature: float,
                    center_norm: float):
  m_max = max(dims)
  n_g = len(dims) * n_per
  dim_G = np.repeat(np.asarray(dims, np.int32), n_per)
  center_GD = np.zeros((n_g, d))
  tangent_GMD = np.zeros((n_g, m_max, d))
  normal_GPD = np.zeros((n_g, m_max, d))
  quad_GPMM = np.zeros((n_g, m_max, m_max, m_max))
  for g, m in enumerate(dim_G.tolist()):
    p = min(m, d - m)
    c_D = rng.standard_normal(d)
    center_GD[g] = center_norm * c_D / np.linalg.norm(c_D)
    basis_DX, _ = np.linalg.qr(rng.standard_normal((d, m + p)))
    tangent_GMD[g, :m] = basis_DX[:, :m].T
    normal_GPD[g, :p] = basis_DX[:, m:].T
    s_PMM = rng.standard_normal((p, m, m))
    s_PMM = (s_PMM + s_PMM.transpose(0, 2, 1)) / 2
    if p:
      spectral_P = np.abs(np.linalg.eigvalsh(s_PMM)).max(axis=1)
      # The sqrt(p) makes |sum_a q_a n_a| = |q| <= curvature * |t|^2 for every p.
      quad_GPMM[g, :p, :m, :m] = s_PMM * (curvature / math.sqrt(p) / spectral_P[:, None, None])
  f32 = np.float32
  return dim_G, center_GD.astype(f32), tangent_GMD.astype(f32), normal_GPD.astype(f32), quad_GPMM.astype(f32)


# --------------------------------------------------------------------------------------------------
# Ground truth helpers and writing.


def clean_signal(data: Mixture | Manifolds) -> np.ndarray:
  """The noiseless rows rebuilt from the ground truth; ``data.x_ND - clean_signal(data)`` is the noise.

  For a :class:`Mixture`: ``sum_i coef_NK[n, i] * atoms_AD[support_NK[n, i]]`` (with
  ``normalize_rows`` the coefficients are already scaled). For :class:`Manifolds`: the patch map
  ``f(t)`` of each row's manifold at its ``coords_NM``, divided by its norm when the set was made with
  ``normalize_rows=True`` (read from ``data.meta``).

  Args:
    data: a :class:`Mixture` or :class:`Manifolds`.

  Returns:
    float32 [N, D].

  Examples:
    >>> data = make_mixture(4, d=5, n_atoms=7, k_values=(2,), seed=0, noise=0.0)
    >>> bool(np.allclose(clean_signal(data), data.x_ND, atol=1e-6))
    True
  """
  if isinstance(data, Mixture):
    out_ND = np.empty(data.x_ND.shape, np.float32)
    for lo in range(0, len(out_ND), _BLOCK):
      sup_RK = data.support_NK[lo:lo + _BLOCK]
      out_ND[lo:lo + _BLOCK] = np.einsum("rk,rkd->rd", data.coef_NK[lo:lo + _BLOCK],
                                         data.atoms_AD[np.maximum(sup_RK, 0)] * (sup_RK >= 0)[..., None])
    return out_ND
  if isinstance(data, Manifolds):
    unit = bool(data.meta.get("params", {}).get("normalize_rows", False))
    out_ND = np.empty((len(data.group_N), data.center_GD.shape[1]), np.float32)
    for g, m in enumerate(data.dim_G.tolist()):
      rows = np.flatnonzero(data.group_N == g)
      if rows.size == 0:
        continue
      p = min(m, data.center_GD.shape[1] - m)
      t_Rm = data.coords_NM[rows, :m].astype(np.float64)
      q_Rp = np.einsum("ri,pij,rj->rp", t_Rm, data.quad_GPMM[g, :p, :m, :m].astype(np.float64), t_Rm)
      pt_RD = data.center_GD[g] + t_Rm @ data.tangent_GMD[g, :m] + q_Rp @ data.normal_GPD[g, :p]
      out_ND[rows] = pt_RD / np.linalg.norm(pt_RD, axis=1, keepdims=True) if unit else pt_RD
    return out_ND
  raise ValueError(f"Expected a Mixture or Manifolds, got {type(data).__name__}")


def write_dataset(out_dir: str, data: Mixture | Manifolds, *, rows_per_shard: int = 65536,
                  dtype: str = "float32") -> dict[str, Any]:
  """Writes a synthetic set as a ``softsae-activations/1`` directory with its ground truth.

  Written through :class:`~softsae_jax.shards.ShardWriter`:

  * ``shard_{i:05d}.npy``: the rows in ``dtype``;
  * per-shard side files (listed in each shard entry): ``true_k`` int32 [rows] (for manifolds the
    local intrinsic dimension), ``group`` int32 [rows] (the k class for mixtures, the manifold id
    for manifolds), and for mixtures ``support`` int32 [rows, K] and ``coef`` float32 [rows, K],
    for manifolds ``coords`` float32 [rows, M];
  * the ground truth: ``atoms.npy`` (float32 [A, D]) for mixtures, referenced by the manifest key
    ``"atoms"``; ``manifolds.npz`` (``dim_G``, ``center_GD``, ``tangent_GMD``, ``normal_GPD``,
    ``quad_GPMM``) for manifolds, referenced by ``"manifolds"``;
  * the manifest key ``"synthetic"``: ``data.meta`` (generator, version, seed, split, n_rows and
    every parameter), enough to regenerate the set.

  Args:
    out_dir: the directory; created if missing, and must not already hold files.
    data: a :class:`Mixture` or :class:`Manifolds`.
    rows_per_shard: rows per shard (the last may be shorter).
    dtype: shard dtype, ``"float32"`` or ``"float16"``.

  Returns:
    The manifest written.

  Raises:
    ValueError: ``out_dir`` is not empty, or an argument is invalid.

  Examples:
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "mix")
    >>> m = write_dataset(out, make_mixture(10, d=4, n_atoms=5, k_values=(1, 2), seed=0), rows_per_shard=4)
    >>> [s["rows"] for s in m["shards"]], m["atoms"], m["synthetic"]["generator"]
    ([4, 4, 2], 'atoms.npy', 'mixture')
    >>> load_side(out, "true_k").shape
    (10,)
  """
  rows_per_shard = _check_int("rows_per_shard", rows_per_shard, 1)
  if dtype not in ("float32", "float16"):
    raise ValueError(f"Expected dtype to be 'float32' or 'float16', got {dtype!r}")
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise ValueError(f"Expected out_dir to be missing or empty, got {out_dir} holding {len(os.listdir(out_dir))} "
                     "entries (remove it first)")
  if isinstance(data, Mixture):
    side = {"true_k": data.true_k_N, "group": data.group_N, "support": data.support_NK, "coef": data.coef_NK}
    truth_file, truth_key = "atoms.npy", "atoms"
  elif isinstance(data, Manifolds):
    side = {"true_k": data.true_dim_N, "group": data.group_N, "coords": data.coords_NM}
    truth_file, truth_key = "manifolds.npz", "manifolds"
  else:
    raise ValueError(f"Expected a Mixture or Manifolds, got {type(data).__name__}")
  side = {name: np.asarray(arr, np.int32 if arr.dtype.kind in "iu" else np.float32) for name, arr in side.items()}

  os.makedirs(out_dir, exist_ok=True)
  # The ground truth goes first, so a manifest that references it never precedes it.
  truth_path = os.path.join(out_dir, truth_file)
  if isinstance(data, Mixture):
    tmp = truth_path + ".tmp.npy"
    np.save(tmp, data.atoms_AD.astype(np.float32))
  else:
    tmp = truth_path + ".tmp.npz"
    np.savez(tmp, dim_G=data.dim_G, center_GD=data.center_GD, tangent_GMD=data.tangent_GMD,
             normal_GPD=data.normal_GPD, quad_GPMM=data.quad_GPMM)
  os.replace(tmp, truth_path)

  writer = ShardWriter(out_dir, d_model=data.x_ND.shape[1], dtype=dtype, rows_per_shard=rows_per_shard,
                       source={"synthetic": data.meta["generator"]},
                       extra={"synthetic": data.meta, truth_key: truth_file})
  for lo in range(0, len(data.x_ND), rows_per_shard):
    hi = lo + rows_per_shard
    writer.add(data.x_ND[lo:hi], **{name: arr[lo:hi] for name, arr in side.items()})
  return writer.close()


def load_side(dataset_dir: str, name: str) -> np.ndarray:
  """A per-shard side file concatenated over all shards, in data order.

  Args:
    dataset_dir: a ``softsae-activations/1`` directory (validated with ``open_dataset``).
    name: the side file's key in the shard entries, e.g. ``"true_k"`` or ``"group"``.

  Returns:
    The concatenation, with as many rows as the dataset.

  Raises:
    DataError: the dataset is invalid, a shard lacks the side file, or its row count is wrong.

  Examples:
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "man")
    >>> data = make_manifolds(7, d=3, dims=(1, 2), n_manifolds_per_dim=1, seed=0)
    >>> _ = write_dataset(out, data, rows_per_shard=3)
    >>> bool(np.array_equal(load_side(out, "group"), data.group_N))
    True
  """
  ds = open_dataset(dataset_dir)
  parts = []
  for i, shard in enumerate(ds.shards):
    arr = ds.side(name, i)
    if arr is None:
      raise DataError(f"shard {shard.path}: has no side file {name!r} (expected one in every shard entry)")
    if arr.shape[0] != shard.rows:
      raise DataError(f"side file {name!r} of shard {shard.path}: has {arr.shape[0]} rows, expected {shard.rows}")
    parts.append(np.array(arr))
  return np.concatenate(parts)


def make_preset(name: str, kind: str, *, seed: int = 0) -> tuple[Mixture, Mixture] | tuple[Manifolds, Manifolds]:
  """The ``(train, test)`` pair of a preset in :data:`PRESETS`.

  Args:
    name: a key of :data:`PRESETS` (``"small"``, ``"full"``, ``"small-unitnorm"``, ``"full-unitnorm"``).
    kind: ``"mixture"`` or ``"manifolds"``.
    seed: the generator seed.

  Returns:
    ``make_<kind>_pair(**PRESETS[name][kind], seed=seed)``.

  Raises:
    ValueError: unknown ``name`` or ``kind``.

  Examples:
    >>> PRESETS["small"]["mixture"]["n_atoms"], PRESETS["small-unitnorm"]["mixture"]["normalize_rows"]
    (256, True)
  """
  if name not in PRESETS:
    raise ValueError(f"Expected name to be one of {sorted(PRESETS)}, got {name!r}")
  if kind not in PRESETS[name]:
    raise ValueError(f"Expected kind to be one of {sorted(PRESETS[name])}, got {kind!r}")
  make = make_mixture_pair if kind == "mixture" else make_manifolds_pair
  return make(**PRESETS[name][kind], seed=seed)
