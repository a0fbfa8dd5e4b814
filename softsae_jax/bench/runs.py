"""Running the bench's models: configs, data views, training (or reuse), and evaluation.

Every model gets the library's default config except the fields the bench sets (``sae.arch``,
``sae.k`` or the arch's sparsity coefficient, ``sae.n_latents``, ``train.steps``,
``train.batch_size``, ``train.seed``, and the logging/checkpoint intervals), so a comparison is
about the defaults; the user's ``--set section.key=value`` overrides apply to every model on top.

Every evaluation goes through the inference engine (:func:`softsae_jax.evaluate.scan`), with the
library's inference rule of each arch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from softsae_jax.bench.metrics import (class_means, dictionary_recovery, finite_or_none, kl_int, kl_nearest_int,
                                       wasserstein_int, wasserstein_real)
from softsae_jax.config import Config, ConfigError, apply_overrides
from softsae_jax.shards import DataError
from softsae_jax.stats import pearson, spearman

EVAL_BATCH = 1024
"""Rows per inference batch of every evaluation."""

BENCH_KEYS = ("sae.arch", "sae.k", "train.steps", "train.seed")
"""Config fields the bench chooses for every model (``--steps``, ``--seed``); refused in ``--set``."""


class CoeffSweep(NamedTuple):
  """An arch whose L0 is set by a loss coefficient, not by k: it is swept over that coefficient."""

  field: str  # the SaeConfig field, e.g. "l0_coeff"
  tag: str  # the run-name tag: "jumprelu@l0c0.001"
  flag: str  # the bench flag that lists the values

  @property
  def dest(self) -> str:
    """The flag's attribute in the parsed arguments (``--l0-coeffs`` -> ``l0_coeffs``)."""
    return self.flag[2:].replace("-", "_")


COEFF_SWEEPS: dict[str, CoeffSweep] = {
    "jumprelu": CoeffSweep("l0_coeff", "l0c", "--l0-coeffs"),
    "relu": CoeffSweep("l1_coeff", "l1c", "--l1-coeffs"),
}
"""The archs whose L0 is not set by ``sae.k`` but by a loss coefficient (:class:`~softsae_jax.config.SaeConfig`
``l0_coeff``, ``l1_coeff``: a smaller one gives a larger L0), and the ``bench pareto`` flag listing its values."""


def coeff_text(c: float) -> str:
  """A coefficient as it appears in run names and tables: the shortest text that reads back as it.

  Examples:
    >>> coeff_text(1e-3), coeff_text(3e-4), coeff_text(1.0), coeff_text(0.3)
    ('0.001', '0.0003', '1', '0.3')
  """
  s = repr(float(c))
  return s[:-2] if s.endswith(".0") else s


class Log:
  """Progress lines on stderr, ``[bench   12.3s] message``; nothing when ``quiet``."""

  def __init__(self, quiet: bool):
    self.t0 = time.time()
    self.quiet = quiet

  def __call__(self, msg: str) -> None:
    if not self.quiet:
      print(f"[bench {time.time() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def check_overrides(overrides: Sequence[str] | None, reserved: Mapping[str, str] | None = None) -> list[str]:
  """The user's ``--set`` items, checked (key and type) before anything runs.

  Args:
    overrides: ``section.key=value`` strings (None: none).
    reserved: more keys the bench chooses in this run, each with the flag that sets it.

  Returns:
    The items as a list.

  Raises:
    ConfigError: a key the bench chooses (:data:`BENCH_KEYS`, ``reserved``), an unknown key or a bad value.
  """
  out = []
  for item in overrides or []:
    key = item.split("=", 1)[0].strip()
    if key in BENCH_KEYS:
      raise ConfigError(f"--set {key}=... is chosen by the bench (use --steps / --seed for steps and seed)")
    if key in (reserved or {}):
      raise ConfigError(f"--set {key}=... is chosen by the bench in this run (use {reserved[key]})")
    out.append(item)
  apply_overrides(Config(), out)  # type/key check before anything runs
  return out


def make_config(arch: str, k: int | None, *, n_latents: int | None, steps: int, batch_size: int, seed: int,
                overrides: Sequence[str] = (), fields: Sequence[str] = ()) -> Config:
  """The library default config with the bench's fields set, then the user's ``--set`` overrides.

  Args:
    arch: ``sae.arch``.
    k: ``sae.k``; None leaves the library default (relu, jumprelu: their coefficient sets the L0).
    n_latents: ``sae.n_latents``; None leaves the config's ``expansion * D``.
    steps, batch_size, seed: ``train.steps``, ``train.batch_size``, ``train.seed``.
    overrides: the user's ``--set`` items (applied last).
    fields: more ``section.key=value`` items the bench sets (e.g. ``sae.l0_coeff=0.001``).

  Returns:
    The unresolved config (``resolve(D)`` checks it against the data).
  """
  bench = [f"sae.arch={arch}"] + ([] if k is None else [f"sae.k={k}"]) + [
      f"train.steps={steps}", f"train.batch_size={batch_size}", f"train.seed={seed}",
      f"train.checkpoint_every={steps}", "train.keep_checkpoints=1", f"train.log_every={max(1, steps // 20)}"]
  if n_latents is not None:
    bench.append(f"sae.n_latents={n_latents}")
  return apply_overrides(Config(), bench + list(fields) + list(overrides))


def train_and_load(data_dir: str, workdir: str, cfg: Config, log: Log, label: str):
  """Trains ``cfg`` on ``data_dir`` into ``workdir`` (or reuses the finished run there) and loads it.

  Returns:
    ``(model, seconds)``: the :class:`softsae_jax.evaluate.Model` and the training time, None when
    an earlier run's model was reused.
  """
  from softsae_jax import trainer
  from softsae_jax.evaluate import load

  log(f"{label}: training F={cfg.sae.n_latents or 'default'} ({cfg.train.steps} steps x "
      f"{cfg.train.batch_size} rows) -> {workdir}")
  t0 = time.time()
  last = trainer.train(data_dir, workdir, cfg, progress=False, log=lambda m: log(f"{label}: {m}"))
  secs = None if last.get("finished") else time.time() - t0  # None: an earlier run's model, reused
  return load(workdir), secs


def rounded_secs(secs: float | None) -> float | None:
  """A training time as recorded in ``timing_s`` (0.1 s; None = reused)."""
  return None if secs is None else round(secs, 1)


def secs_text(secs: float | None) -> str:
  """A training time for a log line."""
  return "reused" if secs is None else f"{secs:.0f}s"


SUMMARY_KEYS = ("fvu", "fve", "mse", "cosine", "l0_mean", "l0_std", "l0_min", "l0_max", "dead_fraction",
                "dense_fraction", "k_hat_mean", "k_hat_std", "k_hat_min", "k_hat_max")
"""The engine's metrics (:meth:`softsae_jax.evaluate.Accumulator.summary`) that the bench records."""


def measure(model, ds, true_k: np.ndarray | None = None,
            atoms_AD: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
  """Evaluates ``model`` on every row of ``ds`` through the inference engine.

  Args:
    model: a loaded :class:`softsae_jax.evaluate.Model`.
    ds: the evaluation set.
    true_k: the true k (or local dimension) per row of ``ds``; with it, the per-row comparison
      metrics: Spearman/Pearson, per-class means, KL and W1 of the per-row L0 against it, and for
      SoftSAE the same of its real k-hat (``kl_khat_true`` bins k-hat at the nearest integer,
      ``w1_khat_true`` is exact on the real values).
    atoms_AD: the true dictionary; with it, ``dict_recovery`` against the decoder's atoms.

  Returns:
    ``(metrics, rows)``: the metrics (:data:`SUMMARY_KEYS` plus the ground-truth ones), and with
    ``true_k`` the per-row outputs ``{"l0": int64 [N], "k": float64 [N]}`` (else None).
  """
  from softsae_jax.evaluate import scan

  acc = scan(model, ds, batch_size=EVAL_BATCH, per_row=true_k is not None)
  summary = acc.summary()
  res = {k: summary[k] for k in SUMMARY_KEYS if k in summary}
  if true_k is None:
    return res, None
  per = acc.rows()
  rows = {"l0": per.l0_N.astype(np.int64), "k": per.k_N}
  l0 = rows["l0"]
  res.update({
      "spearman_l0_true": finite_or_none(spearman(l0, true_k)),
      "pearson_l0_true": finite_or_none(pearson(l0, true_k)),
      "l0_by_class": class_means(l0, true_k),
      "kl_l0_true": kl_int(true_k, l0),
      "w1_l0_true": wasserstein_int(true_k, l0),
  })
  if model.cfg.sae.arch == "softsae":
    kh = rows["k"]
    res.update({
        "spearman_khat_true": finite_or_none(spearman(kh, true_k)),
        "pearson_khat_true": finite_or_none(pearson(kh, true_k)),
        "khat_by_class": class_means(kh, true_k),
        "kl_khat_true": kl_nearest_int(true_k, kh),
        "w1_khat_true": wasserstein_real(true_k, kh),
    })
  if atoms_AD is not None:
    res["dict_recovery"] = dictionary_recovery(atoms_AD, np.asarray(model.params.w_dec))
  return res, rows


def dataset_view(path: str, field: str, expected: Any, write: Callable[[str], None], *, what: str,
                 log: Log, made_by: str = "", label: str = "") -> bool:
  """A data set the bench writes once under ``--out`` and reuses on a rerun.

  Reuses ``path`` when its finished manifest's ``field`` equals ``expected``; writes it with
  ``write(path)`` when ``path`` is missing or empty; refuses anything else.

  Args:
    path: the directory.
    field: the manifest key that identifies the set.
    expected: its value for this run (compared after a JSON round trip).
    write: writes the set into ``path``.
    what: the set in words ("data set", "split"), for messages.
    log: progress lines.
    made_by: the flags that make it, for the message when ``path`` holds another set.
    label: a prefix of the progress line.

  Returns:
    True when written now, False when reused.

  Raises:
    DataError: ``path`` holds another (or an unfinished) set, or other files.
  """
  mpath = os.path.join(path, "manifest.json")
  if os.path.isfile(mpath):
    with open(mpath) as f:
      saved = json.load(f)
    if saved.get(field) != json.loads(json.dumps(expected)) or not saved.get("complete", False):
      raise DataError(f"{path} holds another {what} (or an unfinished one){made_by}; use a new --out")
    log(f"{label}reusing {path}")
    return False
  if os.path.isdir(path) and os.listdir(path):
    raise DataError(f"{path} exists and is not a finished {what}; remove it or use a new --out")
  write(path)
  return True
