"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half.

Every JSON, text or ``.npy`` file the library writes next to results a user keeps (manifests,
config.json, run.json, eval/bench results, metrics.jsonl rewrites) goes through these helpers:
write to ``PATH.tmp`` in the same directory, flush and fsync, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json(path: str, obj: Any, *, allow_nan: bool = True) -> None:
  """Writes ``obj`` as indented, key-sorted JSON (with a final newline) to ``path`` atomically.

  Examples:
    >>> import tempfile; p = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> write_json(p, {"b": 1, "a": [1, 2]}); open(p).read().splitlines()[1]
    '  "a": ['
  """
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=allow_nan) + "\n")


def save_npy(path: str, arr: np.ndarray) -> None:
  """``np.save`` to ``path`` atomically."""
  tmp = path + ".tmp.npy"
  np.save(tmp, arr)
  os.replace(tmp, path)
