"""argparse ``type=`` functions for every numeric (and list) flag of every ``softsae`` subcommand.

Each one takes the flag's text and returns the parsed value, or raises
``argparse.ArgumentTypeError("expected <what>, got '<text>'")``, which the parser prints as one line
and exit status 2, e.g.::

  softsae eval: error: argument --batch-size: expected a positive integer, got '0'

Floats must be finite (``nan`` and ``inf`` are refused). A string default of a flag goes through
its type too (argparse converts it), so ``default="8,16"`` with ``type=int_list`` gives ``[8, 16]``.
No jax, numpy or torch here: the CLI builds its parser from these before importing any of them.

Examples:
  >>> positive_int("16"), nonneg_int("0"), fraction("1"), proper_fraction("0.25")
  (16, 0, 1.0, 0.25)
  >>> int_list("4, 8,16"), float_list("0.5,2"), choice_list(("topk", "relu"))("relu,topk")
  ([4, 8, 16], [0.5, 2.0], ['relu', 'topk'])
  >>> positive_int("0")
  Traceback (most recent call last):
  argparse.ArgumentTypeError: expected a positive integer, got '0'
  >>> int_list("4,")
  Traceback (most recent call last):
  argparse.ArgumentTypeError: expected a comma-separated list of positive integers, got '4,'
  >>> positive_float("nan")
  Traceback (most recent call last):
  argparse.ArgumentTypeError: expected a positive number, got 'nan'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any


def _fail(what: str, text: str) -> argparse.ArgumentTypeError:
  return argparse.ArgumentTypeError(f"expected {what}, got {text!r}")


def _parse(text: str, conv: Callable[[str], Any], what: str, ok: Callable[[Any], bool]) -> Any:
  """``conv(text)`` if it converts, is finite and passes ``ok``; else the one-line argparse error."""
  try:
    value = conv(text)
  except ValueError:
    raise _fail(what, text) from None
  if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
    raise _fail(what, text)
  return value


def _parse_list(text: str, conv: Callable[[str], Any], what: str, ok: Callable[[Any], bool]) -> list[Any]:
  """Comma-separated items, at least one, each as :func:`_parse`; empty items are an error."""
  items = text.split(",")
  if not text.strip() or any(not t.strip() for t in items):
    raise _fail(what, text)
  values = []
  for t in items:
    try:
      values.append(_parse(t.strip(), conv, what, ok))
    except argparse.ArgumentTypeError:
      raise _fail(what, text) from None
  return values


def positive_int(text: str) -> int:
  """An integer >= 1 (``--batch-size``, ``--steps``, ``--max-rows``, ...)."""
  return _parse(text, int, "a positive integer", lambda v: v >= 1)


def nonneg_int(text: str) -> int:
  """An integer >= 0 (``--seed``, ``--layer``)."""
  return _parse(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
  """A finite number > 0."""
  return _parse(text, float, "a positive number", lambda v: v > 0)


def fraction(text: str) -> float:
  """A number in [0, 1]."""
  return _parse(text, float, "a fraction in [0, 1]", lambda v: 0 <= v <= 1)


def proper_fraction(text: str) -> float:
  """A number in [0, 1): a share of something that must leave some of it over (``--holdout``)."""
  return _parse(text, float, "a fraction in [0, 1)", lambda v: 0 <= v < 1)


def int_list(text: str) -> list[int]:
  """Comma-separated positive integers, at least one (``--ks 4,8,16``)."""
  return _parse_list(text, int, "a comma-separated list of positive integers", lambda v: v >= 1)


def nonneg_int_list(text: str) -> list[int]:
  """Comma-separated integers >= 0, at least one (``--seeds 0,1,2``).

  Examples:
    >>> nonneg_int_list("0, 2")
    [0, 2]
  """
  return _parse_list(text, int, "a comma-separated list of integers >= 0", lambda v: v >= 0)


def float_list(text: str) -> list[float]:
  """Comma-separated finite numbers, at least one."""
  return _parse_list(text, float, "a comma-separated list of numbers", lambda v: True)


def positive_float_list(text: str) -> list[float]:
  """Comma-separated finite numbers > 0, at least one (``--ks 8,13.5``: mean-L0 targets).

  Examples:
    >>> positive_float_list("8, 13.5")
    [8.0, 13.5]
  """
  return _parse_list(text, float, "a comma-separated list of positive numbers", lambda v: v > 0)


def nonneg_float_list(text: str) -> list[float]:
  """Comma-separated finite numbers >= 0, at least one (``--l0-coeffs 3e-3,1e-3``).

  Examples:
    >>> nonneg_float_list("3e-3, 1")
    [0.003, 1.0]
  """
  return _parse_list(text, float, "a comma-separated list of numbers >= 0", lambda v: v >= 0)


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
  """A ``type=`` for comma-separated names, each one of ``choices`` (``--archs topk,relu``).

  Args:
    choices: the allowed names.

  Returns:
    The argparse type function.
  """
  what = f"a comma-separated list of {', '.join(choices)}"

  def parse(text: str) -> list[str]:
    return _parse_list(text, str, what, lambda v: v in choices)

  return parse
