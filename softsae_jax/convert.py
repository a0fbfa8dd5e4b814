"""``softsae convert``: a trained workdir to another library's format, or another library's SAE to a workdir.

Export::

  softsae convert --workdir runs/x --to saelens --out exports/x_saelens [--eval-data ACTS]
  softsae convert --workdir runs/x --to dictionary_learning --out exports/x_dl

Import (writes a new workdir that ``softsae eval/encode/report`` and ``softsae_jax.load`` read)::

  softsae convert --from saelens|sparsify|gemmascope|dictionary_learning --in DIR --workdir runs/imported

Formats, tensor mappings and refusals: :mod:`softsae_jax.interop`. Nothing existing is overwritten:
``--out`` and an import's ``--workdir`` must be new; output is staged and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import sys

from softsae_jax.cli_types import positive_int

EXPORT_FORMATS = ("saelens", "dictionary_learning")  # == softsae_jax.interop.EXPORT_FORMATS (no jax import here)
IMPORT_FORMATS = ("saelens", "sparsify", "gemmascope", "dictionary_learning")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the ``softsae convert`` flags to ``parser``."""
  parser.description = ("Export a workdir to SAELens / dictionary_learning, or import a SAELens, sparsify, "
                        "Gemma Scope or dictionary_learning SAE as a new workdir.")
  direction = parser.add_mutually_exclusive_group(required=True)
  direction.add_argument("--to", choices=EXPORT_FORMATS, help="export --workdir to this format into --out")
  direction.add_argument("--from", dest="from_", choices=IMPORT_FORMATS, metavar="{" + ",".join(IMPORT_FORMATS) + "}",
                         help="import --in (this format) into the new --workdir")
  parser.add_argument("--workdir", required=True,
                      help="export: the trained workdir; import: the workdir to create (must not exist)")
  parser.add_argument("--out", help="export: the output directory (must not exist)")
  parser.add_argument("--in", dest="in_", metavar="IN", help="import: the folder (or file) to read")
  parser.add_argument("--eval-data", metavar="ACTS",
                      help="saelens export: also write sparsity.safetensors (log10 firing frequency on these activations)")
  parser.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                      help="export: set a language-model metadata field, e.g. --metadata model_name=gpt2 "
                           "--metadata hook_name=blocks.6.hook_resid_post (VALUE parsed as JSON when it parses)")
  parser.add_argument("--batch-size", type=positive_int, default=1024, metavar="B",
                      help="rows per inference call for --eval-data (default: 1024)")


def run(args: argparse.Namespace) -> int:
  """Runs one conversion; prints a one-line summary on stderr.

  Raises:
    UserError: a bad input, an unsupported format/arch combination, or an existing output.
  """
  from softsae_jax import interop
  from softsae_jax.interop.common import ConvertError, parse_metadata_overrides

  if args.to is not None:
    if not args.out:
      raise ConvertError("--to needs --out (the output directory)")
    if args.in_:
      raise ConvertError("--in is for imports (--from); an export reads --workdir")
    cfg = interop.export_workdir(args.workdir, args.to, args.out, eval_data=args.eval_data,
                                 metadata=parse_metadata_overrides(args.metadata), batch_size=args.batch_size)
    arch = cfg.get("architecture") or cfg.get("trainer", {}).get("dict_class")
    print(f"wrote {args.to} ({arch}) to {args.out}", file=sys.stderr)
    return 0
  if not args.in_:
    raise ConvertError("--from needs --in (the folder or file to import)")
  for flag, value in (("--out", args.out), ("--eval-data", args.eval_data), ("--metadata", args.metadata)):
    if value:
      raise ConvertError(f"{flag} is for exports (--to); an import writes --workdir")
  imp = interop.import_to_workdir(args.from_, args.in_, args.workdir)
  sae = imp.cfg.sae
  print(json.dumps({"workdir": args.workdir, "arch": sae.arch, "d_in": sae.d_in, "n_latents": sae.F,
                    "norm_factor": imp.norm_factor, "step": imp.step}))
  return 0
