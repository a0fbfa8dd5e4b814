"""The real ``softsae train`` step, set up for a benchmark: config, compiled step, state and a batch.

Shared by benchmarks/peers.py, accelerator.py and data_path.py (a sibling module of the scripts).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

# SoftSAE at steady state: the soft phase with alpha and the k budget at their final values, as after
# the first 1-5% of a run (train.alpha_anneal_frac, train.k_anneal_frac); a long run keeps the step
# far from the hard phase (the last train.hard_frac of the steps).
STEADY = ("train.steps=1000000", "train.alpha_anneal_frac=0", "train.k_anneal_frac=0")


class Step(NamedTuple):
  cfg: Any  # the resolved softsae_jax Config
  tx: Any
  mesh: Any
  fn: Any  # make_train_step(cfg, tx, mesh): jitted, state donated
  state: Any
  x_BD: Any  # device array, the batch every step reads
  valid_B: Any


def inputs(b: int, d: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
  """N(0, 1) rows [b, d] (the step's speed does not depend on the values)."""
  return np.random.default_rng(seed).normal(size=(b, d)).astype(dtype)


# Dead latents in a training run's steps: in the MiniLM runs (docs/results.md) 55-68% of the logged steps
# had some, a median 0.13% of the latents; the "(dead latents)" contenders have 0.1% of F dead.
DEAD_FRAC = 0.001


def dead_latents(f: int) -> np.ndarray:
  """The latents a "(dead latents)" contender holds dead: 0.1% of F (at least 1), spread over [0, F)."""
  n = max(1, round(DEAD_FRAC * f))
  return (np.arange(n) * (f // n)).astype(np.int32)


def build(arch: str, d: int, f: int, k: int, b: int, *, overrides=(), x_dtype=np.float32, seed: int = 0,
          dead: bool = False, native: bool = True) -> Step:
  """The step ``softsae train`` compiles for these shapes, on a 1x1 mesh of the first device.

  ``dead``: :func:`dead_latents` are dead (past the dead-token window) and stay so (encoder bias -100:
  they never fire), so AuxK runs on every step, as on most steps of a training run.
  ``native=False``: compiled as without the native top-k kernel (``softsae_jax.native``; the pure-XLA
  selection), for a before/after in one process."""
  import unittest.mock

  import jax

  from softsae_jax import config as config_lib
  from softsae_jax import native as native_lib
  from softsae_jax import sharding
  from softsae_jax.data import to_global
  from softsae_jax.optim import make_optimizer
  from softsae_jax.train import init_sharded, make_train_step

  ov = [f"sae.arch={arch}", f"sae.n_latents={f}", f"sae.k={k}", f"train.batch_size={b}", *STEADY, *overrides]
  cfg = config_lib.apply_overrides(config_lib.Config(), ov).resolve(d)
  tx = make_optimizer(cfg)
  mesh = sharding.make_mesh(1, 1)
  x_BD = inputs(b, d, seed, x_dtype)
  x64 = x_BD.astype(np.float64)
  nf = float(np.sqrt(np.mean(np.sum(x64 * x64, axis=1))))
  # The trainer starts b_dec at the first batch's geometric median; the mean is as good for timing.
  state = init_sharded(jax.random.key(seed), cfg, tx, mesh, b_dec_D=(x64.mean(0) / nf).astype(np.float32),
                       norm_factor=nf)
  if dead:
    idx = dead_latents(f)
    params = state.params._replace(b_enc=state.params.b_enc.at[idx].set(-100.0))
    state = state._replace(params=params, since_fired_F=state.since_fired_F.at[idx].set(cfg.dead_tokens))
  rows_sh, mask_sh = sharding.batch_shardings(mesh)
  x_BD, valid_B = to_global(x_BD, rows_sh, x_BD.shape), to_global(np.ones((b,), bool), mask_sh, (b,))
  fn = make_train_step(cfg, tx, mesh)
  if not native:  # the choice is made while tracing: compile now, with the kernel reported unavailable
    with unittest.mock.patch.object(native_lib, "available", lambda: False):
      fn = fn.lower(state, x_BD, valid_B).compile()
  return Step(cfg, tx, mesh, fn, state, x_BD, valid_B)


def runner(step: Step):
  """``run()``: one blocking step on ``step``'s state (donated and replaced each call)."""
  import jax

  holder = [step.state]

  def run():
    holder[0], metrics = step.fn(holder[0], step.x_BD, step.valid_B)
    jax.block_until_ready((holder[0], metrics))
    return metrics

  return run
