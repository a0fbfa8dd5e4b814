"""``softsae train``: the training run around the jitted step — workdir, resume, logging, checkpoints.

A workdir holds ``config.json`` (the resolved config), ``run.json`` (what data it was trained on),
``metrics.jsonl`` and ``checkpoints/``. Everything is checked (data, config, workdir) before
anything is written, so a failed command never touches an existing run. The same command on an
existing workdir resumes from the latest complete checkpoint; since the batch of step ``s`` is a
pure function of (seed, s) and the state holds everything else, the resumed run ends at exactly the
model an uninterrupted run makes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from softsae_jax import config as config_lib
from softsae_jax import files, sharding
from softsae_jax.checkpoint import Checkpointer, abstract_like
from softsae_jax.config import Config, ConfigError
from softsae_jax.data import BatchSource, estimate_norm_factor, prefetch, to_global
from softsae_jax.errors import UserError
from softsae_jax.optim import make_optimizer
from softsae_jax.shards import open_dataset
from softsae_jax.train import (abstract_state, abstract_sweep_state, geometric_median, init_sharded, init_sweep_state,
                               make_sweep_step, make_train_step, state_shardings)


class WorkdirError(UserError):
  pass


# Keys that do not change the trained model: a resumed run may change them.
RESULT_NEUTRAL = frozenset({"train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "data.prefetch",
                            "mesh.data", "mesh.model"})


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of ``WORKDIR/metrics.jsonl`` (unparseable lines, e.g. a cut last line, skipped).

  Examples:
    >>> read_metrics("/nonexistent")
    []
  """
  path = os.path.join(workdir, "metrics.jsonl")
  out = []
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(rec, dict) and "step" in rec:
          out.append(rec)
  return out


def _truncate_metrics(workdir: str, step: int) -> None:
  """Drops metrics lines after ``step`` (written by a killed run past its last checkpoint) and any
  partial last line; they are recomputed identically."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  files.write_text(path, "".join(json.dumps(rec) + "\n" for rec in read_metrics(workdir) if rec["step"] <= step))


def data_info(ds) -> dict[str, Any]:
  return {"path": os.path.abspath(ds.path), "n_rows": ds.n_rows, "d_model": ds.d_model,
          "dtype": ds.dtype, "n_shards": len(ds.shards)}


def make_mesh(cfg: Config):
  """The run's ("data", "model") mesh from ``cfg.mesh``; a ConfigError when the devices do not fit."""
  try:
    return sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
  except ValueError as e:
    raise ConfigError(f"mesh: {e}") from None


def prepare(data_dir: str, workdir: str, cfg: Config) -> tuple[Any, Config, int | None]:
  """Validates data, config and workdir; returns (dataset, resolved config, resume step or None).

  Raises DataError / ConfigError / WorkdirError with one-line messages; writes nothing.
  """
  ds = open_dataset(data_dir)
  cfg = cfg.resolve(ds.d_model)
  mesh = make_mesh(cfg)
  if cfg.train.batch_size % mesh.shape["data"]:
    raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by mesh.data "
                      f"({mesh.shape['data']} devices)")
  if cfg.train.batch_size > ds.n_rows:
    raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) is larger than the dataset ({ds.n_rows} rows)")
  cpath = os.path.join(workdir, "config.json")
  if os.path.exists(cpath):
    with open(cpath) as f:
      try:
        saved = config_lib.from_dict(json.load(f))
      except (json.JSONDecodeError, ConfigError) as e:
        raise WorkdirError(f"{cpath} is not a softsae config ({e}); use a new --workdir") from None
    changes = [c for c in config_lib.diff(saved, cfg) if c.split(":")[0] not in RESULT_NEUTRAL]
    if changes:
      raise WorkdirError(f"{workdir} holds a run with another config ({'; '.join(changes)}); "
                         "use a new --workdir, or the same config to resume")
    rpath = os.path.join(workdir, "run.json")
    if os.path.exists(rpath):
      with open(rpath) as f:
        saved_data = json.load(f).get("data", {})
      for key in ("n_rows", "d_model"):
        if saved_data.get(key) != data_info(ds)[key]:
          raise WorkdirError(f"{workdir} was trained on data with {key}={saved_data.get(key)}, "
                             f"but {data_dir} has {key}={data_info(ds)[key]}; use a new --workdir")
  ckdir = os.path.join(workdir, "checkpoints")
  resume = None
  if os.path.isdir(ckdir):
    resume = Checkpointer(ckdir, read_only=True).latest_step()
  return ds, cfg, resume


def train(data_dir: str, workdir: str, cfg: Config, *, progress: bool = True, log=print) -> dict[str, Any]:
  """Trains (or resumes) and returns the final metrics record."""
  ds, cfg, resume = prepare(data_dir, workdir, cfg)
  steps = cfg.train.steps
  if resume is not None and resume >= steps:
    log(f"run in {workdir} already finished at step {resume}; nothing to do")
    return {"step": resume, "finished": True}

  mesh = make_mesh(cfg)
  rows_sh, _ = sharding.batch_shardings(mesh)
  tx = make_optimizer(cfg)
  sweep = bool(cfg.sweep)
  step_fn = make_sweep_step(cfg, tx, mesh) if sweep else make_train_step(cfg, tx, mesh)
  source = BatchSource(ds, cfg.train.batch_size, cfg.data_seed, shuffle=cfg.data.shuffle,
                       skip_nonfinite=cfg.data.skip_nonfinite,
                       rows=sharding.process_rows(rows_sh, cfg.train.batch_size))
  key = jax.random.key(cfg.train.seed)
  # Every process computes; only the first writes the workdir's own files (orbax saves collectively).
  writer = jax.process_index() == 0
  if not writer:
    log, progress = (lambda _msg: None), False

  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  try:
    if resume is not None:
      if sweep:
        abstract = abstract_sweep_state(cfg, tx)
        abstract = abstract_like(abstract, jax.tree.map(lambda _: sharding.replicated(mesh), abstract))
      else:
        abstract = abstract_like(abstract_state(cfg, tx), state_shardings(cfg, tx, mesh))
      state, data_state = ckpt.restore(resume, abstract)
      start = int(state.step)
      log(f"resuming from step {start}")
      if writer:
        _truncate_metrics(workdir, start)
    else:
      nf = estimate_norm_factor(ds, cfg.data.norm_sample_rows, cfg.data.skip_nonfinite) if cfg.data.normalize else 1.0
      x0, valid0 = source.batch(0, whole=True)  # the global batch 0, on every process alike
      b_dec = geometric_median(x0[valid0].astype(np.float64) / nf)
      if sweep:
        state = jax.device_put(init_sweep_state(cfg, tx, b_dec_D=b_dec, norm_factor=nf), sharding.replicated(mesh))
      else:
        state = init_sharded(key, cfg, tx, mesh, b_dec_D=b_dec, norm_factor=nf)
      if writer:
        files.write_json(os.path.join(workdir, "config.json"), cfg.to_dict())
        files.write_json(os.path.join(workdir, "run.json"), {
            "data": data_info(ds), "norm_factor": nf, "devices": jax.device_count(),
            "processes": jax.process_count(), "jax": jax.__version__})
        _truncate_metrics(workdir, 0)
      start = 0
    return _loop(state, start, cfg, source, step_fn, mesh, ckpt, metrics_path if writer else None, progress)
  finally:
    ckpt.close()


def _metric_records(step: int, metrics: dict[str, Any], common: dict[str, Any], members) -> list[dict[str, Any]]:
  """metrics.jsonl lines for one logged step: one, or one per sweep member with ``member``, ``k``, ``seed``."""
  if members is None:
    return [{"step": step, **{k: float(v) for k, v in metrics.items()}, **common}]
  return [{"step": step, "member": m.index, "k": m.k, "seed": m.seed,
           **{k: float(v[m.index]) for k, v in metrics.items()}, **common} for m in members]


def _loop(state, start, cfg, source, step_fn, mesh, ckpt, metrics_path, progress):
  """The step loop; ``metrics_path`` None on the processes that do not write metrics.jsonl."""
  import contextlib

  from tqdm import tqdm

  steps, bsz = cfg.train.steps, cfg.train.batch_size
  members = cfg.members() if cfg.sweep else None
  rows_sh, mask_sh = sharding.batch_shardings(mesh)
  lo = source.local.start

  def put(s):
    x_BD, valid_B = source.batch(s)
    return to_global(x_BD, rows_sh, (bsz, x_BD.shape[1]), lo), to_global(valid_B, mask_sh, (bsz,), lo)

  bar = tqdm(total=steps * bsz, initial=start * bsz, unit="tok", unit_scale=True, dynamic_ncols=True,
             disable=not progress, file=sys.stderr, mininterval=0.5,
             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} tok [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
  last: dict[str, Any] = {}
  t0 = time.time()
  with (open(metrics_path, "a") if metrics_path else contextlib.nullcontext()) as mf:
    for s, (x_BD, valid_B) in zip(range(start, steps), prefetch(put, range(start, steps), cfg.data.prefetch)):
      state, metrics = step_fn(state, x_BD, valid_B)
      done = s + 1
      bar.update(bsz)
      if done % cfg.train.log_every == 0 or done == steps:
        common = {"n_skipped": int(state.n_skipped), "tokens": done * bsz, "elapsed_s": round(time.time() - t0, 3)}
        records = _metric_records(done, jax.device_get(metrics._asdict()), common, members)
        last = records[-1] if len(records) == 1 else {"step": done, "members": records}
        m = records[0]
        if mf is not None:
          mf.write("".join(json.dumps(r) + "\n" for r in records))
          mf.flush()
        bar.set_postfix_str(f"loss {m['loss']:.4g} fvu {m['fvu']:.3f} k̂ {m['k_mean']:.1f} "
                            f"L0 {m['l0_mean']:.1f} dead {100 * m['dead_frac']:.0f}%", refresh=False)
      if done % cfg.train.checkpoint_every == 0 or done == steps:
        ckpt.save(done, state, source.state(done), cfg.to_dict())
  bar.close()
  ckpt.wait()
  return last
