"""Sweeps: time per step of S SAEs in one compiled step against S separate single-SAE steps.

Run:  python benchmarks/sweep.py [--d 384] [--f 4096] [--batch 1024] [--ks 8,16,32,64] [--rounds 5]

For each arch it builds the sweep's jitted step (``sweep_train_step``, members = the k values) and the
S jitted single steps (``train_step``, one per member's own config), moves every state past step 0,
then times, interleaved round by round, one sweep step against the S single steps run back to back
(what S separate runs on the same batches cost). It prints the median and best of each and their
ratio (sweep / separate: below 1 means the sweep is cheaper). SoftSAE is timed in its soft phase at a
steady-state alpha, where the soft top-k runs every step. A third column, for SoftSAE only, times a
plain ``jax.vmap`` of the single step's gradient over the members: the soft top-k's ``cond``s then
become ``select``s and its full-sort fallback runs every step (why the sweep folds members into rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from softsae_jax import config as config_lib
from softsae_jax.optim import make_optimizer
from softsae_jax.train import _loss_fn, init_sweep_state, init_train_state, schedules, sweep_train_step, train_step


def _cfg(arch, d, f, b, ks):
  cfg = config_lib.apply_overrides(config_lib.Config(), [
      f"sae.arch={arch}", f"sae.n_latents={f}", f"sae.k={ks[0]}", f"train.batch_size={b}", "train.steps=100000",
      "train.warmup_frac=0.0", "train.alpha_anneal_frac=0.0", "train.k_anneal_frac=0.0"])
  return dataclasses.replace(cfg, sweep=config_lib.SweepConfig(k=tuple(ks))).resolve(d)


def _timed(fn):
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def bench(arch, d, f, b, ks, rounds, seed=0):
  cfg = _cfg(arch, d, f, b, ks)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(b, d)).astype(np.float32))
  v = jnp.ones((b,), bool)
  tx = make_optimizer(cfg)
  sweep_step = jax.jit(lambda s, x, v: sweep_train_step(s, x, v, cfg=cfg, tx=tx), donate_argnums=0)
  sweep_state = [init_sweep_state(cfg, tx, b_dec_D=np.zeros(d, np.float32), norm_factor=1.0)]
  singles = []
  for m in cfg.members():
    mtx = make_optimizer(m.config)
    fn = jax.jit(lambda s, x, v, c=m.config, t=mtx: train_step(s, x, v, cfg=c, tx=t), donate_argnums=0)
    singles.append([fn, init_train_state(jax.random.key(m.seed), m.config, mtx)])

  def run_sweep():
    sweep_state[0], metrics = sweep_step(sweep_state[0], x, v)
    return metrics

  def run_singles():
    out = []
    for one in singles:
      one[1], metrics = one[0](one[1], x, v)
      out.append(metrics)
    return out

  naive = None
  if arch == "softsae":  # gradient of a plain vmap over members: conds become selects
    sched = schedules(cfg, jnp.int32(10))
    params = jax.tree.map(jnp.copy, sweep_state[0].params)  # the sweep step donates its state
    dead = jnp.zeros((len(ks), cfg.sae.F), bool)
    grad = jax.jit(jax.vmap(jax.grad(lambda p, dd: _loss_fn(p, x, v.astype(jnp.float32), dd, sched, cfg)[0])))
    naive = lambda: grad(params, dead)  # noqa: E731

  for _ in range(3):
    run_sweep(), run_singles()
    if naive:
      naive()
  t_sweep, t_sep, t_naive = [], [], []
  for _ in range(rounds):
    t_sweep.append(_timed(run_sweep))
    t_sep.append(_timed(run_singles))
    if naive:
      t_naive.append(_timed(naive))
  return t_sweep, t_sep, t_naive


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--d", type=int, default=384)
  p.add_argument("--f", type=int, default=4096)
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--ks", default="8,16,32,64")
  p.add_argument("--archs", default="topk,softsae")
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args()
  ks = [int(k) for k in args.ks.split(",")]
  print(f"# jax {jax.__version__} {jax.default_backend()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | load {os.getloadavg()[0]:.2f} | d={args.d} F={args.f} B={args.batch} "
        f"k={ks} | interleaved, {args.rounds} rounds")
  print("| arch | S | sweep step ms (median / best) | S separate steps ms (median / best) | sweep / separate "
        "(median, best) | plain vmap of grad ms (median) |")
  print("|---|---|---|---|---|---|")
  for arch in args.archs.split(","):
    t_sweep, t_sep, t_naive = bench(arch, args.d, args.f, args.batch, ks, args.rounds)
    ms = lambda ts: f"{1e3 * statistics.median(ts):.1f} / {1e3 * min(ts):.1f}"  # noqa: E731
    naive = f"{1e3 * statistics.median(t_naive):.1f} (gradient only)" if t_naive else "–"
    print(f"| {arch} | {len(ks)} | {ms(t_sweep)} | {ms(t_sep)} | "
          f"{statistics.median(t_sweep) / statistics.median(t_sep):.2f}, {min(t_sweep) / min(t_sep):.2f} | {naive} |",
          flush=True)


if __name__ == "__main__":
  main()
