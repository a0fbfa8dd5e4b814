"""Training-step throughput: tokens/s of the jitted step, and step time over dense-matmul time.

Run:  python benchmarks/train_step.py [--d 384] [--f 4096] [--k 32] [--batch 1024] [--iters 10]

For each arch it times the real jitted ``train_step`` (state donated, one device) and, in the same
run, a jitted function doing only the dense matmuls such a step must do at these shapes
(each B x D x F): encoder forward, decoder forward, the two decoder-backward products
(dW_dec and d acts) and dW_enc — five — plus for SoftSAE the k-estimator's forward and dW_k1, seven.
The ratio step / matmuls says how close the step is to that roofline (1.0 = nothing but matmuls;
below 1 means the step does less dense work than a dense implementation, e.g. sparse decode).
Timings on shared 2-core machines vary up to 2x between runs: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from softsae_jax import config as config_lib
from softsae_jax.optim import make_optimizer
from softsae_jax.train import init_train_state, train_step
from softsae_jax.host import reuse_freed_memory

MALLOC = reuse_freed_memory()  # as `softsae` runs (softsae_jax.host); SOFTSAE_MALLOC=system for glibc's defaults


def _time(fn, *args, iters):
  out = fn(*args)
  jax.block_until_ready(out)
  ts = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def bench_step(arch, d, f, k, b, iters, seed=0):
  cfg = config_lib.apply_overrides(config_lib.Config(), [
      f"sae.arch={arch}", f"sae.n_latents={f}", f"sae.k={k}", f"train.batch_size={b}", "train.steps=100000",
      "train.warmup_frac=0.0"]).resolve(d)
  tx = make_optimizer(cfg)
  step = jax.jit(lambda s, x, v: train_step(s, x, v, cfg=cfg, tx=tx), donate_argnums=0)
  state = init_train_state(jax.random.key(seed), cfg, tx)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(b, d)).astype(np.float32))
  v = jnp.ones((b,), bool)
  # Move past step 0 (lr 0) and warm up; time steady-state steps.
  for _ in range(3):
    state, m = step(state, x, v)
  jax.block_until_ready(state)
  ts = []
  for _ in range(iters):
    t = time.perf_counter()
    state, m = step(state, x, v)
    jax.block_until_ready(state)
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def bench_matmuls(n_mm, d, f, b, iters):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(b, d)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(d, f)).astype(np.float32))
  g = jnp.asarray(rng.normal(size=(b, f)).astype(np.float32))

  @jax.jit
  def mm(x, w, g):
    outs = []
    for i in range(n_mm):
      if i % 3 == 0:
        outs.append(jnp.sum(x @ (w + i)))  # [B,D]@[D,F]
      elif i % 3 == 1:
        outs.append(jnp.sum((g + i) @ w.T))  # [B,F]@[F,D]
      else:
        outs.append(jnp.sum(x.T @ (g + i)))  # [D,B]@[B,F]
    return sum(outs)

  return _time(mm, x, w, g, iters=iters)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--d", type=int, default=384)
  ap.add_argument("--f", type=int, default=4096)
  ap.add_argument("--k", type=int, default=32)
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--archs", default="topk,softsae")
  a = ap.parse_args()
  print(f"# jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
        f"d={a.d} F={a.f} k={a.k} B={a.batch}, {MALLOC}")
  print(f"{'arch':10s} {'step_s':>8s} {'tokens/s':>10s} {'matmul_s':>9s} {'step/matmul':>12s}")
  for arch in a.archs.split(","):
    n_mm = 7 if arch == "softsae" else 5
    t_mm = bench_matmuls(n_mm, a.d, a.f, a.batch, a.iters)
    t_step = bench_step(arch, a.d, a.f, a.k, a.batch, a.iters)
    print(f"{arch:10s} {t_step:8.4f} {a.batch / t_step:10.0f} {t_mm:9.4f} {t_step / t_mm:12.2f}")


if __name__ == "__main__":
  main()
