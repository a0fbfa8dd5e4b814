"""``softsae train``, ``softsae eval`` and ``softsae encode``: flags and runs (registered in softsae_jax.cli).

Each command is a pair ``add_<name>_arguments(parser)`` / ``run_<name>(args) -> int``. Nothing heavy is
imported at module level: jax and the model code are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from softsae_jax import distributed
from softsae_jax.cli_types import nonneg_int, positive_int


# --------------------------------------------------------------------------- train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the ``softsae train`` flags to ``parser``."""
  parser.add_argument("--data", required=True, help="a softsae-activations/1 directory")
  parser.add_argument("--workdir", required=True, help="output directory (config.json, metrics.jsonl, checkpoints/)")
  parser.add_argument("--config", help="a Python config file (get_config() -> Config) or a config.json")
  parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                      help="override one config field, e.g. --set sae.arch=topk --set train.steps=2000")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  distributed.add_arguments(parser)


def _load_cfg(args: argparse.Namespace):
  from softsae_jax import config as config_lib

  cfg = config_lib.load_config_file(args.config) if args.config else config_lib.Config()
  return config_lib.apply_overrides(cfg, args.set or [])


def run_train(args: argparse.Namespace) -> int:
  """Trains (or resumes) a run in ``--workdir``; prints the last metrics if the run did not finish.

  Raises:
    UserError: bad data, config or workdir (the CLI prints it as one ``error:`` line).
  """
  cfg = _load_cfg(args)
  distributed.initialize(args)  # before any other jax call
  from softsae_jax import trainer

  last = trainer.train(args.data, args.workdir, cfg, progress=not args.quiet,
                       log=lambda m: print(m, file=sys.stderr))
  if last and not last.get("finished"):
    keys = ("step", "member", "k", "seed", "loss", "fvu", "l0_mean", "k_mean", "dead_frac")
    for rec in last.get("members", [last]):  # a sweep: one line per member
      print(json.dumps({k: rec[k] for k in keys if k in rec}))
  return 0


# --------------------------------------------------------------------------- eval and encode


def _add_model_and_data_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="a workdir written by `softsae train`")
  parser.add_argument("--data", required=True, help="a softsae-activations/1 directory")
  parser.add_argument("--batch-size", type=positive_int, default=1024, metavar="B",
                      help="rows per inference call (default: 1024)")
  parser.add_argument("--skip-nonfinite", dest="skip_nonfinite", action="store_true", default=None,
                      help="mask NaN/Inf rows instead of stopping (default: the run's data.skip_nonfinite)")
  add_mesh_argument(parser)


def add_mesh_argument(parser: argparse.ArgumentParser) -> None:
  """``--set mesh.data=N --set mesh.model=M``: the inference mesh (eval, encode, report)."""
  parser.add_argument("--set", action="append", metavar="mesh.KEY=VALUE",
                      help="the inference mesh, e.g. --set mesh.model=4 splits the latents over 4 devices")


def _model_and_data(args: argparse.Namespace):
  from softsae_jax.evaluate import load, mesh_from_overrides
  from softsae_jax.shards import open_dataset

  model = load(args.workdir, mesh=mesh_from_overrides(args.set))
  ds = open_dataset(args.data, expect_d_model=model.d_in)
  skip = args.skip_nonfinite if args.skip_nonfinite is not None else model.cfg.data.skip_nonfinite
  return model, ds, skip


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the ``softsae eval`` flags to ``parser``."""
  _add_model_and_data_arguments(parser)
  parser.add_argument("--out", help="also write the JSON here")
  parser.add_argument("--compare", metavar="WORKDIR2",
                      help="a fixed-k run (TopK at this run's mean L0): adds a \"compare\" block, the Spearman of "
                           "this run's per-token k-hat with WORKDIR2's per-token error, with ||x - b_dec|| and with a "
                           "local intrinsic dimension (softsae_jax.khat)")
  parser.add_argument("--lid-sample", type=nonneg_int, default=2000, metavar="N",
                      help="with --compare: rows sampled for the TwoNN local intrinsic dimension "
                           "(0: none; default 2000)")
  parser.add_argument("--lid-neighbors", type=positive_int, default=20, metavar="M",
                      help="with --compare: neighbours of the local TwoNN estimate (default 20)")


def run_eval(args: argparse.Namespace) -> int:
  """Prints inference-mode metrics over the whole dataset as JSON (and writes them to ``--out``)."""
  from softsae_jax import files
  from softsae_jax.evaluate import evaluate

  model, ds, skip = _model_and_data(args)
  res = evaluate(model, ds, batch_size=args.batch_size, skip_nonfinite=skip)
  if args.compare:
    from softsae_jax import khat
    from softsae_jax.evaluate import load

    other = load(args.compare)
    if other.d_in != model.d_in:
      from softsae_jax.shards import DataError

      raise DataError(f"--compare {args.compare} was trained on d_model={other.d_in}, {args.workdir} on {model.d_in}")
    res["compare"] = khat.compare(model, other, ds, batch_size=args.batch_size, skip_nonfinite=skip,
                                  lid_sample=args.lid_sample, lid_neighbors=args.lid_neighbors,
                                  other_workdir=args.compare)
  print(json.dumps(res, indent=2))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    files.write_json(args.out, res)
  return 0


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the ``softsae encode`` flags to ``parser``."""
  _add_model_and_data_arguments(parser)
  parser.add_argument("--out", required=True, help="output directory")


def run_encode(args: argparse.Namespace) -> int:
  """Writes every row's sparse code (CSR) and k to ``--out``, in data order."""
  from softsae_jax.evaluate import encode_dataset

  model, ds, skip = _model_and_data(args)
  m = encode_dataset(model, ds, args.out, batch_size=args.batch_size, skip_nonfinite=skip)
  print(f"wrote codes for {m['n_rows']} rows ({m['nnz']} nonzeros) to {args.out}", file=sys.stderr)
  return 0
