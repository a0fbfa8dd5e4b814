"""Inference in raw units: dataset-level metrics (``softsae eval``) and sparse codes (``softsae encode``).

The SAE is trained on activations divided by a scalar norm factor ``n``. Inference takes raw
activations: the model sees x / n and its outputs are scaled back, recon_raw = n * recon(x / n),
codes_raw = n * codes(x / n). Because ReLU and top-k are positively homogeneous this is the
``SoftSAEPatched`` semantics of the reference (spec §2.4, §7.2): encoder and decoder biases
multiplied by n, raw-scale feature magnitudes, the k-estimator fed normalised inputs.

Inference rules (spec §2.3, §4): softsae keeps the floor(k-hat) largest ReLU activations per row;
topk the k largest; batchtopk/matryoshka those above the learned threshold; relu all positive ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from softsae_jax import config as config_lib
from softsae_jax.checkpoint import Checkpointer, CheckpointError, abstract_like
from softsae_jax.config import Config
from softsae_jax.data import check_finite, iter_ordered
from softsae_jax.optim import make_optimizer
from softsae_jax.sae import decode, encode
from softsae_jax.shards import Dataset, DataError
from softsae_jax.train import init_train_state
from softsae_jax.types import Params

DENSE_FREQ = 0.1  # a latent active on more than this fraction of rows counts as dense
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


@dataclasses.dataclass(frozen=True)
class Model:
  """A trained SAE ready for raw-unit inference."""

  cfg: Config
  params: Params
  norm_factor: float
  threshold: float
  step: int

  @property
  def d_in(self) -> int:
    return self.cfg.sae.d_in


def load_model(workdir: str, step: int | None = None) -> Model:
  """Loads the latest (or given) checkpoint of a workdir.

  Raises:
    CheckpointError: no workdir / no checkpoint, with the path.
  """
  ckdir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckdir):
    raise CheckpointError(f"{workdir} has no checkpoints/ directory: expected a workdir written by `softsae train`")
  ck = Checkpointer(ckdir, read_only=True)
  step = ck.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"{ckdir} holds no complete checkpoint")
  cfg_dict, _ = ck.restore_meta(step)
  cfg = config_lib.from_dict(cfg_dict)
  tx = make_optimizer(cfg)
  abstract = jax.eval_shape(lambda k: init_train_state(k, cfg, tx), jax.random.key(0))
  repl = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state, _ = ck.restore(step, abstract_like(abstract, repl))
  ck.close()
  return Model(cfg=cfg, params=state.params, norm_factor=float(state.norm_factor),
               threshold=float(state.threshold), step=int(state.step))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _infer(params, x_BD, norm_factor, threshold, *, cfg: Config):
  x_n = x_BD.astype(jnp.float32) / norm_factor
  codes = encode(params, x_n, cfg.sae, train=False, threshold=threshold)
  recon_BD = decode(params, codes.acts_BF, cfg.sae) * norm_factor
  return recon_BD, codes.acts_BF * norm_factor, codes.k_B


def infer(model: Model, x_BD: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(recon_BD, acts_BF, k_B) in raw units for raw rows (numpy in, numpy out).

  ``k_B`` is SoftSAE's real k-hat (the row keeps floor(k-hat) latents), or the active count.
  """
  out = _infer(model.params, jnp.asarray(x_BD), jnp.float32(model.norm_factor), jnp.float32(model.threshold),
               cfg=model.cfg)
  return tuple(np.asarray(a) for a in out)


def _batches(model: Model, ds: Dataset, batch_size: int, skip_nonfinite: bool
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  """(start, x_ND, valid_N, recon_ND, acts_NF, k_N) over the dataset in order; batches are padded to
  ``batch_size`` for the jitted function (one compile) and cut back."""
  for start, x_ND in iter_ordered(ds, batch_size):
    n = len(x_ND)
    valid_N = check_finite(ds, np.arange(start, start + n), x_ND, skip_nonfinite)
    x_pad = np.zeros((batch_size, ds.d_model), np.float32)
    x_pad[:n] = np.where(valid_N[:, None], x_ND, 0.0)
    recon, acts, k = infer(model, x_pad)
    yield start, x_pad[:n], valid_N, recon[:n], acts[:n], k[:n]


def evaluate(model: Model, ds: Dataset, *, batch_size: int = 1024, skip_nonfinite: bool = False) -> dict[str, Any]:
  """Inference-mode metrics over the whole dataset (raw units; float64 accumulation).

  Keys: fvu (= 1 - FVE: sum ||x - x̂||^2 / sum ||x - mean x||^2), fve, mse (mean over rows and
  dims of (x - x̂)^2), cosine (mean over rows), l2_ratio (mean ||x̂||/||x||), l0_mean / l0_std /
  l0_min / l0_max / l0_quantiles (active latents per row), dead_fraction (latents never active on
  this data), dense_fraction (latents active on more than 10% of rows), n_samples, n_skipped, and
  for softsae k_hat_mean / k_hat_std / k_hat_min / k_hat_max / k_hat_quantiles.
  """
  if ds.d_model != model.d_in:
    raise DataError(f"{ds.path}: d_model is {ds.d_model} but the model was trained on d_model={model.d_in}")
  f = model.cfg.sae.F
  n = 0
  n_skipped = 0
  sum_x = np.zeros(ds.d_model)
  sum_x2 = 0.0
  sum_e2 = 0.0
  sum_cos = 0.0
  sum_ratio = 0.0
  fire_F = np.zeros(f, np.int64)
  l0_all, k_all = [], []
  for _, x, valid, recon, acts, k in _batches(model, ds, batch_size, skip_nonfinite):
    x, recon, acts, k = x[valid].astype(np.float64), recon[valid].astype(np.float64), acts[valid], k[valid]
    n_skipped += int((~valid).sum())
    n += len(x)
    sum_x += x.sum(axis=0)
    sum_x2 += float(np.sum(x * x))
    sum_e2 += float(np.sum((x - recon) ** 2))
    nx, nr = np.linalg.norm(x, axis=1), np.linalg.norm(recon, axis=1)
    sum_cos += float(np.sum(np.sum(x * recon, axis=1) / np.maximum(nx * nr, 1e-30)))
    sum_ratio += float(np.sum(nr / np.maximum(nx, 1e-30)))
    active = acts != 0
    fire_F += active.sum(axis=0)
    l0_all.append(active.sum(axis=1))
    k_all.append(k)
  if n == 0:
    raise DataError(f"{ds.path}: no finite rows to evaluate")
  l0 = np.concatenate(l0_all).astype(np.float64)
  total_var = sum_x2 - float(np.sum(sum_x ** 2)) / n
  fvu = sum_e2 / max(total_var, 1e-300)
  out: dict[str, Any] = {
      "fvu": fvu, "fve": 1.0 - fvu, "mse": sum_e2 / (n * ds.d_model), "cosine": sum_cos / n,
      "l2_ratio": sum_ratio / n,
      "l0_mean": float(l0.mean()), "l0_std": float(l0.std()), "l0_min": int(l0.min()), "l0_max": int(l0.max()),
      "l0_quantiles": {str(q): float(np.quantile(l0, q)) for q in QUANTILES},
      "dead_fraction": float(np.mean(fire_F == 0)), "dense_fraction": float(np.mean(fire_F > DENSE_FREQ * n)),
      "n_samples": n, "n_skipped": n_skipped, "arch": model.cfg.sae.arch, "n_latents": f,
      "checkpoint_step": model.step,
  }
  if model.cfg.sae.arch == "softsae":
    kh = np.concatenate(k_all).astype(np.float64)
    out.update({"k_hat_mean": float(kh.mean()), "k_hat_std": float(kh.std()), "k_hat_min": float(kh.min()),
                "k_hat_max": float(kh.max()), "k_hat_quantiles": {str(q): float(np.quantile(kh, q)) for q in QUANTILES}})
  return out


CODES_FORMAT = "softsae-codes/1"


def encode_dataset(model: Model, ds: Dataset, out_dir: str, *, batch_size: int = 1024,
                   skip_nonfinite: bool = False) -> dict[str, Any]:
  """Writes per-row codes in data order to ``out_dir``.

  Files: ``k.npy`` int32 [N] active latents per row; CSR ``offsets.npy`` int64 [N+1],
  ``indices.npy`` int32 [nnz] (ascending within a row), ``values.npy`` float32 [nnz] (raw units);
  for softsae ``k_hat.npy`` float32 [N]; ``manifest.json``. Row i's reconstruction is
  ``values[o_i:o_{i+1}] @ w_dec[indices[o_i:o_{i+1}]] + norm_factor * b_dec`` (see :func:`decode_csr`).
  Masked non-finite rows (with ``skip_nonfinite``) get no codes and k = 0.
  """
  if ds.d_model != model.d_in:
    raise DataError(f"{ds.path}: d_model is {ds.d_model} but the model was trained on d_model={model.d_in}")
  os.makedirs(out_dir, exist_ok=True)
  tmp_idx, tmp_val = os.path.join(out_dir, "indices.bin.tmp"), os.path.join(out_dir, "values.bin.tmp")
  k_N = np.zeros(ds.n_rows, np.int32)
  khat_N = np.zeros(ds.n_rows, np.float32)
  nnz = 0
  with open(tmp_idx, "wb") as fi, open(tmp_val, "wb") as fv:
    for start, _, valid, _, acts, k in _batches(model, ds, batch_size, skip_nonfinite):
      acts = np.where(valid[:, None], acts, 0.0)
      rows, cols = np.nonzero(acts)
      fi.write(cols.astype(np.int32).tobytes())
      fv.write(acts[rows, cols].astype(np.float32).tobytes())
      k_N[start:start + len(acts)] = np.bincount(rows, minlength=len(acts))
      khat_N[start:start + len(acts)] = k
      nnz += len(rows)
  offsets = np.zeros(ds.n_rows + 1, np.int64)
  np.cumsum(k_N, out=offsets[1:])
  np.save(os.path.join(out_dir, "offsets.npy"), offsets)
  np.save(os.path.join(out_dir, "k.npy"), k_N)
  np.save(os.path.join(out_dir, "indices.npy"), np.fromfile(tmp_idx, np.int32))
  np.save(os.path.join(out_dir, "values.npy"), np.fromfile(tmp_val, np.float32))
  os.remove(tmp_idx)
  os.remove(tmp_val)
  if model.cfg.sae.arch == "softsae":
    np.save(os.path.join(out_dir, "k_hat.npy"), khat_N)
  manifest = {"format": CODES_FORMAT, "n_rows": ds.n_rows, "nnz": nnz, "n_latents": model.cfg.sae.F,
              "d_model": ds.d_model, "arch": model.cfg.sae.arch, "checkpoint_step": model.step,
              "units": "raw", "norm_factor": model.norm_factor, "data": os.path.abspath(ds.path),
              "files": {"k": "k.npy", "offsets": "offsets.npy", "indices": "indices.npy", "values": "values.npy",
                        **({"k_hat": "k_hat.npy"} if model.cfg.sae.arch == "softsae" else {})}}
  with open(os.path.join(out_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest


def decode_csr(model: Model, offsets: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Raw-unit reconstructions [N, D] from CSR codes written by :func:`encode_dataset`."""
  w_dec = np.asarray(model.params.w_dec, np.float64)
  n = len(offsets) - 1
  rows = np.repeat(np.arange(n), np.diff(offsets))
  out = np.zeros((n, w_dec.shape[1]))
  np.add.at(out, rows, values[:, None].astype(np.float64) * w_dec[indices])
  return out + model.norm_factor * np.asarray(model.params.b_dec, np.float64)[None, :]
