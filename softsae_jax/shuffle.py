"""The training order's permutation, computed for a whole batch of positions at once.

The order of training rows is grain's ``MapDataset.range(N).shuffle(seed).repeat()``: position ``p``
is row ``index_shuffle(p % N, N - 1, (seed + p // N) mod 2**32)`` — a fresh bijection every epoch,
O(1) memory, a pure function of ``(seed, p)``. grain evaluates it one index per Python call (about
10 us each, 11-20 ms per batch of 1024 rows on one core, three quarters of the loader's time; see
docs/benchmarks.md, "Data path"). :func:`shuffled_rows` computes the same permutation with numpy over
the whole array of positions, bit for bit (tests/test_data.py compares it with grain's), so the order
of every run, and the position saved in every checkpoint, is unchanged.

grain's ``index_shuffle`` (``grain/_src/python/experimental/index_shuffle/index_shuffle.cc``) is a
cycle-walking cipher: a Simon-style Feistel network on a block of ``b`` bits, the smallest even
``b >= 16`` with ``b >= ceil(log2(max_index))``, round keys from C++'s ``std::seed_seq{seed}``, the
cipher applied again while the result is above ``max_index``. Its quirk is kept too: where
``max_index`` is a power of two, ``2**b == max_index`` and the index ``max_index`` shares a row with
index 0 (an epoch of ``N = 2**b + 1`` rows, b even and >= 16, reads one row twice and never reads
row ``N - 1``; one row in 65,537 or fewer).

numpy only.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_U32 = 0xFFFFFFFF


def seed_seq(seeds: list[int], n: int) -> list[int]:
  """``std::seed_seq(seeds).generate`` of ``n`` 32-bit words (the C++ standard's [rand.util.seedseq]).

  >>> seed_seq([0], 4) == seed_seq([0], 4) != seed_seq([1], 4)
  True
  """
  s = len(seeds)
  out = [0x8B8B8B8B] * n
  if n == 0:
    return out
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p = (n - t) // 2
  q = p + t
  m = max(s + 1, n)

  def mix(x):
    return (x ^ (x >> 27)) & _U32

  for k in range(m):
    r1 = (1664525 * mix(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n])) & _U32
    r2 = (r1 + (s if k == 0 else (k % n + seeds[k - 1] if k <= s else k % n))) & _U32
    out[(k + p) % n] = (out[(k + p) % n] + r1) & _U32
    out[(k + q) % n] = (out[(k + q) % n] + r2) & _U32
    out[k % n] = r2
  for k in range(m, m + n):
    r3 = (1566083941 * mix((out[k % n] + out[(k + p) % n] + out[(k - 1) % n]) & _U32)) & _U32
    r4 = (r3 - k % n) & _U32
    out[(k + p) % n] ^= r3
    out[(k + q) % n] ^= r4
    out[k % n] = r4
  return out


def _block_bits(max_index: int) -> int:
  bits = math.ceil(math.log2(float(max_index)))
  return max(bits + bits % 2, 16)


def _cipher(max_index: int, seed: int, rounds: int):
  """The block cipher of ``index_shuffle(., max_index, seed, rounds)``, on uint64 arrays."""
  if rounds < 4 or rounds % 2:
    raise ValueError(f"rounds must be even and at least 4, got {rounds}")
  w = _block_bits(max_index) // 2
  mask, w_ = np.uint64((1 << w) - 1), np.uint64(w)
  keys = [np.uint64(k) & mask for k in seed_seq([seed & _U32], rounds)]

  def f(x):
    def rotl(r):
      return ((x << np.uint64(r)) | (x >> (w_ - np.uint64(r)))) & mask
    return (rotl(1) & rotl(8)) ^ rotl(2)

  def encrypt(v):
    left, right = (v >> w_) & mask, v & mask
    for i in range(0, rounds, 2):
      left = left ^ f(right) ^ keys[i]
      right = right ^ f(left) ^ keys[i + 1]
    return (left << w_) | right

  return encrypt


def _walk(step, out, max_index: int):
  """Cycle walking: applies ``step`` again to the entries of ``out`` above ``max_index``."""
  todo = np.flatnonzero(out > np.uint64(max_index))
  while todo.size:
    out[todo] = step(out[todo])
    todo = todo[out[todo] > np.uint64(max_index)]
  return out


def index_shuffle(index_N: np.ndarray, max_index: int, seed: int, rounds: int = 4) -> np.ndarray:
  """grain's ``index_shuffle(index, max_index, seed, rounds)`` for every entry of ``index_N`` at once:
  a bijection of ``[0, max_index]`` (but for grain's power-of-two quirk, see the module docstring).

  >>> index_shuffle(np.arange(5), 4, seed=3).tolist()  # a permutation of 0..4
  [4, 3, 0, 1, 2]
  """
  index_N = np.asarray(index_N, dtype=np.uint64)
  if max_index == 0:
    return np.zeros_like(index_N)
  encrypt = _cipher(max_index, seed, rounds)
  return _walk(encrypt, encrypt(index_N), max_index)


# Below this many rows the block (at least 16 bits) is much wider than the range and a row takes up
# to hundreds of cycle-walking steps: the epoch's whole order is computed once from the cipher's table
# over the block, and kept for the next batches.
_TABLE_ROWS = 1 << 14


@functools.lru_cache(maxsize=4)
def _epoch_order(n_rows: int, seed: int) -> np.ndarray:
  if n_rows == 1:
    return np.zeros(1, np.int64)
  table = _cipher(n_rows - 1, seed, 4)(np.arange(1 << _block_bits(n_rows - 1), dtype=np.uint64))
  return _walk(lambda v: table[v], table[:n_rows].copy(), n_rows - 1).astype(np.int64)


def check_seed(seed: int) -> None:
  """Raises ValueError unless ``seed`` is a shuffle seed, an integer in [0, 2**32) (grain's range)."""
  if not 0 <= seed < 2 ** 32:
    raise ValueError(f"the shuffle seed must be an integer in [0, 2**32), got {seed}")


def shuffled_rows(pos_N: np.ndarray, n_rows: int, seed: int) -> np.ndarray:
  """The rows at positions ``pos_N`` of ``grain.MapDataset.range(n_rows).shuffle(seed).repeat()``,
  int64: the epoch ``p // n_rows`` shuffled with seed ``(seed + epoch) mod 2**32``.

  >>> sorted(shuffled_rows(np.arange(5), 5, seed=0).tolist())  # an epoch is a permutation
  [0, 1, 2, 3, 4]
  """
  check_seed(seed)
  pos_N = np.asarray(pos_N, dtype=np.int64)
  epoch_N, within_N = np.divmod(pos_N, n_rows)
  out_N = np.empty_like(pos_N)
  for e in np.unique(epoch_N):
    sel = epoch_N == e
    seed_e = (seed + int(e)) % 2 ** 32
    if n_rows <= _TABLE_ROWS:
      out_N[sel] = _epoch_order(n_rows, seed_e)[within_N[sel]]
    else:
      out_N[sel] = index_shuffle(within_N[sel], n_rows - 1, seed_e).astype(np.int64)
  return out_N
