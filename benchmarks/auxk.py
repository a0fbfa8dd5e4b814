"""What AuxK costs on a step with dead latents: from the dead latents' columns against the full selection.

Run:  python benchmarks/auxk.py [--d 384] [--f 4096] [--k 32] [--batch 1024] [--rounds 5] [--dead 4,64,150,400]
      (about 2 minutes on one core of a 2-core CPU)

What is timed, interleaved per round: the jitted loss and gradient of a TopK step (the encoder with its
sparse backward, the sparse decode, AuxK) with ``n`` latents dead, for each ``n`` of ``--dead``:

* ``dead columns``: :func:`softsae_jax.losses.auxk_loss` as the train step calls it (``x_BD`` given): with
  at most k_aux latents dead, their columns alone ([B, D] x [D, w] matmuls, w = 64 or k_aux);
* ``full selection``: the same loss without ``x_BD``, i.e. a selection among all F latents, a dense
  decode and a dense [B, F] gradient into the encoder (how every step with a dead latent ran before);
* ``no AuxK``: the loss with no dead latent (AuxK skipped), the floor.

Both AuxK paths give the same loss and gradients (tests/test_sae.py). Prints median times and ratios;
writes nothing; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _steps  # noqa: E402
from _host import header, interleaved_medians, load, shape_args  # noqa: E402


def loss_fns(d: int, f: int, k: int, b: int, dead: list[int]) -> dict:
  """{name: (jitted value_and_grad, args)} for every timed variant."""
  from softsae_jax import archs, losses
  from softsae_jax.train import schedules

  step = _steps.build("topk", d, f, k, b)
  cfg = step.cfg
  params = step.state.params
  x_BD = jnp.asarray(_steps.inputs(b, d)) / step.state.norm_factor
  valid_B = jnp.ones((b,), jnp.float32)
  sched = schedules(cfg, 10)

  def loss(p, dead_F, compact):
    terms = archs.get("topk").train_terms(p, x_BD, valid_B, sched, cfg, None)
    aux = losses.auxk_loss(p, terms.pre_BF, x_BD - terms.recon_BD, dead_F, cfg.sae.k_aux, valid_B,
                           x_BD=x_BD if compact else None)
    return terms.main + cfg.sae.auxk_alpha * aux

  fast = jax.jit(jax.value_and_grad(lambda p, m: loss(p, m, True)))
  full = jax.jit(jax.value_and_grad(lambda p, m: loss(p, m, False)))
  out = {"no AuxK": (fast, (params, jnp.zeros((f,), bool)))}
  for n in dead:
    mask = jnp.zeros((f,), bool).at[(np.arange(n) * (f // n)).astype(np.int32)].set(True)
    out[f"{n} dead: dead columns"] = (fast, (params, mask))
    out[f"{n} dead: full selection"] = (full, (params, mask))
  return out


def measure(d: int, f: int, k: int, b: int, rounds: int, dead: list[int]) -> dict[str, float]:
  """{name: median seconds} over ``rounds`` interleaved rounds after one warm-up call each."""
  return interleaved_medians(loss_fns(d, f, k, b, dead), rounds)


def table(res: dict[str, float]) -> list[str]:
  floor = res["no AuxK"]
  lines = ["| variant | loss + gradient [ms] | vs no AuxK | full / dead columns |", "|---|---|---|---|"]
  for name, t in res.items():
    ratio = ""
    if name.endswith("dead columns"):
      ratio = f"{res[name.replace('dead columns', 'full selection')] / t:.2f}x"
    lines.append(f"| {name} | {1e3 * t:.1f} | {t / floor:.2f} | {ratio} |")
  return lines


def main():
  ap = shape_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), d=384, f=4096, k=32)
  ap.add_argument("--dead", default="4,64,150,400", help="comma-separated counts of dead latents")
  a = ap.parse_args()
  dead = [int(v) for v in a.dead.split(",")]
  print(header(f"d={a.d} F={a.f} k={a.k} B={a.batch} float32 (TopK)", f"{a.rounds} interleaved rounds"), flush=True)
  res = measure(a.d, a.f, a.k, a.batch, a.rounds, dead)
  print(f"\n(load after: {load()})\n")
  print("\n".join(table(res)))


if __name__ == "__main__":
  main()
