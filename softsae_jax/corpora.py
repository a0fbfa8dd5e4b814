"""Labelled text that ships with Python (no network): standard-library docstrings labelled by package.

Every module, class and function docstring (``ast.get_docstring``; the sources are parsed, never
imported) of the chosen top-level packages of the standard library, whitespace-flattened, with at
least ``min_words`` words, de-duplicated, labelled by the package it comes from. The result is a
``--texts-jsonl`` file for ``softsae export`` whose ``label`` field the export keeps
(docs/data-format.md), for ``softsae probe``::

  python -m softsae_jax.corpora --out runs/docstrings.jsonl     # asyncio, email, importlib, logging, xml
  python -m softsae_jax.corpora --out d.jsonl --packages tkinter,idlelib,unittest,multiprocessing,http
  softsae export --model MODEL --layer 3 --texts-jsonl runs/docstrings.jsonl --out runs/doc_acts

Each record: ``{"text": ..., "label": "asyncio", "source": "asyncio/events.py:123", "kind": "function"}``.
With ``max_per_package`` a package keeps a seeded random sample of that many docstrings (in source
order). Tests directories (``test``/``tests``) are skipped.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import sysconfig
from typing import Any, Sequence

import numpy as np

from softsae_jax.cli_types import nonneg_int, positive_int, proper_fraction

DEFAULT_PACKAGES = ("asyncio", "email", "importlib", "logging", "xml")
_KINDS = {ast.Module: "module", ast.ClassDef: "class", ast.FunctionDef: "function", ast.AsyncFunctionDef: "function"}


def stdlib_dir() -> str:
  """The directory of the running Python's standard library sources."""
  return sysconfig.get_paths()["stdlib"]


def _package_files(root: str, package: str) -> list[str]:
  path = os.path.join(root, package)
  if os.path.isfile(path + ".py"):
    return [path + ".py"]
  if not os.path.isdir(path):
    raise ValueError(f"no standard-library package or module {package!r} under {root}")
  out = []
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "__pycache__"))
    out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
  return out


def stdlib_docstrings(packages: Sequence[str] = DEFAULT_PACKAGES, *, min_words: int = 8,
                      max_per_package: int | None = None, seed: int = 0,
                      root: str | None = None) -> list[dict[str, Any]]:
  """The docstrings of ``packages``, labelled by package (see the module docstring).

  Args:
    packages: top-level standard-library packages (or modules).
    min_words: keep docstrings with at least this many words.
    max_per_package: keep at most this many per package (a seeded sample, in source order).
    seed: the sample's seed.
    root: the standard library directory (default: this Python's).

  Returns:
    Records ``{"text", "label", "source", "kind"}``, package by package, in source order.

  Raises:
    ValueError: a package that is not in the standard library.

  Examples:
    >>> recs = stdlib_docstrings(["json"], min_words=8)
    >>> {r["label"] for r in recs}, all(len(r["text"].split()) >= 8 for r in recs)
    ({'json'}, True)
  """
  root = root or stdlib_dir()
  out = []
  for package in packages:
    seen: set[str] = set()
    recs = []
    for path in _package_files(root, package):
      try:
        with open(path, encoding="utf-8") as f:
          tree = ast.parse(f.read(), filename=path)
      except (SyntaxError, UnicodeDecodeError, ValueError):
        continue
      for node in ast.walk(tree):
        kind = _KINDS.get(type(node))
        if kind is None:
          continue
        doc = ast.get_docstring(node, clean=True)
        if not doc:
          continue
        text = " ".join(doc.split())
        if len(text.split()) < min_words or text in seen:
          continue
        seen.add(text)
        line = getattr(node, "lineno", 1)
        recs.append({"text": text, "label": package, "source": f"{os.path.relpath(path, root)}:{line}", "kind": kind})
    if max_per_package is not None and len(recs) > max_per_package:
      keep = np.sort(np.random.default_rng([seed, len(out)]).choice(len(recs), max_per_package, replace=False))
      recs = [recs[i] for i in keep]
    out += recs
  return out


def all_packages(root: str | None = None) -> list[str]:
  """Every top-level package and module of the standard library's sources (tests and site-packages
  excluded), sorted."""
  root = root or stdlib_dir()
  out = []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if name.startswith(("_", ".")) or name in ("test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3"):
      continue
    if name.endswith(".py"):
      out.append(name[:-3])
    elif os.path.isfile(os.path.join(path, "__init__.py")):
      out.append(name)
  return out


def pydoc_topics(min_words: int = 8) -> list[dict[str, Any]]:
  """Python's own documentation topics (``pydoc_data.topics``), one record per topic, label ``pydoc``."""
  import pydoc_data.topics

  out = []
  for key in sorted(pydoc_data.topics.topics):
    text = " ".join(pydoc_data.topics.topics[key].split())
    if len(text.split()) >= min_words:
      out.append({"text": text, "label": "pydoc", "source": f"pydoc_data.topics:{key}", "kind": "topic"})
  return out


def split_documents(recs: Sequence[dict[str, Any]], heldout_frac: float, seed: int = 0):
  """(train, held-out): each record goes to held-out with probability ``heldout_frac``, decided by a
  seeded hash of its ``source`` — a split by document, stable when the corpus grows.

  Examples:
    >>> recs = [{"text": "t", "source": f"s{i}"} for i in range(1000)]
    >>> train, held = split_documents(recs, 0.2)
    >>> len(train) + len(held), 150 < len(held) < 250, split_documents(recs, 0.2)[1] == held
    (1000, True, True)
  """
  import hashlib

  train, held = [], []
  for r in recs:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{r['source']}".encode()).digest()[:8], "little") / 2.0**64
    (held if h < heldout_frac else train).append(r)
  return train, held


def _write_jsonl(path: str, recs) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for r in recs:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> int:
  """``python -m softsae_jax.corpora``: writes the labelled docstrings as JSON lines and prints the counts."""
  ap = argparse.ArgumentParser(prog="python -m softsae_jax.corpora", description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True, help="the .jsonl file to write")
  ap.add_argument("--packages", default=",".join(DEFAULT_PACKAGES),
                  help=f"comma-separated standard-library packages, or `all` (default: {','.join(DEFAULT_PACKAGES)})")
  ap.add_argument("--min-words", type=positive_int, default=8, help="shortest docstring kept, in words (default: 8)")
  ap.add_argument("--max-per-package", type=positive_int, default=None, help="a seeded sample of at most N per package")
  ap.add_argument("--seed", type=nonneg_int, default=0, help="the sample's and the split's seed (default: 0)")
  ap.add_argument("--pydoc-topics", action="store_true", help="add Python's documentation topics (label pydoc)")
  ap.add_argument("--heldout-out", default=None,
                  help="also split by document: the held-out records go to this file, the rest to --out")
  ap.add_argument("--heldout-frac", type=proper_fraction, default=0.15,
                  help="fraction of documents held out with --heldout-out (default: 0.15)")
  a = ap.parse_args(argv)
  packages = all_packages() if a.packages == "all" else [p.strip() for p in a.packages.split(",") if p.strip()]
  try:
    recs = stdlib_docstrings(packages, min_words=a.min_words, max_per_package=a.max_per_package, seed=a.seed)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if a.pydoc_topics:
    recs += pydoc_topics(a.min_words)
  if a.heldout_out:
    recs, held = split_documents(recs, a.heldout_frac, a.seed)
    _write_jsonl(a.heldout_out, held)
    print(f"held out {len(held)} documents ({sum(len(r['text'].split()) for r in held)} words) in {a.heldout_out}")
  _write_jsonl(a.out, recs)
  counts: dict[str, int] = {}
  for r in recs:
    counts[r["label"]] = counts.get(r["label"], 0) + 1
  shown = ", ".join(f"{p} {n}" for p, n in list(counts.items())[:12]) + (", ..." if len(counts) > 12 else "")
  print(f"wrote {len(recs)} documents ({sum(len(r['text'].split()) for r in recs)} words) to {a.out}: {shown}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
