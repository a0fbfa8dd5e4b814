"""``softsae sweep-split``: one ordinary workdir per member of a sweep workdir.

``softsae train --set sweep.k=4,8,16 --set sweep.seed=0,1,2`` trains the product of members in one
compiled step (:func:`softsae_jax.train.sweep_train_step`) and writes one workdir whose checkpoints hold
the stacked state (a leading member axis) and whose metrics.jsonl has one line per member and logged
step (``member``, ``k``, ``seed``). ``sweep-split --workdir W --out DIR`` writes ``DIR/k{K}-seed{S}/``
for every member: its own config (the config that trains that member alone: ``sae.k``, ``train.seed``,
and ``data.seed`` set to the sweep's data order), run.json, its metrics lines and a checkpoint at the
sweep's step, so ``eval``, ``encode``, ``report``, ``convert`` and ``softsae_jax.load`` read it like any
run. Nothing is written unless every member's directory is new.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from softsae_jax.cli_types import nonneg_int
from softsae_jax.errors import UserError


class SweepError(UserError):
  pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="a sweep workdir written by `softsae train --set sweep.*`")
  parser.add_argument("--out", required=True, help="directory for the members' workdirs (k{K}-seed{S})")
  parser.add_argument("--step", type=nonneg_int, default=None, help="checkpoint step (default: the latest)")


def run(args: argparse.Namespace) -> int:
  for path in split(args.workdir, args.out, step=args.step):
    print(path)
  return 0


def member_state(state, index: int):
  """Member ``index`` of a stacked sweep state: every leaf with the member axis sliced, the shared
  scalars (step, norm factor, skipped rows) as they are."""
  import jax

  def take(tree):
    return jax.tree.map(lambda a: a[index], tree)

  return state._replace(params=take(state.params), opt_state=take(state.opt_state), key=state.key[index],
                        since_fired_F=state.since_fired_F[index], arch_state=take(state.arch_state))


def split(workdir: str, out: str, *, step: int | None = None) -> list[str]:
  """Writes one workdir per member of the sweep in ``workdir`` under ``out``; returns their paths.

  Raises:
    SweepError: ``workdir`` is not a sweep workdir, or a member's directory already exists.
    CheckpointError: no (such) checkpoint.
  """
  import jax

  from softsae_jax import config as config_lib
  from softsae_jax import files, sharding
  from softsae_jax.checkpoint import Checkpointer, abstract_like, open_run
  from softsae_jax.optim import make_optimizer
  from softsae_jax.train import abstract_state, abstract_sweep_state
  from softsae_jax.trainer import read_metrics

  ck, step, cfg_dict = open_run(workdir, step)
  try:
    cfg = config_lib.from_dict(cfg_dict)
    if not cfg.sweep:
      raise SweepError(f"{workdir} is an ordinary run, not a sweep (its config has no sweep.k / sweep.seed)")
    members = cfg.members()
    targets = [os.path.join(out, m.name) for m in members]
    taken = [t for t in targets if os.path.exists(t)]
    if taken:
      raise SweepError(f"{taken[0]} already exists; choose another --out (nothing was written)")
    tx = make_optimizer(cfg)
    abstract = abstract_sweep_state(cfg, tx)
    rep = sharding.replicated(sharding.make_mesh(1, 1))
    state, data_state = ck.restore(step, abstract_like(abstract, jax.tree.map(lambda _: rep, abstract)))
  finally:
    ck.close()

  run_info = _read_json(os.path.join(workdir, "run.json"))
  metrics = read_metrics(workdir)
  for m, target in zip(members, targets):
    mcfg = m.config
    one = jax.device_get(member_state(state, m.index))
    expected = jax.tree.map(lambda a: (a.shape, a.dtype), abstract_state(mcfg, make_optimizer(mcfg)))
    got = jax.tree.map(lambda a: (a.shape, a.dtype), one)
    if jax.tree.structure(expected) != jax.tree.structure(got) or jax.tree.leaves(expected) != jax.tree.leaves(got):
      raise SweepError(f"{workdir}: member {m.index} does not have the layout of its own config (a bug)")
    os.makedirs(target)
    files.write_json(os.path.join(target, "config.json"), mcfg.to_dict())
    files.write_json(os.path.join(target, "run.json"), {
        **run_info, "sweep": {"workdir": os.path.abspath(workdir), "member": m.index, "k": m.k, "seed": m.seed,
                              "members": len(members)}})
    lines = [{k: v for k, v in rec.items() if k not in ("member", "k", "seed")}
             for rec in metrics if rec.get("member") == m.index and rec["step"] <= step]
    files.write_text(os.path.join(target, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in lines))
    mck = Checkpointer(os.path.join(target, "checkpoints"), keep=1)
    try:
      mck.save(step, one, data_state, mcfg.to_dict())
    finally:
      mck.close()
  return targets


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


if __name__ == "__main__":
  from softsae_jax.cli import main

  sys.exit(main(["sweep-split", *sys.argv[1:]]))
