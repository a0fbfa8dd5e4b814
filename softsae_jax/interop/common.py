"""What every converter shares: a trained run as plain float32 arrays, its provenance, staged output
directories, and an imported SAE written as a workdir.

Units. A workdir's parameters are in *normalised* units with a scalar norm factor ``n``
(``TrainState.norm_factor``): raw-unit inference is ``n * recon(x / n)``. Because ReLU, top-k and
thresholds are positively homogeneous, the same SAE in raw units (what SAELens, sparsify, Gemma Scope
and dictionary_learning's TopK classes store) is ``W_enc``, ``W_dec`` unchanged and ``b_enc * n``,
``b_dec * n``, ``threshold * n``; SoftSAE's k-estimator, which must see ``x / n``, gets
``W_k1 / n``. An import of a raw-unit file is a workdir with norm factor 1.0.

Provenance. Every export carries a ``softsae_jax`` block (arch, step, the training run's norm
factor, the resolved config, the activations' manifest ``source``) and the language-model metadata
(model, hook, context size, BOS, special tokens, dataset). An import keeps all of it in the new
workdir's ``run.json`` (``"import"``), so exporting an imported workdir again writes the same files
byte for byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

from softsae_jax import config as config_lib
from softsae_jax import files
from softsae_jax.config import THRESHOLD_ARCHS, Config, ConfigError
from softsae_jax.errors import UserError

BLOCK = "softsae_jax"  # the provenance block's key in every exported config
BLOCK_VERSION = 1
# Language-model metadata every export writes (SAELens's LLM_METADATA_KEYS that apply to us).
LLM_KEYS = ("model_name", "hook_name", "hf_hook_name", "hook_head_index", "context_size", "prepend_bos",
            "exclude_special_tokens", "dataset_path")
# The module path of block L in a transformers *ForCausalLM model, by config.model_type (SAELens's
# hf_hook_name: the block's output = our "block_output" site = hidden_states[L + 1]).
HF_BLOCK_PATHS = {
    "gpt2": "transformer.h.{}", "gptj": "transformer.h.{}", "gpt_neo": "transformer.h.{}",
    "gpt_neox": "gpt_neox.layers.{}", "llama": "model.layers.{}", "mistral": "model.layers.{}",
    "mixtral": "model.layers.{}", "qwen2": "model.layers.{}", "qwen3": "model.layers.{}", "gemma": "model.layers.{}",
    "gemma2": "model.layers.{}", "gemma3_text": "model.layers.{}", "phi3": "model.layers.{}", "olmo": "model.layers.{}",
    "bert": "bert.encoder.layer.{}",
}
UNIT_NORM_TOL = 1e-5  # decoder rows within this of norm 1 count as unit-norm


class ConvertError(UserError):
  """A file, field or combination the converter cannot handle; one line naming the file and field."""


@dataclasses.dataclass(frozen=True)
class Trained:
  """A workdir's latest checkpoint as float32 numpy arrays (normalised units) plus what describes it.

  ``extra`` holds the arch's own parameters by field name (SoftSAE: w_k1, b_k1, w_k2, b_k2;
  JumpReLU: threshold); ``threshold`` is BatchTopK/Matryoshka's scalar inference threshold
  (``TrainState.arch_state``), else None; ``run`` is the workdir's run.json ({} if none).
  """

  workdir: str
  cfg: Config
  w_enc: np.ndarray
  b_enc: np.ndarray
  w_dec: np.ndarray
  b_dec: np.ndarray
  extra: dict[str, np.ndarray]
  threshold: float | None
  norm_factor: float
  step: int
  run: dict[str, Any]

  @property
  def arch(self) -> str:
    return self.cfg.sae.arch

  @property
  def n(self) -> np.float32:
    return np.float32(self.norm_factor)


def read_json(path: str, what: str = "file") -> dict[str, Any]:
  """A JSON object from ``path``; a missing or malformed file is a one-line ConvertError."""
  if not os.path.isfile(path):
    raise ConvertError(f"{what} {path} not found")
  try:
    with open(path) as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConvertError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(obj, dict):
    raise ConvertError(f"{path}: expected a JSON object, got {type(obj).__name__}")
  return obj


def read_trained(workdir: str) -> Trained:
  """The latest checkpoint of a ``softsae train`` (or ``softsae convert --from``) workdir."""
  from softsae_jax.evaluate import load

  model = load(workdir)
  p = model.params

  def f32(a):
    return np.asarray(a, np.float32)

  extra = {} if p.extra is None else {k: f32(v) for k, v in p.extra._asdict().items()}
  # Only BatchTopK/Matryoshka's state is an inference threshold; SoftSAE's (the k controller's offset,
  # sae.k_control=integral) is training-only and not part of the exported SAE.
  thr = (float(np.asarray(model.arch_state, np.float32))
         if model.cfg.sae.arch in THRESHOLD_ARCHS and model.arch_state is not None else None)
  rpath = os.path.join(workdir, "run.json")
  run = read_json(rpath) if os.path.isfile(rpath) else {}
  return Trained(workdir=os.path.abspath(workdir), cfg=model.cfg, w_enc=f32(p.w_enc), b_enc=f32(p.b_enc),
                 w_dec=f32(p.w_dec), b_dec=f32(p.b_dec), extra=extra, threshold=thr,
                 norm_factor=float(model.norm_factor), step=int(model.step), run=run)


def unit_norm_rows(w_FD: np.ndarray) -> bool:
  return bool(np.all(np.abs(np.linalg.norm(w_FD.astype(np.float64), axis=1) - 1.0) <= UNIT_NORM_TOL))


# ------------------------------------------------------------------------------------ provenance


def _manifest(data_dir: str | None) -> dict[str, Any]:
  """The activations' manifest.json, or {} when it is gone (the export still works, with nulls)."""
  if not data_dir:
    return {}
  try:
    with open(os.path.join(data_dir, "manifest.json")) as f:
      m = json.load(f)
    return m if isinstance(m, dict) else {}
  except (OSError, json.JSONDecodeError):
    return {}


def provenance(t: Trained) -> dict[str, Any]:
  """The ``softsae_jax`` block written into every export.

  Keys: version, arch, step, norm_factor (the training run's; the exported tensors are raw units
  or say where it is stored), config (the resolved config), activations (the training data's path)
  and source (its manifest's ``source`` block). For an imported workdir, activations, source and
  norm_factor come from the file it was imported from.
  """
  imp = t.run.get("import")
  if imp is not None:
    prior = imp.get(BLOCK) or {}
    activations, source = prior.get("activations"), prior.get("source")
    norm = prior.get("norm_factor", t.norm_factor)
  else:
    activations = (t.run.get("data") or {}).get("path")
    source = _manifest(activations).get("source")
    norm = t.norm_factor
  return {"version": BLOCK_VERSION, "arch": t.arch, "step": t.step, "norm_factor": norm, "config": t.cfg.to_dict(),
          "activations": activations, "source": source}


def llm_metadata(t: Trained, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Language-model metadata for consumers (SAELens/SAEBench/Neuronpedia keys, :data:`LLM_KEYS`).

  From the activations' manifest (``softsae export`` writes model, layer, site, seq_len, model_type,
  the special tokens around each window and the export's input path), or for an imported workdir
  from the imported file; then ``overrides`` (``--metadata KEY=VALUE``). Unknown values are None.

  * hook_name: TransformerLens's ``blocks.L.hook_resid_post`` for the block-output site (what
    SAEBench hooks; equal to HF ``hidden_states[L+1]`` for every block but the last);
  * hf_hook_name: the block's module path in the HF causal-LM class (``transformer.h.L``, ...);
  * prepend_bos: the export prepended BOS (causal LMs) / a special token starts each window;
  * exclude_special_tokens: the special token ids whose rows were not exported (training never saw
    them), or False.
  """
  imp = t.run.get("import")
  if imp is not None:
    md = dict(imp.get("metadata") or {})
  else:
    activations = (t.run.get("data") or {}).get("path")
    man = _manifest(activations)
    source = man.get("source") or {}
    args = man.get("export_args") or {}
    layer, site = source.get("layer"), source.get("site")
    special = source.get("special_tokens") or {}
    ids = sorted({int(i) for i in list(special.get("prefix") or []) + list(special.get("suffix") or [])})
    hf_path = HF_BLOCK_PATHS.get(source.get("model_type") or "")
    is_int = isinstance(layer, int)
    md = {"model_name": source.get("model"),
          "hook_name": f"blocks.{layer}.hook_resid_post" if site == "block_output" and is_int else None,
          "hf_hook_name": hf_path.format(layer) if hf_path and is_int else None,
          "hook_head_index": None,
          "context_size": source.get("seq_len"),
          "prepend_bos": (bool(args["bos"]) if args.get("bos") is not None
                          else (bool(special.get("prefix")) if "special_tokens" in source else None)),
          "exclude_special_tokens": ids if ids else False,
          "dataset_path": args.get("input_path") or activations}
  for key in LLM_KEYS:
    md.setdefault(key, None)
  md.update(overrides or {})
  return md


def parse_metadata_overrides(items: list[str] | None) -> dict[str, Any]:
  """``KEY=VALUE`` strings; VALUE is parsed as JSON when it parses (numbers, true/false, null, lists)."""
  out: dict[str, Any] = {}
  for item in items or []:
    if "=" not in item or not item.split("=", 1)[0].strip():
      raise ConvertError(f"--metadata expects KEY=VALUE, got {item!r}")
    key, text = item.split("=", 1)
    try:
      out[key.strip()] = json.loads(text)
    except json.JSONDecodeError:
      out[key.strip()] = text
  return out


# ------------------------------------------------------------------------------------ output dirs


def check_new(path: str, what: str) -> None:
  """Refuses an existing ``path`` (a file, or a non-empty directory): converters never overwrite."""
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ConvertError(f"{what} {path} already exists; choose a new path (nothing was overwritten)")


@contextlib.contextmanager
def staged_dir(final: str, what: str) -> Iterator[str]:
  """A temporary sibling of ``final`` renamed to it on success and removed on failure, so a failed or
  interrupted conversion leaves nothing behind."""
  final = os.path.abspath(final)
  check_new(final, what)
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)
  try:
    yield tmp
    if os.path.isdir(final):
      os.rmdir(final)  # empty (check_new)
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# ------------------------------------------------------------------------------------ imports


@dataclasses.dataclass(frozen=True)
class Imported:
  """An SAE read from another format, ready for :func:`write_workdir`.

  ``params`` is a :class:`~softsae_jax.types.Params` of float32 numpy arrays in the units of
  ``norm_factor`` (1.0 for raw-unit formats); ``threshold`` the BatchTopK/Matryoshka scalar;
  ``origin`` what run.json's ``"import"`` records (format, path, metadata, the file's own config).
  """

  cfg: Config
  params: Any
  threshold: float | None
  norm_factor: float
  step: int
  origin: dict[str, Any]


def make_config(arch: str, d_in: int, n_latents: int, *, where: str, k: int | None = None,
                k_max: int | None = None, steps: int = 1, **sae_kw) -> Config:
  """A resolved config for an SAE trained elsewhere (raw units: ``data.normalize=False``).

  ``k`` defaults to min(32, F - 1): relu and jumprelu do not use it (only as the AuxK/report reference).
  """
  if k is None:
    k = max(1, min(32, n_latents - 1))
  try:
    sae = config_lib.SaeConfig(arch=arch, d_in=d_in, n_latents=n_latents, k=int(k),
                               k_max=None if k_max is None else int(k_max), **sae_kw)
    cfg = Config(sae=sae, train=config_lib.TrainConfig(steps=max(1, int(steps))),
                 data=config_lib.DataConfig(normalize=False))
    return cfg.resolve(d_in)
  except ConfigError as e:
    raise ConvertError(f"{where}: {e}") from None


def config_from_block(block: Any, arch: str, d_in: int, n_latents: int, **must: Any) -> Config | None:
  """The config stored in a ``softsae_jax`` block when it describes exactly this SAE (arch, D, F and
  every ``must`` field of ``SaeConfig``), else None (the block is kept as provenance only)."""
  if not isinstance(block, dict) or not isinstance(block.get("config"), dict):
    return None
  try:
    cfg = config_lib.from_dict(block["config"])
  except (ConfigError, TypeError, ValueError):
    return None
  sae = cfg.sae
  if sae.arch != arch or sae.d_in != d_in or sae.n_latents != n_latents:
    return None
  for key, value in must.items():
    if getattr(sae, key) != value:
      return None
  return cfg


def block_step(block: Any) -> int:
  step = block.get("step") if isinstance(block, dict) else None
  return int(step) if isinstance(step, int) and step >= 0 else 0


def check_shape(path: str, name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
  if tuple(arr.shape) != tuple(shape):
    raise ConvertError(f"{path}: tensor {name} has shape {list(arr.shape)}, expected {list(shape)}")


def as_f32(path: str, name: str, arr: Any) -> np.ndarray:
  """A tensor as float32 numpy (bf16/f16/f64 converted), refusing non-float and non-finite values."""
  a = np.asarray(arr)
  if not (np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"):
    raise ConvertError(f"{path}: tensor {name} has dtype {a.dtype}, expected a floating dtype")
  a = a.astype(np.float32)
  if not np.all(np.isfinite(a)):
    raise ConvertError(f"{path}: tensor {name} has non-finite values")
  return a


def fold_input_bias(w_enc_DF: np.ndarray, b_enc_F: np.ndarray, b_dec_D: np.ndarray) -> np.ndarray:
  """b_enc' with (x - b_dec) W + b_enc' == x W + b_enc, for encoders that do not subtract b_dec
  (Gemma Scope; SAELens ``apply_b_dec_to_input: false``); computed in float64."""
  return (b_enc_F.astype(np.float64) + b_dec_D.astype(np.float64) @ w_enc_DF.astype(np.float64)).astype(np.float32)


def write_workdir(workdir: str, imp: Imported) -> None:
  """Writes ``imp`` as a workdir that ``softsae eval/encode/report`` and ``softsae_jax.load`` read:
  config.json, run.json (``import`` block) and ``checkpoints/<step>/`` holding a full TrainState
  (:func:`~softsae_jax.train.init_train_state` with the imported parameters, fresh optimizer state).

  Raises:
    ConvertError: the workdir exists (nothing is overwritten), or the parameters do not fit the arch.
  """
  import jax
  import jax.numpy as jnp

  from softsae_jax.checkpoint import Checkpointer
  from softsae_jax.optim import make_optimizer
  from softsae_jax.train import init_train_state

  check_new(workdir, "workdir")
  cfg = imp.cfg
  tx = make_optimizer(cfg)
  state = init_train_state(jax.random.key(cfg.train.seed), cfg, tx, norm_factor=imp.norm_factor)
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), imp.params)
  want = jax.tree.map(lambda a: tuple(a.shape), state.params)
  got = jax.tree.map(lambda a: tuple(a.shape), params)
  if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
    raise ConvertError(f"the imported parameters do not fit arch {cfg.sae.arch} (got {got}, expected {want})")
  wants_threshold = cfg.sae.arch in THRESHOLD_ARCHS
  if wants_threshold != (imp.threshold is not None):
    raise ConvertError(f"arch {cfg.sae.arch}: expected {'an' if wants_threshold else 'no'} inference threshold")
  # a threshold arch takes the imported threshold; any other keeps its fresh training-only state
  arch_state = jnp.asarray(imp.threshold, jnp.float32) if wants_threshold else state.arch_state
  state = state._replace(step=jnp.asarray(imp.step, jnp.int32), params=params, opt_state=tx.init(params),
                         arch_state=arch_state)
  run = {"norm_factor": imp.norm_factor, "jax": jax.__version__, "import": imp.origin}
  data_state = {"seed": cfg.train.seed, "step": imp.step, "rows_read": 0, "epoch": 0, "n_rows": 0, "imported": True}
  with staged_dir(workdir, "workdir") as tmp:
    files.write_json(os.path.join(tmp, "config.json"), cfg.to_dict())
    files.write_json(os.path.join(tmp, "run.json"), run)
    ck = Checkpointer(os.path.join(tmp, "checkpoints"), keep=1)
    try:
      ck.save(imp.step, state, data_state, cfg.to_dict())
    finally:
      ck.close()
