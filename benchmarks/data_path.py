"""Data path: rows/s from page-cached float16 shards into device batches, against what the step consumes.

Run:  python benchmarks/data_path.py [--rows 500000] [--d 768] [--f 16384] [--k 64] [--batch 1024]
      (about 2 minutes on a 2-core CPU; writes a temporary dataset of rows x d float16, 730 MiB at the
      defaults, and deletes it)

1. Writes ``--rows`` N(0, 1) rows of width d as a float16 ``softsae-activations/1`` dataset
   (:class:`softsae_jax.shards.ShardWriter`, default shard size) in a temporary directory, then reads
   every shard once so that the timed reads come from the page cache.
2. Loader: the path ``softsae train`` runs (softsae_jax/trainer.py ``_loop``): ``BatchSource.batch(s)``
   (the shuffled indices, one vectorised gather per shard, the finiteness check) and ``to_global``
   (``device_put`` of the rows and the valid mask into the batch sharding), through ``prefetch`` with
   the default ``data.prefetch`` depth; each batch is waited for (``block_until_ready``). Also without
   the prefetch thread (depth 0), the rate of one host thread.
3. Step: the real jitted train step (topk, softsae at steady state) at d, F, k, B, float32.
4. The loader's stages one by one (:func:`stages`): index shuffle, gather, finiteness check, device_put.

Loader and steps are timed in interleaved rounds (``--rounds``; each round reads ``--batches`` batches
per loader variant and runs ``--steps`` steps per arch). Printed: rows/s of each (median over rounds),
and loader rows/s over step rows/s. Issue 13's goal: >= 20x at d = 768, or the loader is the next
thing to fix. Writes nothing outside the temporary directory; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import _steps  # noqa: E402
from _host import header, load, shape_args  # noqa: E402


def write_dataset(path: str, rows: int, d: int, *, chunk: int = 65536, seed: int = 0) -> None:
  """``rows`` N(0, 1) rows [rows, d] as a float16 softsae-activations/1 dataset at ``path``."""
  from softsae_jax.shards import ShardWriter

  rng = np.random.default_rng(seed)
  w = ShardWriter(path, d_model=d, dtype="float16")
  for lo in range(0, rows, chunk):
    w.add(rng.standard_normal((min(chunk, rows - lo), d), dtype=np.float32))
  w.close()


def warm_cache(ds) -> None:
  """Reads every shard once (page cache)."""
  for i in range(len(ds.shards)):
    np.asarray(ds.mmap(i)).sum(dtype=np.float32)


def loader(ds, batch: int, *, seed: int = 0, depth: int = 2):
  """``read(first, n)``: times the trainer's loader over batches [first, first + n); returns seconds.

  The same calls as ``trainer._loop``'s ``put`` through ``prefetch(put, steps, depth)``, on a 1x1 mesh.
  """
  import jax

  from softsae_jax import sharding
  from softsae_jax.data import BatchSource, prefetch, to_global

  mesh = sharding.make_mesh(1, 1)
  rows_sh, mask_sh = sharding.batch_shardings(mesh)
  source = BatchSource(ds, batch, seed, rows=sharding.process_rows(rows_sh, batch))
  lo = source.local.start

  def put(s):
    x_BD, valid_B = source.batch(s)
    return to_global(x_BD, rows_sh, (batch, x_BD.shape[1]), lo), to_global(valid_B, mask_sh, (batch,), lo)

  def read(first: int, n: int) -> float:
    t = time.perf_counter()
    for x_BD, valid_B in prefetch(put, range(first, first + n), depth):
      jax.block_until_ready((x_BD, valid_B))
    return time.perf_counter() - t

  return read


def stages(ds, batch: int, n: int = 20, *, seed: int = 0) -> dict[str, float]:
  """Milliseconds per batch of each stage of ``BatchSource.batch`` + ``to_global``, run one after the
  other on one thread: the shuffled indices, the gather from the memory maps, the finiteness check
  and the device_put."""
  import jax

  from softsae_jax import sharding
  from softsae_jax.data import BatchSource, check_finite, read_rows, to_global

  mesh = sharding.make_mesh(1, 1)
  rows_sh, _ = sharding.batch_shardings(mesh)
  source = BatchSource(ds, batch, seed)
  ts = {"indices (index_shuffle, vectorised)": [], "read_rows (gather from the mmaps)": [],
        "check_finite": [], "to_global (device_put)": []}
  for s in range(n):
    t0 = time.perf_counter()
    idx_B = source.indices(s)
    t1 = time.perf_counter()
    x_BD = read_rows(ds, idx_B)
    t2 = time.perf_counter()
    check_finite(ds, idx_B, x_BD, False)
    t3 = time.perf_counter()
    jax.block_until_ready(to_global(x_BD, rows_sh, x_BD.shape))
    t4 = time.perf_counter()
    for name, dt in zip(ts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
      ts[name].append(1e3 * dt)
  return {name: statistics.median(v) for name, v in ts.items()}


def measure(ds, *, d: int, f: int, k: int, batch: int, rounds: int = 5, batches: int = 40, steps: int = 3,
            archs=("topk", "softsae"), depth: int = 2) -> dict[str, float]:
  """Rows/s (median over interleaved rounds) of the loader (prefetch ``depth`` and 0) and of each arch's step."""
  readers = {f"loader (prefetch {depth})": loader(ds, batch, depth=depth),
             "loader (no prefetch)": loader(ds, batch, depth=0)}
  runs = {f"step {arch}": _steps.runner(_steps.build(arch, d, f, k, batch)) for arch in archs}
  for name, read in readers.items():
    read(0, 2)
  for run in runs.values():
    run()
    run()
  rates: dict[str, list[float]] = {name: [] for name in (*readers, *runs)}
  pos = 2
  for _ in range(rounds):
    for name, read in readers.items():
      rates[name].append(batches * batch / read(pos, batches))
      pos += batches
    for name, run in runs.items():
      t = time.perf_counter()
      for _ in range(steps):
        run()
      rates[name].append(steps * batch / (time.perf_counter() - t))
  return {name: statistics.median(v) for name, v in rates.items()}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=500_000)
  shape_args(ap)
  ap.add_argument("--batches", type=int, default=40, help="loader batches per round and variant")
  ap.add_argument("--steps", type=int, default=3, help="train steps per round and arch")
  ap.add_argument("--archs", default="topk,softsae")
  a = ap.parse_args()
  from softsae_jax.config import DataConfig
  from softsae_jax.shards import open_dataset

  depth = DataConfig().prefetch
  print(header(f"{a.rows} rows x d={a.d} float16 (page cache)", f"F={a.f} k={a.k} B={a.batch}",
               f"{a.rounds} interleaved rounds"), flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "acts")
    t = time.perf_counter()
    write_dataset(path, a.rows, a.d)
    ds = open_dataset(path)
    warm_cache(ds)
    print(f"# wrote and cached {ds.n_rows} rows in {len(ds.shards)} shards in {time.perf_counter() - t:.0f} s",
          flush=True)
    rates = measure(ds, d=a.d, f=a.f, k=a.k, batch=a.batch, rounds=a.rounds, batches=a.batches, steps=a.steps,
                    archs=a.archs.split(","), depth=depth)
    parts = stages(ds, a.batch)
  steps = {n: r for n, r in rates.items() if n.startswith("step")}
  print(f"# load after: {load()}\n")
  print("| path | rows/s | MB/s (float16) | " + " | ".join(f"x {n}" for n in steps) + " |")
  print("|---|---|---|" + "---|" * len(steps))
  for name, r in rates.items():
    print(f"| {name} | {r:,.0f} | {r * a.d * 2 / 1e6:,.0f} | " + " | ".join(f"{r / s:.1f}" for s in steps.values())
          + " |")
  worst = min(rates[f"loader (prefetch {depth})"] / s for s in steps.values())
  print(f"\n# the loader's stages, ms per batch of {a.batch} (median of 20, one thread, no prefetch):\n")
  print("| stage | ms | share |\n|---|---|---|")
  for name, ms in parts.items():
    print(f"| {name} | {ms:.2f} | {100 * ms / sum(parts.values()):.0f}% |")
  print(f"\n# goal (issue 13): loader >= 20x the rows the d={a.d} step consumes: {worst:.1f}x at the fastest step "
        f"-> {'met' if worst >= 20 else 'missed'}")


if __name__ == "__main__":
  main()
