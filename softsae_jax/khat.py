"""What SoftSAE's per-token k-hat follows on real data (``softsae eval --compare W2``).

On synthetic data the true k is known (``softsae bench synthetic``); on real activations it is not,
so k-hat is compared, token by token over a whole dataset, with three observable proxies:

* the per-token reconstruction error of a fixed-k run ``W2`` (TopK at the same mean L0): tokens that
  a fixed budget reconstructs badly are the ones that need more latents —
  ``spearman_k_err_compare`` (squared error), ``spearman_k_relerr_compare`` (relative error);
* the norm ``‖x − b_dec‖`` of the input the encoder sees (raw units) — ``spearman_k_norm``; since a
  larger row tends to need more latents *and* to have a larger error, the error correlation is also
  given with the norm partialled out (``partial_spearman_k_err_given_norm``);
* a local intrinsic dimension (LID) estimate on a random sample of rows (``--lid-sample``): TwoNN
  (Facco et al. 2017, "Estimating the intrinsic dimension of datasets by a minimal neighborhood
  information", Sci. Rep. 7:12140) — for each row ``μ = r₂/r₁`` (distances to its two nearest other
  rows); the global estimate is ``n / Σ log μ``, and the local one at a row is the same estimate over
  the row and its ``--lid-neighbors`` nearest rows. Reported: ``spearman_k_lid``, ``spearman_norm_lid``
  and ``partial_spearman_k_lid_given_norm`` (the rank correlation of k-hat with the LID controlling
  for the norm).

Partial correlations are of ranks (Spearman): ``(r_xy − r_xz r_yz) / √((1 − r_xz²)(1 − r_yz²))``.
For an arch without k-hat, ``k`` is the per-token count of active latents (``k_source: "l0"``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from softsae_jax.stats import pearson, rankdata, spearman

LID_SAMPLE = 2000
LID_NEIGHBORS = 20


def partial_spearman(x, y, z) -> float:
  """The rank correlation of ``x`` and ``y`` with ``z`` partialled out; NaN when undefined.

  Examples:
    >>> rng = np.random.default_rng(0); z = rng.normal(size=2000)
    >>> x, y = z + 0.3 * rng.normal(size=2000), z + 0.3 * rng.normal(size=2000)  # related only through z
    >>> spearman(x, y) > 0.8, abs(partial_spearman(x, y, z)) < 0.1
    (True, True)
  """
  rx, ry, rz = rankdata(x), rankdata(y), rankdata(z)
  r_xy, r_xz, r_yz = pearson(rx, ry), pearson(rx, rz), pearson(ry, rz)
  den = math.sqrt(max((1 - r_xz ** 2) * (1 - r_yz ** 2), 0.0))
  if not all(map(math.isfinite, (r_xy, r_xz, r_yz))) or den == 0.0:
    return float("nan")
  return float(np.clip((r_xy - r_xz * r_yz) / den, -1.0, 1.0))


def twonn_local_id(x_ND: np.ndarray, n_neighbors: int = LID_NEIGHBORS) -> tuple[np.ndarray, float]:
  """TwoNN intrinsic dimension: a local estimate per row and the global one (see the module docstring).

  Rows whose nearest other row is at distance 0 (duplicates) have no ratio and are left out of every
  estimate; a row whose neighbourhood has no ratio gets NaN.

  Args:
    x_ND: the rows (all pairwise distances are computed: keep N to a few thousand).
    n_neighbors: the neighbourhood of the local estimate (besides the row itself).

  Returns:
    ``(lid_N, global_id)``.

  Examples:
    >>> rng = np.random.default_rng(0)
    >>> plane = np.concatenate([rng.normal(size=(1500, 2)), np.zeros((1500, 8))], axis=1)
    >>> lid, d = twonn_local_id(plane @ np.linalg.qr(rng.normal(size=(10, 10)))[0])
    >>> 1.7 < d < 2.3 and 1.5 < float(np.nanmedian(lid)) < 2.6
    True
  """
  x = np.asarray(x_ND, np.float64)
  n = len(x)
  if n < 3:
    raise ValueError(f"Expected at least 3 rows, got {n}")
  sq = np.sum(x * x, axis=1)
  d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
  np.fill_diagonal(d2, np.inf)
  m = min(n_neighbors, n - 1)
  near = np.argpartition(d2, kth=min(m, n - 2), axis=1)[:, :max(m, 2)]
  near_d2 = np.take_along_axis(d2, near, axis=1)
  order = np.argsort(near_d2, axis=1)
  near, near_d2 = np.take_along_axis(near, order, axis=1), np.take_along_axis(near_d2, order, axis=1)
  r1, r2 = np.sqrt(near_d2[:, 0]), np.sqrt(near_d2[:, 1])
  ok = r1 > 0
  log_mu = np.where(ok, np.log(np.where(ok, r2 / np.where(ok, r1, 1.0), 1.0)), 0.0)
  global_id = float(ok.sum() / log_mu[ok].sum()) if log_mu[ok].sum() > 0 else float("nan")
  hood = np.concatenate([np.arange(n)[:, None], near[:, :m]], axis=1)
  cnt = ok[hood].sum(axis=1)
  tot = log_mu[hood].sum(axis=1)
  lid = np.where((cnt > 0) & (tot > 0), cnt / np.where(tot > 0, tot, 1.0), np.nan)
  return lid, global_id


def _finite(x: float) -> float | None:
  return float(x) if x is not None and math.isfinite(x) else None


def compare(model, other, ds, *, batch_size: int = 1024, skip_nonfinite: bool = False, lid_sample: int = LID_SAMPLE,
            lid_neighbors: int = LID_NEIGHBORS, seed: int = 0, other_workdir: str = "") -> dict[str, Any]:
  """Per-token k of ``model`` (k-hat for SoftSAE) against ``other``'s per-token error, the norm and a LID.

  Args:
    model: the run whose k is studied (a loaded :class:`softsae_jax.evaluate.Model`).
    other: the fixed-k run (TopK at the same mean L0) whose per-token error is the proxy.
    ds: the rows (both models see all of them, in order).
    batch_size, skip_nonfinite: as :func:`softsae_jax.evaluate.batches`.
    lid_sample: rows drawn (seeded) for the local intrinsic dimension; 0 skips it.
    lid_neighbors: the LID neighbourhood size.
    seed: the sample's seed.
    other_workdir: recorded in the result.

  Returns:
    The correlations (see the module docstring) and both runs' mean L0.
  """
  from softsae_jax.data import read_rows
  from softsae_jax.evaluate import batches

  if other.d_in != model.d_in:
    raise ValueError(f"--compare run has d_model={other.d_in}, this run {model.d_in}")
  b_dec = model.norm_factor * np.asarray(model.params.b_dec, np.float64)
  parts: dict[str, list[np.ndarray]] = {k: [] for k in ("valid", "k", "l0", "l0_other", "err", "relerr", "norm")}
  for a, b in zip(batches(model, ds, batch_size=batch_size, skip_nonfinite=skip_nonfinite),
                  batches(other, ds, batch_size=batch_size, skip_nonfinite=skip_nonfinite)):
    x = a.x.astype(np.float64)
    err = np.sum((x - b.recon.astype(np.float64)) ** 2, axis=1)
    parts["valid"].append(a.valid & b.valid)
    parts["k"].append(a.k.astype(np.float64))
    parts["l0"].append((a.codes != 0).sum(axis=1))
    parts["l0_other"].append((b.codes != 0).sum(axis=1))
    parts["err"].append(err)
    parts["relerr"].append(err / np.maximum(np.sum(x * x, axis=1), 1e-30))
    parts["norm"].append(np.linalg.norm(x - b_dec[None, :], axis=1))
  v = np.concatenate(parts["valid"])
  col = {k: np.concatenate(p)[v] for k, p in parts.items() if k != "valid"}
  soft = model.arch == "softsae"
  k = col["k"] if soft else col["l0"].astype(np.float64)
  res: dict[str, Any] = {
      "compare_workdir": os.path.abspath(other_workdir) if other_workdir else None, "compare_arch": other.arch,
      "k_source": "k_hat" if soft else "l0", "n_rows": int(v.sum()),
      "l0_mean": float(col["l0"].mean()), "l0_mean_compare": float(col["l0_other"].mean()),
      "spearman_k_err_compare": _finite(spearman(k, col["err"])),
      "spearman_k_relerr_compare": _finite(spearman(k, col["relerr"])),
      "spearman_k_norm": _finite(spearman(k, col["norm"])),
      "spearman_err_compare_norm": _finite(spearman(col["err"], col["norm"])),
      "partial_spearman_k_err_given_norm": _finite(partial_spearman(k, col["err"], col["norm"])),
  }
  if abs(res["l0_mean"] - res["l0_mean_compare"]) > 0.1 * max(res["l0_mean_compare"], 1e-9):
    res["note"] = (f"the mean L0 differ by more than 10% ({res['l0_mean']:.2f} vs {res['l0_mean_compare']:.2f}); "
                   "compare with a fixed-k run at this run's mean L0")
  if lid_sample > 0:
    rows = np.flatnonzero(v)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), min(lid_sample, len(rows)), replace=False))
    lid, global_id = twonn_local_id(read_rows(ds, rows[pick]).astype(np.float64), lid_neighbors)
    ok = np.isfinite(lid)
    ks, ns, es = k[pick][ok], col["norm"][pick][ok], col["err"][pick][ok]
    res.update({
        "lid_sample": int(len(pick)), "lid_neighbors": lid_neighbors, "lid_estimator": "TwoNN (Facco et al. 2017)",
        "twonn_global_id": _finite(global_id), "lid_median": _finite(float(np.median(lid[ok]))) if ok.any() else None,
        "spearman_k_lid": _finite(spearman(ks, lid[ok])), "spearman_norm_lid": _finite(spearman(ns, lid[ok])),
        "spearman_err_compare_lid": _finite(spearman(es, lid[ok])),
        "partial_spearman_k_lid_given_norm": _finite(partial_spearman(ks, lid[ok], ns)),
    })
  return res
