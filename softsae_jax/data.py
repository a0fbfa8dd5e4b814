"""Reading activation shards: random-access rows, a deterministic global shuffle, and batches.

The order of training rows is grain's ``MapDataset.range(N).shuffle(seed).repeat().batch(B)``:
``index_shuffle``, a bijection computed per index, reshuffles all rows every epoch in O(1) memory
whatever N is, and batch ``i`` is a pure function of ``(seed, i)``. :mod:`softsae_jax.shuffle`
computes that permutation for a whole batch at once with numpy, bit for bit grain's (20x faster
than grain's one call per row). That makes the loader state just ``(seed, step)``, which is saved in
every checkpoint: a resumed run reads exactly the batches the uninterrupted run would have read. Rows
are read from memory-mapped shards with one vectorised gather per shard and batch (row-by-row
access, or grain records of one row, are many times slower; see docs/data-format.md).

In a multi-process run every process reads only the rows of each global batch that its own devices
hold (:func:`softsae_jax.sharding.process_rows`: a row range; with a 'model' axis across processes,
several processes read the same rows), and :func:`to_global` assembles the global array from them.

numpy only, except :func:`to_global`.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from softsae_jax.shards import DataError, Dataset
from softsae_jax.shuffle import check_seed, shuffled_rows


class NonFiniteError(DataError):
  pass


def read_rows(ds: Dataset, idx_N: np.ndarray) -> np.ndarray:
  """Rows ``idx_N`` (global indices, any order) as an array [N, D] in the stored dtype."""
  idx_N = np.asarray(idx_N, dtype=np.int64)
  order = np.argsort(idx_N, kind="stable")
  sorted_idx = idx_N[order]
  starts = ds.starts_N
  shard_of = np.searchsorted(starts, sorted_idx, side="right") - 1
  out_ND = np.empty((len(idx_N), ds.d_model), dtype=ds.dtype)
  bounds = np.searchsorted(shard_of, np.arange(len(ds.shards) + 1), side="left")
  for s in np.unique(shard_of):
    lo, hi = bounds[s], bounds[s + 1]
    local = sorted_idx[lo:hi] - starts[s]
    out_ND[order[lo:hi]] = ds.mmap(int(s))[local]
  return out_ND


def finite_rows(x_ND: np.ndarray) -> np.ndarray:
  """``np.isfinite(x_ND).all(axis=1)``; for float16 from the exponent bits (all ones: Inf or NaN),
  ~12x faster than numpy's float16 ``isfinite``.

  >>> finite_rows(np.array([[1, 2], [np.inf, 0], [0, np.nan]], np.float16)).tolist()
  [True, False, False]
  """
  if x_ND.dtype == np.float16:
    return (x_ND.view(np.uint16) & 0x7C00).max(axis=1, initial=0) != 0x7C00
  return np.isfinite(x_ND).all(axis=1)


def check_finite(ds: Dataset, idx_N: np.ndarray, x_ND: np.ndarray, skip: bool) -> np.ndarray:
  """Returns valid_N (bool); raises NonFiniteError naming shard and row unless ``skip``."""
  valid_N = finite_rows(x_ND)
  if not skip and not valid_N.all():
    bad = int(np.asarray(idx_N)[np.argmin(valid_N)])
    file, row = ds.locate(bad)
    raise NonFiniteError(
        f"non-finite value (NaN/Inf) in {ds.path}/{file} row {row} (global row {bad}); "
        "fix the data or pass --set data.skip_nonfinite=true to drop such rows")
  return valid_N


class BatchSource:
  """Deterministic shuffled batches: ``batch(step)`` is a pure function of (seed, step).

  Args:
    ds: the opened dataset.
    batch_size: global batch size B.
    seed: shuffle seed.
    shuffle: False reads rows in data order (still repeating over epochs).
    rows: the rows of each global batch this process reads (default: all of them).
  """

  def __init__(self, ds: Dataset, batch_size: int, seed: int, *, shuffle: bool = True, skip_nonfinite: bool = False,
               rows: slice | None = None):
    if shuffle:
      check_seed(seed)  # here, not at the first batch on the prefetch thread
    self.ds = ds
    self.batch_size = batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.skip_nonfinite = skip_nonfinite
    self.local = slice(0, batch_size) if rows is None else rows

  def indices(self, step: int) -> np.ndarray:
    """The global rows of batch ``step`` (int64 [B]): positions ``[step B, (step + 1) B)`` of the
    repeated, per-epoch shuffled order."""
    pos_B = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
    return shuffled_rows(pos_B, self.ds.n_rows, self.seed) if self.shuffle else pos_B % self.ds.n_rows

  def batch(self, step: int, *, whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(x_BD in the stored dtype, valid_B bool) for this process's rows of batch ``step`` (all of them
    with ``whole``)."""
    idx_B = self.indices(step)[slice(None) if whole else self.local]
    x_BD = read_rows(self.ds, idx_B)
    valid_B = check_finite(self.ds, idx_B, x_BD, self.skip_nonfinite)
    if not valid_B.all():
      x_BD = np.where(valid_B[:, None], x_BD, np.zeros((), x_BD.dtype))
    return x_BD, valid_B

  def state(self, step: int) -> dict:
    """The loader's position, as saved in checkpoints."""
    return {"seed": self.seed, "step": int(step), "rows_read": int(step) * self.batch_size,
            "epoch": int(step) * self.batch_size // self.ds.n_rows, "n_rows": self.ds.n_rows}


def prefetch(fn, steps: range, depth: int) -> Iterator:
  """Yields ``fn(step)`` for each step, computed ``depth`` steps ahead on a background thread.

  Exceptions raised in ``fn`` are re-raised in the consumer at the step where they happened.
  """
  if depth <= 0:
    for s in steps:
      yield fn(s)
    return
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def worker():
    for s in steps:
      if stop.is_set():
        return
      try:
        item = (fn(s), None)
      except BaseException as e:  # handed to the consumer
        item = (None, e)
      q.put(item)
      if item[1] is not None:
        return

  t = threading.Thread(target=worker, daemon=True)
  t.start()
  try:
    for _ in steps:
      item, err = q.get()
      if err is not None:
        raise err
      yield item
  finally:
    stop.set()


def iter_ordered(ds: Dataset, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
  """(start row, x_ND) over the whole dataset in data order; the last batch may be short."""
  for i, shard in enumerate(ds.shards):
    mm = ds.mmap(i)
    for lo in range(0, shard.rows, batch_size):
      yield shard.start + lo, np.asarray(mm[lo:lo + batch_size])


def sample_rows(ds: Dataset, n: int) -> np.ndarray:
  """Evenly spaced global row indices (deterministic, seed-independent), at most ``n``."""
  n = min(n, ds.n_rows)
  return np.unique(np.linspace(0, ds.n_rows - 1, n).round().astype(np.int64))


def estimate_norm_factor(ds: Dataset, n_rows: int, skip_nonfinite: bool) -> float:
  """sqrt(mean_i ||x_i||^2) over evenly spaced rows (docs/method.md §2.4; uncentred, as the reference)."""
  idx = sample_rows(ds, n_rows)
  x_ND = read_rows(ds, idx).astype(np.float64)
  valid = check_finite(ds, idx, x_ND, skip_nonfinite)
  x_ND = x_ND[valid]
  if len(x_ND) == 0:
    raise DataError(f"{ds.path}: no finite rows in the sample used for the norm factor")
  nf = float(np.sqrt(np.mean(np.sum(x_ND * x_ND, axis=1))))
  if not nf > 0:
    raise DataError(f"{ds.path}: the sampled rows are all zero; cannot normalise")
  return nf


def to_global(x_local: np.ndarray, sharding, global_shape: tuple[int, ...], row_start: int = 0) -> "jax.Array":  # noqa: F821
  """This process's rows ``[row_start, row_start + len(x_local))`` of a global array -> the global jax
  array with ``sharding``: each addressable device gets exactly the rows its shard holds."""
  import jax

  arrays = []
  for device, index in sharding.addressable_devices_indices_map(global_shape).items():
    lo, hi, _ = index[0].indices(global_shape[0])
    arrays.append(jax.device_put(x_local[(slice(lo - row_start, hi - row_start),) + tuple(index[1:])], device))
  return jax.make_array_from_single_device_arrays(global_shape, sharding, arrays)
