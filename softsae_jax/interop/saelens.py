"""The SAELens v6 folder: ``cfg.json`` + ``sae_weights.safetensors`` (+ optional ``sparsity.safetensors``).

Read by ``sae_lens.SAE.load_from_disk`` (and so SAEBench, SAEDashboard, Neuronpedia uploads) and by
:mod:`softsae_jax.torch_module`. Tensors are raw units (:mod:`softsae_jax.interop.common`):

===========================  ==============  ===================================================
our arch                     architecture    tensors besides W_enc [D,F], b_enc·n, W_dec [F,D], b_dec·n
===========================  ==============  ===================================================
topk                         topk            – (cfg ``k``, ``rescale_acts_by_decoder_norm: true``
                                             when the decoder rows are unit-norm)
relu                         standard        –
jumprelu                     jumprelu        threshold·n [F]
batchtopk, matryoshka        jumprelu        threshold·n broadcast to [F] (SAELens saves its own
                                             BatchTopK this way)
softsae                      softsae         W_k1 = w_k1/n [D,F], b_k1 [F], w_k2 [F], b_k2 [] (cfg
                                             ``k``, ``k_max``); a custom class: see
                                             :func:`softsae_jax.torch_module.register_with_sae_lens`.
                                             ``sae.k_input=top_acts``: W_k1 = w_k1/n [M,H], b_k1 [H],
                                             w_k2 [H], b_k2 [], M = min(k_max + 16, F), cfg
                                             ``k_input: "top_acts"``, ``k_hidden: H``
===========================  ==============  ===================================================

``cfg.json`` is SAELens's ``SAEConfig.to_dict()`` layout: d_in, d_sae, dtype, device,
apply_b_dec_to_input (true), normalize_activations ("none"), reshape_activations ("none"),
architecture, the arch's fields, and ``metadata`` with ``sae_lens_version`` (so the v6 loader
runs), the language-model keys (model_name, hook_name, hf_hook_name, context_size, prepend_bos,
exclude_special_tokens, dataset_path) and our ``softsae_jax`` provenance block. ``sparsity`` is
log10 of each latent's firing frequency on ``--eval-data`` (+1e-10, as SAELens writes it).

Import reads standard, topk, jumprelu and softsae folders (any float dtype), folds
``apply_b_dec_to_input: false`` into b_enc and, for topk with ``rescale_acts_by_decoder_norm`` and
non-unit decoder rows, the row norms into the encoder. Attention-head (hook_z) SAEs, activation
normalisation other than "none" and any other architecture are refused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from softsae_jax import files
from softsae_jax.interop.common import (BLOCK, LLM_KEYS, ConvertError, Imported, Trained, as_f32, block_step,
                                        check_shape, config_from_block, fold_input_bias, make_config, read_json,
                                        staged_dir, unit_norm_rows)
from softsae_jax.types import JumpThreshold, KEstimator, Params

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
# The format version we write: metadata.sae_lens_version >= 6.0.0 selects SAELens's v6 loader.
SAE_LENS_FORMAT_VERSION = "6.0.0"

ARCH_OUT = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu",
            "matryoshka": "jumprelu", "softsae": "softsae"}
ARCH_IN = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "softsae": "softsae"}
_BASE = ("W_enc", "b_enc", "W_dec", "b_dec")
TENSORS_IN = {"standard": _BASE, "topk": _BASE, "jumprelu": _BASE + ("threshold",),
              "softsae": _BASE + ("W_k1", "b_k1", "w_k2", "b_k2")}


def export(t: Trained, out: str, *, metadata: dict[str, Any], block: dict[str, Any],
           sparsity_F: np.ndarray | None = None) -> dict[str, Any]:
  """Writes ``t`` as a SAELens folder at ``out`` (which must not exist); returns the cfg dict."""
  from safetensors.numpy import save_file

  n = t.n
  sae = t.cfg.sae
  tensors = {"W_enc": t.w_enc, "b_enc": t.b_enc * n, "W_dec": t.w_dec, "b_dec": t.b_dec * n}
  cfg: dict[str, Any] = {"d_in": sae.d_in, "d_sae": sae.F, "dtype": "float32", "device": "cpu",
                         "apply_b_dec_to_input": True, "normalize_activations": "none",
                         "reshape_activations": "none", "architecture": ARCH_OUT[t.arch]}
  if t.arch == "topk":
    cfg.update(k=sae.k, rescale_acts_by_decoder_norm=unit_norm_rows(t.w_dec))
  elif t.arch == "jumprelu":
    tensors["threshold"] = t.extra["threshold"] * n
  elif t.arch in ("batchtopk", "matryoshka"):
    tensors["threshold"] = np.full((sae.F,), np.float32(t.threshold) * n, np.float32)
  elif t.arch == "softsae":
    tensors.update(W_k1=t.extra["w_k1"] / n, b_k1=t.extra["b_k1"], w_k2=t.extra["w_k2"],
                   b_k2=np.asarray(t.extra["b_k2"], np.float32).reshape(()))
    cfg.update(k=sae.k, k_max=sae.kmax)
    if sae.k_input != "x":  # the authors' estimator (x) adds no fields: those exports are unchanged
      cfg.update(k_input=sae.k_input, k_hidden=sae.k_hidden)
      if sae.k_top is not None:
        cfg.update(k_top=sae.k_top)
  cfg["metadata"] = {"sae_lens_version": SAE_LENS_FORMAT_VERSION, "sae_lens_training_version": None,
                     **metadata, BLOCK: block}
  tensors = {k: np.array(v, np.float32, order="C") for k, v in tensors.items()}
  with staged_dir(out, "--out") as tmp:
    save_file(tensors, os.path.join(tmp, WEIGHTS_FILE))
    files.write_json(os.path.join(tmp, CFG_FILE), cfg)
    if sparsity_F is not None:
      save_file({"sparsity": np.asarray(sparsity_F, np.float32)}, os.path.join(tmp, SPARSITY_FILE))
  return cfg


def log10_density(fire_F: np.ndarray, n_rows: int) -> np.ndarray:
  """SAELens's ``sparsity`` tensor: log10(firing frequency + 1e-10), float32 [F]."""
  return np.log10(np.asarray(fire_F, np.float64) / max(n_rows, 1) + 1e-10).astype(np.float32)


def _load_tensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  if not os.path.isfile(path):
    raise ConvertError(f"{path} not found")
  try:
    return load_file(path)
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise ConvertError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None


def import_(in_dir: str) -> Imported:
  """Reads a SAELens folder (see the module docstring for what is supported)."""
  cfg_path, w_path = os.path.join(in_dir, CFG_FILE), os.path.join(in_dir, WEIGHTS_FILE)
  raw = read_json(cfg_path, "SAELens config")
  arch = raw.get("architecture")
  if arch is None:  # pre-6.0 configs: no architecture field
    arch = "topk" if raw.get("activation_fn_str", raw.get("activation_fn")) == "topk" else "standard"
  if arch not in ARCH_IN:
    raise ConvertError(f"{cfg_path}: architecture {arch!r} is not supported "
                       f"(supported: {', '.join(ARCH_IN)})")
  md = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
  hook = md.get("hook_name", raw.get("hook_name")) or ""
  head = md.get("hook_head_index", raw.get("hook_head_index"))
  if raw.get("reshape_activations", "none") != "none" or str(hook).endswith("_z") or head is not None:
    raise ConvertError(f"{cfg_path}: attention-head SAEs are not supported (hook_name {hook!r}, "
                       f"reshape_activations {raw.get('reshape_activations')!r}, hook_head_index {head!r})")
  norm = raw.get("normalize_activations", "none")
  if norm not in ("none", None, False):
    raise ConvertError(f"{cfg_path}: normalize_activations {norm!r} is not supported (only 'none': fold the "
                       "scaling into the weights first, e.g. SAELens's fold_activation_norm_scaling_factor)")
  for key in ("d_in", "d_sae"):
    if not isinstance(raw.get(key), int) or raw[key] < 1:
      raise ConvertError(f"{cfg_path}: field {key} must be a positive integer, got {raw.get(key)!r}")
  d, f = raw["d_in"], raw["d_sae"]

  tensors = _load_tensors(w_path)
  want = TENSORS_IN[arch]
  for name in tensors:
    if name in want:
      continue
    if name == "scaling_factor" and np.all(np.asarray(tensors[name], np.float32) == 1.0):
      continue  # legacy all-ones tensor (SAELens ignores it too)
    raise ConvertError(f"{w_path}: tensor {name!r} is not supported for architecture {arch!r} "
                       f"(expected {', '.join(want)})")
  missing = [n for n in want if n not in tensors]
  if missing:
    raise ConvertError(f"{w_path}: missing tensor {missing[0]!r} (architecture {arch!r} needs {', '.join(want)})")
  ts = {n: as_f32(w_path, n, tensors[n]) for n in want}
  shapes = {"W_enc": (d, f), "b_enc": (f,), "W_dec": (f, d), "b_dec": (d,), "threshold": (f,), "W_k1": (d, f),
            "b_k1": (f,), "w_k2": (f,), "b_k2": ()}
  k_input = raw.get("k_input", "x")
  if arch == "softsae" and k_input != "x":
    k_max, h, k_top = raw.get("k_max"), raw.get("k_hidden"), raw.get("k_top")
    if (k_input != "top_acts" or not isinstance(k_max, int) or not isinstance(h, int) or h < 1
        or not (k_top is None or (isinstance(k_top, int) and k_top >= 1))):
      raise ConvertError(f"{cfg_path}: k_input must be 'x' or 'top_acts' (with integer k_max, k_hidden >= 1 and "
                         f"k_top >= 1 or absent); got k_input={k_input!r}, k_max={k_max!r}, k_hidden={h!r}, "
                         f"k_top={k_top!r}")
    shapes.update(W_k1=(min(k_max + 16 if k_top is None else k_top, f), h), b_k1=(h,), w_k2=(h,))
  for name, a in ts.items():
    if name == "b_k2" and a.shape == (1,):
      a = ts[name] = a.reshape(())
    check_shape(w_path, name, a, shapes[name])
  w_enc, b_enc, w_dec, b_dec = ts["W_enc"], ts["b_enc"], ts["W_dec"], ts["b_dec"]
  if raw.get("apply_b_dec_to_input", True) is False:
    b_enc = fold_input_bias(w_enc, b_enc, b_dec)
  if arch == "topk" and raw.get("rescale_acts_by_decoder_norm") and not unit_norm_rows(w_dec):
    # SAELens selects top-k on pre * |W_dec row| and decodes with unit rows: fold the norms in.
    norms = np.linalg.norm(w_dec.astype(np.float64), axis=1).clip(min=1e-8)
    w_enc = (w_enc * norms[None, :]).astype(np.float32)
    b_enc = (b_enc * norms).astype(np.float32)
    w_dec = (w_dec / norms[:, None]).astype(np.float32)

  block = md.get(BLOCK) if isinstance(md.get(BLOCK), dict) else None
  threshold = None
  extra: Any = None
  cfg = None
  if arch == "topk":
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))  # pre-6.0: activation_fn_kwargs.k
    if not isinstance(k, int) or not 1 <= k < f:
      raise ConvertError(f"{cfg_path}: field k must be an integer in [1, d_sae), got {k!r}")
    cfg = config_from_block(block, "topk", d, f, k=k) or make_config("topk", d, f, k=k, where=cfg_path)
  elif arch == "softsae":
    k, k_max = raw.get("k"), raw.get("k_max")
    if not isinstance(k, int) or not isinstance(k_max, int):
      raise ConvertError(f"{cfg_path}: fields k and k_max must be integers, got {k!r}, {k_max!r}")
    est_kw = {"k_input": k_input} if k_input == "x" else {"k_input": k_input, "k_hidden": ts["b_k1"].shape[0],
                                                           "k_top": raw.get("k_top")}
    cfg = (config_from_block(block, "softsae", d, f, k=k, k_max=k_max, **est_kw)
           or make_config("softsae", d, f, k=k, k_max=k_max, where=cfg_path, **est_kw))
    extra = KEstimator(w_k1=ts["W_k1"], b_k1=ts["b_k1"], w_k2=ts["w_k2"], b_k2=ts["b_k2"])
  elif arch == "jumprelu":
    thr = ts["threshold"]
    arch_of_block = block.get("arch") if block else None
    if arch_of_block in ("batchtopk", "matryoshka") and np.all(thr == thr[0]):
      # our BatchTopK/Matryoshka export: one scalar threshold, broadcast
      cfg = config_from_block(block, arch_of_block, d, f)
      if cfg is not None:
        threshold = float(thr[0])
    if cfg is None:
      cfg = config_from_block(block, "jumprelu", d, f) or make_config("jumprelu", d, f, where=cfg_path)
      extra = JumpThreshold(threshold=thr)
  else:
    cfg = config_from_block(block, "relu", d, f) or make_config("relu", d, f, where=cfg_path)
  params = Params(w_enc=w_enc, b_enc=b_enc, w_dec=w_dec, b_dec=b_dec, extra=extra)
  metadata = {k: md.get(k, raw.get(k)) for k in LLM_KEYS}
  origin = {"format": "saelens", "path": os.path.abspath(in_dir), "architecture": arch, "metadata": metadata,
            BLOCK: block}
  return Imported(cfg=cfg, params=params, threshold=threshold, norm_factor=1.0, step=block_step(block),
                  origin=origin)
