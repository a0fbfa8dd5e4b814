"""The ``softsae`` console script: export / train / eval / encode / report / bench.

Every user error (bad data, bad config, wrong workdir) ends with one line ``error: ...`` on stderr
and exit status 1, never a traceback; nothing already saved is touched by a failed command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from softsae_jax.cli_types import positive_int
from softsae_jax.errors import UserError

# Subcommands that live in their own module, each with add_arguments(parser) and run(args) -> int.
# None imports torch or matplotlib at module import time.
_MODULE_COMMANDS = (
    ("export", "softsae_jax.bridge.export", "PyTorch model -> activation shards (needs the `bridge` extra)"),
    ("report", "softsae_jax.report", "a self-contained HTML report of a trained SAE"),
    ("bench", "softsae_jax.bench", "benchmarks: synthetic ground truth, FVU-vs-L0 Pareto"),
)


def _load_cfg(args):
  from softsae_jax import config as config_lib

  cfg = config_lib.load_config_file(args.config) if args.config else config_lib.Config()
  return config_lib.apply_overrides(cfg, args.set or [])


def cmd_train(args) -> int:
  from softsae_jax import trainer

  cfg = _load_cfg(args)
  last = trainer.train(args.data, args.workdir, cfg, progress=not args.quiet,
                       log=lambda m: print(m, file=sys.stderr))
  if last and not last.get("finished"):
    print(json.dumps({k: last[k] for k in ("step", "loss", "fvu", "l0_mean", "k_mean", "dead_frac") if k in last}))
  return 0


def _model_and_data(args):
  from softsae_jax.evaluate import load_model
  from softsae_jax.shards import open_dataset

  model = load_model(args.workdir)
  ds = open_dataset(args.data, expect_d_model=model.d_in)
  skip = args.skip_nonfinite if args.skip_nonfinite is not None else model.cfg.data.skip_nonfinite
  return model, ds, skip


def cmd_eval(args) -> int:
  from softsae_jax.evaluate import evaluate

  model, ds, skip = _model_and_data(args)
  res = evaluate(model, ds, batch_size=args.batch_size, skip_nonfinite=skip)
  text = json.dumps(res, indent=2)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0


def cmd_encode(args) -> int:
  from softsae_jax.evaluate import encode_dataset

  model, ds, skip = _model_and_data(args)
  m = encode_dataset(model, ds, args.out, batch_size=args.batch_size, skip_nonfinite=skip)
  print(f"wrote codes for {m['n_rows']} rows ({m['nnz']} nonzeros) to {args.out}", file=sys.stderr)
  return 0


def _add_eval_args(p):
  p.add_argument("--workdir", required=True, help="a workdir written by `softsae train`")
  p.add_argument("--data", required=True, help="a softsae-activations/1 directory")
  p.add_argument("--batch-size", type=positive_int, default=1024, metavar="B",
                 help="rows per inference call (default: 1024)")
  p.add_argument("--skip-nonfinite", dest="skip_nonfinite", action="store_true", default=None,
                 help="mask NaN/Inf rows instead of stopping (default: the run's data.skip_nonfinite)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="softsae", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("train", help="train an SAE on activation shards (resumes an existing workdir)")
  p.add_argument("--data", required=True, help="a softsae-activations/1 directory")
  p.add_argument("--workdir", required=True, help="output directory (config.json, metrics.jsonl, checkpoints/)")
  p.add_argument("--config", help="a Python config file (get_config() -> Config) or a config.json")
  p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                 help="override one config field, e.g. --set sae.arch=topk --set train.steps=2000")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_train)

  p = sub.add_parser("eval", help="inference-mode metrics over a whole dataset, as JSON")
  _add_eval_args(p)
  p.add_argument("--out", help="also write the JSON here")
  p.set_defaults(func=cmd_eval)

  p = sub.add_parser("encode", help="per-row sparse codes (CSR) and k, in data order")
  _add_eval_args(p)
  p.add_argument("--out", required=True, help="output directory")
  p.set_defaults(func=cmd_encode)

  for name, module_name, help_text in _MODULE_COMMANDS:
    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=help_text)
    module.add_arguments(p)
    p.set_defaults(func=module.run)
  return parser


def _quiet_libraries() -> None:
  """orbax logs INFO/WARNING lines through absl (e.g. on every read-only restore); users see ours."""
  try:
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
  except ImportError:
    pass


def main(argv: list[str] | None = None) -> int:
  _quiet_libraries()
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return int(args.func(args) or 0)
  except UserError as e:  # every command's user errors: bad data, config, workdir, export input
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
