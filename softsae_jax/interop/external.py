"""Import-only formats: EleutherAI sparsify folders and Gemma Scope ``params.npz``. Both are raw units
(norm factor 1.0 in the workdir).

**sparsify** (``SparseCoder.save_to_disk``): one folder per hookpoint (``layers.6/``) with ``cfg.json``
(``SparseCoderConfig`` + ``d_in``: activation, k, num_latents, expansion_factor, normalize_decoder,
multi_topk, skip_connection, transcode) and ``sae.safetensors``: ``encoder.weight`` [F,D],
``encoder.bias`` [F], ``W_dec`` [F,D] (not transposed), ``b_dec`` [D], often bfloat16. Forward:
relu((x - b_dec) @ encoder.weight.T + encoder.bias), the k largest kept, decoded as
acts @ W_dec + b_dec: our topk with w_enc = encoder.weight.T, w_dec = W_dec. Refused: groupmax
activation, transcoders (``transcode``), skip connections (``skip_connection`` / ``W_skip``).

**Gemma Scope** (``params.npz``: W_enc [D,F], W_dec [F,D], b_enc [F], b_dec [D], threshold [F]): a
JumpReLU SAE whose encoder does *not* subtract b_dec, pre = x @ W_enc + b_enc; imported as our
jumprelu with the equivalent b_enc' = b_enc + b_dec @ W_enc.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from softsae_jax.interop.common import (LLM_KEYS, ConvertError, Imported, as_f32, check_shape, fold_input_bias,
                                        make_config, read_json)
from softsae_jax.types import JumpThreshold, Params

SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMASCOPE_FILE = "params.npz"


def _no_metadata(**known: Any) -> dict[str, Any]:
  md = {k: None for k in LLM_KEYS}
  md.update(known)
  return md


def import_sparsify(in_dir: str) -> Imported:
  """Reads one sparsify hookpoint folder (``cfg.json`` + ``sae.safetensors``)."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  cfg_path, w_path = os.path.join(in_dir, SPARSIFY_CFG), os.path.join(in_dir, SPARSIFY_WEIGHTS)
  if os.path.isdir(in_dir) and not os.path.isfile(cfg_path):
    subs = sorted(d for d in os.listdir(in_dir) if os.path.isfile(os.path.join(in_dir, d, SPARSIFY_CFG)))
    if subs:
      raise ConvertError(f"{in_dir} is a sparsify run with {len(subs)} hookpoint folders "
                         f"({', '.join(subs[:4])}{', ...' if len(subs) > 4 else ''}): pass one of them with --in")
  cfg = read_json(cfg_path, "sparsify config")
  activation = cfg.get("activation", "topk")
  if activation != "topk":
    raise ConvertError(f"{cfg_path}: activation {activation!r} is not supported (only 'topk')")
  if cfg.get("transcode"):
    raise ConvertError(f"{cfg_path}: transcode=true (a transcoder: it predicts another site) is not supported")
  if cfg.get("skip_connection"):
    raise ConvertError(f"{cfg_path}: skip_connection=true (a W_skip term) is not supported")
  d, k = cfg.get("d_in"), cfg.get("k")
  if not isinstance(d, int) or d < 1:
    raise ConvertError(f"{cfg_path}: field d_in must be a positive integer, got {d!r}")
  if not os.path.isfile(w_path):
    raise ConvertError(f"{w_path} not found")
  try:
    raw = load_file(w_path)
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise ConvertError(f"{w_path}: not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None
  want = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
  if "W_skip" in raw:
    raise ConvertError(f"{w_path}: tensor 'W_skip' (a skip connection) is not supported")
  _check_names(w_path, raw, want, "tensor")
  ts = {n: as_f32(w_path, n, raw[n]) for n in want}
  f = ts["encoder.weight"].shape[0]
  for name, shape in (("encoder.weight", (f, d)), ("encoder.bias", (f,)), ("W_dec", (f, d)), ("b_dec", (d,))):
    check_shape(w_path, name, ts[name], shape)
  if not isinstance(k, int) or not 1 <= k < f:
    raise ConvertError(f"{cfg_path}: field k must be an integer in [1, {f}), got {k!r}")
  params = Params(w_enc=np.ascontiguousarray(ts["encoder.weight"].T), b_enc=ts["encoder.bias"], w_dec=ts["W_dec"],
                  b_dec=ts["b_dec"])
  hookpoint = os.path.basename(os.path.normpath(os.path.abspath(in_dir)))
  origin = {"format": "sparsify", "path": os.path.abspath(in_dir), "hookpoint": hookpoint, "cfg": cfg,
            "dtype": str(raw["encoder.weight"].dtype), "metadata": _no_metadata()}
  return Imported(cfg=make_config("topk", d, f, k=k, where=cfg_path), params=params, threshold=None,
                  norm_factor=1.0, step=0, origin=origin)


def _check_names(path: str, raw: dict, want: tuple[str, ...], what: str) -> None:
  """Exactly the ``want`` entries in ``raw``, or a one-line ConvertError naming the file and entry."""
  for name in raw:
    if name not in want:
      raise ConvertError(f"{path}: unexpected {what} {name!r} (expected {', '.join(want)})")
  for name in want:
    if name not in raw:
      raise ConvertError(f"{path}: missing {what} {name!r}")


def import_gemmascope(in_path: str) -> Imported:
  """Reads a Gemma Scope ``params.npz`` (the file, or a folder holding it)."""
  path = os.path.join(in_path, GEMMASCOPE_FILE) if os.path.isdir(in_path) else in_path
  if not os.path.isfile(path):
    raise ConvertError(f"{path} not found (expected Gemma Scope's params.npz)")
  try:
    with np.load(path, allow_pickle=False) as z:
      raw = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise ConvertError(f"{path}: not a readable .npz file ({str(e).splitlines()[0][:200]})") from None
  want = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
  _check_names(path, raw, want, "array")
  ts = {n: as_f32(path, n, raw[n]) for n in want}
  if ts["W_enc"].ndim != 2:
    raise ConvertError(f"{path}: array W_enc must be 2-D [d_model, d_sae], got shape {list(ts['W_enc'].shape)}")
  d, f = ts["W_enc"].shape
  for name, shape in (("W_dec", (f, d)), ("b_enc", (f,)), ("b_dec", (d,)), ("threshold", (f,))):
    check_shape(path, name, ts[name], shape)
  params = Params(w_enc=ts["W_enc"], b_enc=fold_input_bias(ts["W_enc"], ts["b_enc"], ts["b_dec"]), w_dec=ts["W_dec"],
                  b_dec=ts["b_dec"], extra=JumpThreshold(threshold=ts["threshold"]))
  origin = {"format": "gemmascope", "path": os.path.abspath(path), "metadata": _no_metadata(),
            "note": "b_enc folded: b_enc + b_dec @ W_enc (Gemma Scope does not subtract b_dec before encoding)"}
  return Imported(cfg=make_config("jumprelu", d, f, where=path), params=params, threshold=None, norm_factor=1.0,
                  step=0, origin=origin)
