"""The inference engine: a trained run as a :class:`Model`, raw-unit inference, and one streaming scan.

The SAE is trained on activations divided by a scalar norm factor ``n``. Inference takes raw
activations: the model sees x / n and its outputs are scaled back, recon_raw = n * recon(x / n),
codes_raw = n * codes(x / n). Because ReLU, top-k and thresholds are positively homogeneous this is
the ``SoftSAEPatched`` semantics of the reference (docs/method.md §2.4): encoder and decoder
biases multiplied by n, raw-scale feature magnitudes, the k-estimator fed normalised inputs.

The inference rule of each architecture is its entry in :mod:`softsae_jax.archs` (softsae: the
floor(k-hat) largest ReLU activations per row; topk: the k largest; batchtopk/matryoshka: those
above the learned threshold; jumprelu: those above their latent's threshold; relu: all positive).

Everything that runs a model over a dataset goes through one loop and one accumulator:
:func:`scan` pads each batch to one shape (one compile), checks finiteness, and feeds a
:class:`Accumulator` (FVU, MSE, cosine, L0 distribution, firing counts, k-hat statistics, and on
request per-row outputs and each latent's top activations). ``softsae eval`` (:func:`evaluate`),
``softsae encode`` (:func:`encode_dataset`), ``softsae report`` and ``softsae bench`` all use it.

The public Python API for a trained run:

>>> import softsae_jax                                      # doctest: +SKIP
>>> model = softsae_jax.load("runs/demo/softsae")           # doctest: +SKIP
>>> codes = model.encode(x)           # [..., F] raw-unit codes    # doctest: +SKIP
>>> x_hat = model.decode(codes)       # [..., D]                   # doctest: +SKIP
>>> x_hat = model.reconstruct(x)      # the same in one call       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from softsae_jax import archs, files, sharding
from softsae_jax import config as config_lib
from softsae_jax.checkpoint import CheckpointError, abstract_like, open_run
from softsae_jax.config import Config
from softsae_jax.data import check_finite, iter_ordered
from softsae_jax.optim import make_optimizer
from softsae_jax.sae import decode
from softsae_jax.shards import Dataset, DataError
from softsae_jax.train import abstract_state, state_shardings
from softsae_jax.types import Params

DENSE_FREQ = 0.1  # a latent active on more than this fraction of rows counts as dense
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


class Inference(NamedTuple):
  """Raw-unit outputs of a model on rows [..., D]: reconstructions, codes [..., F], and ``k``
  (SoftSAE's real k-hat — the row keeps floor(k-hat) latents — or the active count)."""

  recon: np.ndarray
  codes: np.ndarray
  k: np.ndarray


def make_infer_fn(cfg: Config, mesh: jax.sharding.Mesh) -> Callable:
  """The jitted raw-unit inference ``fn(params, arch_state, norm_factor, x_BD) -> (recon_BD, acts_BF, k_B)``,
  mirroring :func:`softsae_jax.train.make_train_step`: parameters sharded by the rule table, rows
  split over 'data'."""
  arch = archs.get(cfg.sae.arch)
  latent_mesh = mesh if mesh.devices.size > 1 else None

  def infer(params, arch_state, norm_factor, x_BD):
    acts_BF, k_B = arch.infer(params, arch_state, x_BD.astype(jnp.float32) / norm_factor, cfg.sae, latent_mesh)
    return decode(params, acts_BF, cfg.sae) * norm_factor, acts_BF * norm_factor, k_B

  st = state_shardings(cfg, make_optimizer(cfg), mesh)
  rows, mask = sharding.batch_shardings(mesh)
  return jax.jit(infer, in_shardings=(st.params, st.arch_state, sharding.replicated(mesh), rows),
                 out_shardings=(rows, rows, mask))


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """A trained SAE ready for raw-unit inference (see :func:`load`)."""

  cfg: Config
  params: Params
  arch_state: Any
  norm_factor: float
  step: int
  mesh: jax.sharding.Mesh

  @property
  def arch(self) -> str:
    return self.cfg.sae.arch

  @property
  def d_in(self) -> int:
    return self.cfg.sae.d_in

  @property
  def n_latents(self) -> int:
    return self.cfg.sae.F

  @functools.cached_property
  def _infer_fn(self) -> Callable:
    return make_infer_fn(self.cfg, self.mesh)

  def infer(self, x: np.ndarray, *, batch_size: int = 1024) -> Inference:
    """(recon, codes, k) in raw units for raw rows [..., D] (numpy in, numpy out).

    Rows go through the jitted function in chunks of ``batch_size``, the last one zero-padded, so
    every call of any length reuses one compiled function.
    """
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != self.d_in:
      raise ValueError(f"Expected rows [..., D={self.d_in}], got shape {x.shape}")
    lead = x.shape[:-1]
    x_ND = x.reshape(-1, self.d_in)
    outs = []
    for lo in range(0, max(len(x_ND), 1), batch_size):
      chunk = x_ND[lo:lo + batch_size]
      outs.append([np.asarray(a)[:len(chunk)] for a in self._run(self.pad(chunk, batch_size))])
    recon, codes, k = (np.concatenate(parts) for parts in zip(*outs))
    return Inference(recon.reshape(*lead, -1), codes.reshape(*lead, -1), k.reshape(lead))

  def pad(self, x_ND: np.ndarray, batch_size: int) -> np.ndarray:
    """float32 rows zero-padded to ``batch_size`` rounded up to a multiple of the mesh's data axis."""
    data = self.mesh.shape["data"]
    x_pad = np.zeros((-(-batch_size // data) * data, self.d_in), np.float32)
    x_pad[:len(x_ND)] = x_ND
    return x_pad

  def _run(self, x_BD: np.ndarray):
    return self._infer_fn(self.params, self.arch_state, jnp.float32(self.norm_factor), x_BD)

  def encode(self, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Raw-unit codes [..., F] of raw rows [..., D] (the arch's inference rule)."""
    return self.infer(x, batch_size=batch_size).codes

  def decode(self, codes: np.ndarray) -> np.ndarray:
    """Raw-unit reconstructions [..., D] of raw-unit codes [..., F]: codes @ W_dec + n * b_dec."""
    codes = np.asarray(codes, np.float32)
    if codes.shape[-1] != self.n_latents:
      raise ValueError(f"Expected codes [..., F={self.n_latents}], got shape {codes.shape}")
    w_dec = np.asarray(self.params.w_dec)
    return codes @ w_dec + self.norm_factor * np.asarray(self.params.b_dec)

  def reconstruct(self, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Raw-unit reconstructions [..., D] of raw rows [..., D]."""
    return self.infer(x, batch_size=batch_size).recon


def load(workdir: str, step: int | None = None, *, mesh: jax.sharding.Mesh | None = None) -> Model:
  """Loads the latest (or given) checkpoint of a workdir written by ``softsae train``.

  The state is restored directly onto ``mesh`` (default: every device on the data axis, the
  parameters replicated), sharded by the rule table of :mod:`softsae_jax.sharding`: with a 'model'
  axis a dictionary too wide for one device is evaluated with its latents split over devices
  (``softsae eval --set mesh.model=4``).

  Raises:
    CheckpointError: no workdir / no checkpoint, with the path.
  """
  ck, step, cfg_dict = open_run(workdir, step)
  try:
    cfg = config_lib.from_dict(cfg_dict)
    if cfg.sweep:
      raise CheckpointError(f"{workdir} holds a sweep of {len(cfg.members())} SAEs; split it first: "
                            f"softsae sweep-split --workdir {workdir} --out DIR, then use DIR/k<K>-seed<S>")
    mesh = sharding.make_mesh() if mesh is None else mesh
    if cfg.sae.F % mesh.shape["model"]:
      raise config_lib.ConfigError(f"mesh.model ({mesh.shape['model']}) must divide the run's n_latents ({cfg.sae.F})")
    tx = make_optimizer(cfg)
    state, _ = ck.restore(step, abstract_like(abstract_state(cfg, tx), state_shardings(cfg, tx, mesh)))
  finally:
    ck.close()
  return Model(cfg=cfg, params=state.params, arch_state=state.arch_state, norm_factor=float(state.norm_factor),
               step=int(state.step), mesh=mesh)


load_model = load


def mesh_from_overrides(overrides) -> jax.sharding.Mesh | None:
  """The inference mesh from ``--set mesh.data=... --set mesh.model=...`` (None without any).

  Raises:
    ConfigError: a key outside the ``mesh`` section, or a mesh the devices cannot hold.
  """
  if not overrides:
    return None
  bad = [o for o in overrides if not o.strip().startswith("mesh.")]
  if bad:
    raise config_lib.ConfigError(f"--set here takes mesh.data / mesh.model only (the model's config is the run's); "
                                 f"got {bad[0]!r}")
  cfg = config_lib.apply_overrides(Config(), list(overrides))
  try:
    return sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
  except ValueError as e:
    raise config_lib.ConfigError(f"mesh: {e}") from None


# ------------------------------------------------------------------------------- the dataset scan


class Batch(NamedTuple):
  """One scanned batch: rows ``start .. start+n`` in data order (raw units; invalid rows zeroed)."""

  start: int
  x: np.ndarray  # [n, D] float32
  valid: np.ndarray  # [n] bool
  recon: np.ndarray  # [n, D]
  codes: np.ndarray  # [n, F]; zero on invalid rows
  k: np.ndarray  # [n]


def batches(model: Model, ds: Dataset, *, batch_size: int = 1024, skip_nonfinite: bool = False,
            max_rows: int | None = None) -> Iterator[Batch]:
  """The model over the first ``max_rows`` rows of ``ds`` (all by default), in data order.

  Batches are padded to ``batch_size`` rows for the jitted function (one compile) and cut back;
  NaN/Inf rows stop the scan naming shard and row, or with ``skip_nonfinite`` are marked invalid.
  """
  if ds.d_model != model.d_in:
    raise DataError(f"{ds.path}: d_model is {ds.d_model} but the model was trained on d_model={model.d_in}")
  limit = ds.n_rows if max_rows is None else min(max_rows, ds.n_rows)
  for start, x_ND in iter_ordered(ds, batch_size):
    if start >= limit:
      return
    x_ND = x_ND[:limit - start]
    n = len(x_ND)
    valid_N = check_finite(ds, np.arange(start, start + n), x_ND, skip_nonfinite)
    x_pad = model.pad(np.where(valid_N[:, None], x_ND, 0.0), batch_size)
    recon, codes, k = (np.asarray(a)[:n] for a in model._run(x_pad))
    yield Batch(start, x_pad[:n], valid_N, recon, np.where(valid_N[:, None], codes, 0.0), k)


class PerRow(NamedTuple):
  """Per-row outputs of a scan, in data order (over every row, valid or not)."""

  valid_N: np.ndarray  # bool
  l0_N: np.ndarray  # active latents
  k_N: np.ndarray  # SoftSAE's k-hat, the active count for the other archs (float64)
  relerr_N: np.ndarray  # ||x - x̂||² / ||x||²


class Accumulator:
  """Streaming statistics of a scan (float64 sums; at most one [batch, F] block held at a time).

  Always: FVU, MSE, cosine, L2 ratio, the L0 distribution, per-latent firing counts and maxima,
  k-hat statistics. With ``per_row``: :meth:`rows` gives per-row ``valid_N``, ``l0_N``, ``k_N`` and
  the relative error ``relerr_N``. With ``top_m > 0``: each latent's ``top_m`` largest
  activations and their global rows (``top_val_MF``, ``top_row_MF``; row -1 = none).
  """

  def __init__(self, model: Model, *, per_row: bool = False, top_m: int = 0):
    f, d = model.n_latents, model.d_in
    self.arch = model.arch
    self.n = 0
    self.n_skipped = 0
    self.sum_x_D = np.zeros(d)
    self.sum_x2 = self.sum_e2 = self.sum_cos = self.sum_ratio = 0.0
    self.fire_F = np.zeros(f, np.int64)
    self.max_F = np.zeros(f, np.float32)
    self.per_row = per_row
    self._valid_rows: list[tuple[np.ndarray, np.ndarray]] = []  # (l0, k) of the valid rows, per batch
    self._rows: list[tuple[np.ndarray, ...]] = []  # PerRow fields of every row, per batch (per_row)
    self.top_m = top_m
    self.top_val_MF = np.zeros((top_m, f), np.float32) if top_m else None
    self.top_row_MF = np.full((top_m, f), -1, np.int64) if top_m else None

  def update(self, b: Batch) -> None:
    v = b.valid
    x64, r64 = b.x.astype(np.float64), b.recon.astype(np.float64)
    e2_N = np.sum((x64 - r64) ** 2, axis=1)
    nx_N, nr_N = np.linalg.norm(x64, axis=1), np.linalg.norm(r64, axis=1)
    self.n += int(v.sum())
    self.n_skipped += int((~v).sum())
    self.sum_x_D += x64[v].sum(axis=0)
    self.sum_x2 += float(np.sum(nx_N[v] ** 2))
    self.sum_e2 += float(e2_N[v].sum())
    self.sum_cos += float(np.sum((np.sum(x64 * r64, axis=1) / np.maximum(nx_N * nr_N, 1e-30))[v]))
    self.sum_ratio += float(np.sum((nr_N / np.maximum(nx_N, 1e-30))[v]))
    active_NF = b.codes != 0
    l0_N = active_NF.sum(axis=1)
    self.fire_F += active_NF.sum(axis=0)
    np.maximum(self.max_F, b.codes.max(axis=0), out=self.max_F)
    self._valid_rows.append((l0_N[v], b.k[v]))
    if self.per_row:
      self._rows.append((v, l0_N, b.k.astype(np.float64), e2_N / np.maximum(nx_N ** 2, 1e-30)))
    if self.top_m:
      self._update_top(b)

  def _update_top(self, b: Batch) -> None:
    mm = min(self.top_m, len(b.codes))
    idx_MF = np.argpartition(-b.codes, mm - 1, axis=0)[:mm]
    val_MF = np.take_along_axis(b.codes, idx_MF, axis=0)
    cat_val = np.concatenate([self.top_val_MF, val_MF])
    cat_row = np.concatenate([self.top_row_MF, idx_MF + b.start])
    order = np.argsort(-cat_val, axis=0, kind="stable")[:self.top_m]
    self.top_val_MF = np.take_along_axis(cat_val, order, axis=0)
    self.top_row_MF = np.take_along_axis(cat_row, order, axis=0)

  def rows(self) -> PerRow:
    """Per-row outputs over every scanned row (needs ``per_row=True``), in data order."""
    if not self.per_row:
      raise ValueError("Expected an Accumulator made with per_row=True")
    return PerRow(*(np.concatenate(parts) for parts in zip(*self._rows)))

  def _valid(self, i: int) -> np.ndarray:
    return np.concatenate([batch[i] for batch in self._valid_rows]).astype(np.float64)

  @property
  def fvu(self) -> float:
    total_var = self.sum_x2 - float(np.sum(self.sum_x_D ** 2)) / max(self.n, 1)
    return self.sum_e2 / max(total_var, 1e-300)

  def summary(self) -> dict[str, Any]:
    """The metrics ``softsae eval`` prints.

    Keys: fvu (= 1 - FVE: sum ||x - x̂||^2 / sum ||x - mean x||^2), fve, mse (mean over rows and
    dims of (x - x̂)^2), cosine (mean over rows), l2_ratio (mean ||x̂||/||x||), l0_mean / l0_std /
    l0_min / l0_max / l0_quantiles (active latents per row), dead_fraction (latents never active on
    this data), dense_fraction (latents active on more than 10% of rows), n_samples, n_skipped, and
    for softsae k_hat_mean / k_hat_std / k_hat_min / k_hat_max / k_hat_quantiles.
    """
    if self.n == 0:
      raise DataError("no finite rows to evaluate")
    n, d = self.n, len(self.sum_x_D)
    l0 = self._valid(0)
    out: dict[str, Any] = {
        "fvu": self.fvu, "fve": 1.0 - self.fvu, "mse": self.sum_e2 / (n * d), "cosine": self.sum_cos / n,
        "l2_ratio": self.sum_ratio / n,
        "l0_mean": float(l0.mean()), "l0_std": float(l0.std()), "l0_min": int(l0.min()), "l0_max": int(l0.max()),
        "l0_quantiles": _quantiles(l0),
        "dead_fraction": float(np.mean(self.fire_F == 0)),
        "dense_fraction": float(np.mean(self.fire_F > DENSE_FREQ * n)),
        "n_samples": n, "n_skipped": self.n_skipped, "arch": self.arch, "n_latents": len(self.fire_F),
    }
    if self.arch == "softsae":
      kh = self._valid(1)
      out.update({"k_hat_mean": float(kh.mean()), "k_hat_std": float(kh.std()), "k_hat_min": float(kh.min()),
                  "k_hat_max": float(kh.max()), "k_hat_quantiles": _quantiles(kh)})
    return out


def _quantiles(v: np.ndarray) -> dict[str, float]:
  return {str(q): float(np.quantile(v, q)) for q in QUANTILES}


def scan(model: Model, ds: Dataset, *, batch_size: int = 1024, skip_nonfinite: bool = False,
         max_rows: int | None = None, per_row: bool = False, top_m: int = 0) -> Accumulator:
  """Runs :func:`batches` through one :class:`Accumulator` and returns it."""
  acc = Accumulator(model, per_row=per_row, top_m=top_m)
  for b in batches(model, ds, batch_size=batch_size, skip_nonfinite=skip_nonfinite, max_rows=max_rows):
    acc.update(b)
  if acc.n == 0:
    raise DataError(f"{ds.path}: no finite rows among the {acc.n_skipped} rows scanned")
  return acc


def evaluate(model: Model, ds: Dataset, *, batch_size: int = 1024, skip_nonfinite: bool = False) -> dict[str, Any]:
  """Inference-mode metrics over the whole dataset (raw units; float64 accumulation); see
  :meth:`Accumulator.summary` for the keys, plus ``checkpoint_step``."""
  res = scan(model, ds, batch_size=batch_size, skip_nonfinite=skip_nonfinite).summary()
  res["checkpoint_step"] = model.step
  return res


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
    for b in batches(model, ds, batch_size=batch_size, skip_nonfinite=skip_nonfinite):
      rows, cols = np.nonzero(b.codes)
      fi.write(cols.astype(np.int32).tobytes())
      fv.write(b.codes[rows, cols].astype(np.float32).tobytes())
      k_N[b.start:b.start + len(b.codes)] = np.bincount(rows, minlength=len(b.codes))
      khat_N[b.start:b.start + len(b.codes)] = b.k
      nnz += len(rows)
  offsets = np.zeros(ds.n_rows + 1, np.int64)
  np.cumsum(k_N, out=offsets[1:])
  files.save_npy(os.path.join(out_dir, "offsets.npy"), offsets)
  files.save_npy(os.path.join(out_dir, "k.npy"), k_N)
  files.save_npy(os.path.join(out_dir, "indices.npy"), np.fromfile(tmp_idx, np.int32))
  files.save_npy(os.path.join(out_dir, "values.npy"), np.fromfile(tmp_val, np.float32))
  os.remove(tmp_idx)
  os.remove(tmp_val)
  soft = model.arch == "softsae"
  if soft:
    files.save_npy(os.path.join(out_dir, "k_hat.npy"), khat_N)
  manifest = {"format": CODES_FORMAT, "n_rows": ds.n_rows, "nnz": nnz, "n_latents": model.n_latents,
              "d_model": ds.d_model, "arch": model.arch, "checkpoint_step": model.step,
              "units": "raw", "norm_factor": model.norm_factor, "data": os.path.abspath(ds.path),
              "files": {"k": "k.npy", "offsets": "offsets.npy", "indices": "indices.npy", "values": "values.npy",
                        **({"k_hat": "k_hat.npy"} if soft else {})}}
  files.write_json(os.path.join(out_dir, "manifest.json"), manifest)
  return manifest


def decode_csr(model: Model, offsets: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Raw-unit reconstructions [N, D] from CSR codes written by :func:`encode_dataset`."""
  w_dec = np.asarray(model.params.w_dec, np.float64)
  n = len(offsets) - 1
  rows = np.repeat(np.arange(n), np.diff(offsets))
  out = np.zeros((n, w_dec.shape[1]))
  np.add.at(out, rows, values[:, None].astype(np.float64) * w_dec[indices])
  return out + model.norm_factor * np.asarray(model.params.b_dec, np.float64)[None, :]
