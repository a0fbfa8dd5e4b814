"""The ``softsae`` console script: export / train / sweep-split / eval / encode / report / bench / ...

Every subcommand has the same shape, ``add_arguments(parser)`` and ``run(args) -> int``, and is one
row of :data:`COMMANDS`. A command's module is imported only when that command is parsed, so
``softsae --help`` imports neither torch nor matplotlib.

Errors: a bad flag value is one line ``softsae CMD: error: argument --FLAG: expected ...`` and exit
status 2; every user error raised while a command runs (a :class:`~softsae_jax.errors.UserError`:
bad data, bad config, wrong workdir, bad export input) is one line ``error: ...`` on stderr and exit
status 1, never a traceback; nothing already saved is touched by a failed command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable

from softsae_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Command:
  """One ``softsae`` subcommand.

  Attributes:
    name: the subcommand.
    help: one line for ``softsae --help``.
    module: the module holding its two functions (imported when the command is parsed).
    add_arguments: ``module.<add_arguments>(parser)`` adds the flags to the command's parser.
    run: ``module.<run>(args) -> int`` runs it and returns the exit status.
    resumable: rerunning the same command after an interrupt resumes it (said on Ctrl-C).
  """

  name: str
  help: str
  module: str
  add_arguments: str = "add_arguments"
  run: str = "run"
  resumable: bool = False


COMMANDS = (
    Command("export", "PyTorch model -> activation shards (needs the `bridge` extra)", "softsae_jax.bridge.export",
            resumable=True),
    Command("train", "train an SAE on activation shards (resumes an existing workdir)", "softsae_jax.commands",
            "add_train_arguments", "run_train", resumable=True),
    Command("eval", "inference-mode metrics over a whole dataset, as JSON", "softsae_jax.commands",
            "add_eval_arguments", "run_eval"),
    Command("encode", "per-row sparse codes (CSR) and k, in data order", "softsae_jax.commands",
            "add_encode_arguments", "run_encode"),
    Command("sweep-split", "one ordinary workdir per member of a sweep (k{K}-seed{S})", "softsae_jax.sweep"),
    Command("report", "a self-contained HTML report of a trained SAE", "softsae_jax.report"),
    Command("bench", "benchmarks: synthetic ground truth, FVU-vs-L0 Pareto", "softsae_jax.bench"),
    Command("convert", "export a workdir to SAELens/dictionary_learning, or import SAELens/sparsify/"
            "Gemma Scope/dictionary_learning SAEs", "softsae_jax.convert"),
    Command("fidelity", "splice the SAE into the PyTorch model: CE/KL, embedding fidelity (needs `bridge`)",
            "softsae_jax.bridge.fidelity"),
    Command("probe", "sparse probing and TPP on labelled documents (needs scikit-learn)", "softsae_jax.probe"),
)


class ArgumentParser(argparse.ArgumentParser):
  """An ``argparse.ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE``, exit status 2."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _load(command: Command, parser: argparse.ArgumentParser) -> None:
  """Imports ``command``'s module and adds its flags to ``parser``, once."""
  if parser.get_default("func") is None:
    module = importlib.import_module(command.module)
    getattr(module, command.add_arguments)(parser)
    parser.set_defaults(func=getattr(module, command.run), resumable=command.resumable)


# argparse's subparsers action is private, but passing a subclass as add_subparsers(action=...) is public.
class _LazySubParsers(argparse._SubParsersAction):
  """Subcommands whose flags are added (and module imported) only when that subcommand is parsed."""

  def __init__(self, *args, commands: dict[str, Command], **kwargs):
    super().__init__(*args, **kwargs)
    self.commands = commands

  def __call__(self, parser, namespace, values, option_string=None):
    name = values[0]
    if name in self.commands:
      _load(self.commands[name], self._name_parser_map[name])
    super().__call__(parser, namespace, values, option_string)


def build_parser(*, lazy: bool = True) -> argparse.ArgumentParser:
  """The ``softsae`` parser.

  Args:
    lazy: add a subcommand's flags only when it is parsed (``softsae --help`` imports no command
      module); False adds every command's flags now, importing every module (for tests and docs).

  Returns:
    The parser; ``parse_args`` leaves the command's ``run`` in ``args.func``.
  """
  parser = ArgumentParser(prog="softsae", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True, action=_LazySubParsers,
                              commands={c.name: c for c in COMMANDS},
                              metavar="{" + ",".join(c.name for c in COMMANDS) + "}")
  for command in COMMANDS:
    p = sub.add_parser(command.name, help=command.help)
    if not lazy:
      _load(command, p)
  return parser


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, *,
                resumable: bool = False) -> int:
  """Runs one command; a :class:`UserError` ends as one line ``error: <message>`` on stderr.

  Used by :func:`main` for every command and by ``python -m softsae_jax.bridge.export``.

  Args:
    run: the command's ``run(args) -> int``.
    args: its parsed flags.
    resumable: on Ctrl-C, say that rerunning the same command resumes.

  Returns:
    The exit status: ``run``'s, 1 on a user error, 130 when interrupted. Any other exception is a
    bug and propagates with its traceback.
  """
  try:
    return int(run(args) or 0)
  except UserError as e:
    print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("error: interrupted" + ("; rerun the same command to resume" if resumable else ""), file=sys.stderr)
    return 130


def _quiet_libraries() -> None:
  """orbax logs INFO/WARNING lines through absl (e.g. on every read-only restore); users see ours."""
  try:
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
  except ImportError:
    pass


def main(argv: list[str] | None = None) -> int:
  """``softsae``: parses ``argv`` (default ``sys.argv[1:]``) and runs the command; returns the exit status.

  Before anything runs, glibc malloc is set to keep freed memory for reuse (:mod:`softsae_jax.host`;
  ``SOFTSAE_MALLOC=system`` leaves it alone): XLA:CPU's steps then stop page-faulting on the memory
  they freed one step earlier.
  """
  from softsae_jax.host import reuse_freed_memory

  reuse_freed_memory()
  _quiet_libraries()
  args = build_parser().parse_args(argv)
  return run_command(args.func, args, resumable=args.resumable)


if __name__ == "__main__":
  sys.exit(main())
