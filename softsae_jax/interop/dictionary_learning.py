"""dictionary_learning's layout (saprmarks/dictionary_learning; the SoftSAE authors' fork): a folder with
``ae.pt`` (a torch state dict) and ``config.json`` (``{"trainer": {"dict_class", "trainer_class",
"activation_dim", "dict_size", "k", "layer", "lm_name", "submodule_name", ...}}``), read by
``dictionary_learning.utils.load_dictionary`` (dispatch on ``trainer.dict_class``) and by SAEBench's
dictionary_learning loaders (dispatch on ``trainer.trainer_class``). Needs torch.

==========  ======================  ===================  =========================================
our arch    dict_class              trainer_class        state dict
==========  ======================  ===================  =========================================
softsae     SoftSAE                 SoftTopKTrainer      the authors' ``SoftSAEPatched``: k, alpha, k_max
                                                         (int32/f32), norm_factor, encoder.weight [F,D],
                                                         encoder.bias, decoder.weight [D,F], b_dec,
                                                         k_estimator.0.weight [F,D] / .bias [F],
                                                         k_estimator.2.weight [1,F] / .bias [1];
                                                         biases *normalised* (the class multiplies them
                                                         by norm_factor when it loads)
topk        AutoEncoderTopK         TopKTrainer          k, threshold (-1), encoder.*, decoder.weight,
                                                         b_dec; raw units
batchtopk   BatchTopKSAE            BatchTopKTrainer     as topk, threshold·n
matryoshka  MatryoshkaBatchTopKSAE  MatryoshkaBatch...   W_enc [D,F], b_enc, W_dec [F,D], b_dec, k,
                                                         threshold·n, group_sizes; raw units
relu        AutoEncoder             StandardTrainer      bias [D] (= b_dec), encoder.*, decoder.weight
==========  ======================  ===================  =========================================

jumprelu is not exported: dictionary_learning's ``JumpReluAutoEncoder`` encodes without subtracting
b_dec, which would need a folded encoder bias (use ``--to saelens``); it is imported, with the fold.
``config.json`` also carries our ``softsae_jax`` block (with the language-model metadata).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from softsae_jax import files
from softsae_jax.interop.common import (BLOCK, LLM_KEYS, ConvertError, Imported, Trained, as_f32, block_step,
                                        check_shape, config_from_block, fold_input_bias, make_config, read_json,
                                        staged_dir)
from softsae_jax.types import JumpThreshold, KEstimator, Params

AE_FILE = "ae.pt"
CFG_FILE = "config.json"
LAYOUT = {"softsae": ("SoftSAE", "SoftTopKTrainer"), "topk": ("AutoEncoderTopK", "TopKTrainer"),
          "batchtopk": ("BatchTopKSAE", "BatchTopKTrainer"),
          "matryoshka": ("MatryoshkaBatchTopKSAE", "MatryoshkaBatchTopKTrainer"),
          "relu": ("AutoEncoder", "StandardTrainer")}
IMPORTS = {"SoftSAE": "softsae", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
           "MatryoshkaBatchTopKSAE": "matryoshka", "AutoEncoder": "relu", "JumpReluAutoEncoder": "jumprelu"}


def _torch():
  try:
    import torch
  except ImportError:
    raise ConvertError("the dictionary_learning format is a torch file (ae.pt): install torch "
                       "(pip install torch, or the `bridge` extra)") from None
  return torch


def state_dict(t: Trained) -> dict[str, Any]:
  """The torch state dict of ``t`` in its dictionary_learning class's layout (see the module docstring)."""
  torch = _torch()
  if t.arch not in LAYOUT:
    raise ConvertError(f"arch {t.arch} has no dictionary_learning layout here (supported: {', '.join(LAYOUT)}); "
                       "use --to saelens")
  sae = t.cfg.sae
  n = t.n

  def ten(a, dtype=np.float32):
    return torch.from_numpy(np.array(a, dtype, order="C"))

  def thr_raw():  # scale_biases scales a set threshold only
    thr = np.float32(t.threshold if t.threshold is not None else -1.0)
    return ten(thr * n if thr >= 0 else thr)

  k = torch.tensor(sae.k, dtype=torch.int32)
  if t.arch == "softsae":
    if sae.k_input != "x":
      raise ConvertError(f"sae.k_input={sae.k_input}: the authors' SoftSAE class (dictionary_learning) has only the "
                         "estimator that reads x; use --to saelens")
    if not 0.0 < sae.alpha < 1.0:
      raise ConvertError(f"sae.alpha={sae.alpha}: the authors' SoftSAE asserts 0 < alpha < 1")
    e = t.extra
    return {"b_dec": ten(t.b_dec), "k": k, "alpha": ten(np.float32(sae.alpha)),
            "k_max": torch.tensor(sae.kmax, dtype=torch.int32), "norm_factor": ten(n),
            "decoder.weight": ten(t.w_dec.T), "encoder.weight": ten(t.w_enc.T), "encoder.bias": ten(t.b_enc),
            "k_estimator.0.weight": ten(e["w_k1"].T), "k_estimator.0.bias": ten(e["b_k1"]),
            "k_estimator.2.weight": ten(e["w_k2"][None, :]), "k_estimator.2.bias": ten(e["b_k2"].reshape(1))}
  if t.arch in ("topk", "batchtopk"):
    return {"b_dec": ten(t.b_dec * n), "k": k, "threshold": ten(np.float32(-1.0)) if t.arch == "topk" else thr_raw(),
            "decoder.weight": ten(t.w_dec.T), "encoder.weight": ten(t.w_enc.T), "encoder.bias": ten(t.b_enc * n)}
  if t.arch == "matryoshka":
    return {"W_enc": ten(t.w_enc), "b_enc": ten(t.b_enc * n), "W_dec": ten(t.w_dec), "b_dec": ten(t.b_dec * n),
            "k": k, "threshold": thr_raw(), "group_sizes": torch.tensor(list(sae.group_sizes()), dtype=torch.int64)}
  return {"bias": ten(t.b_dec * n), "encoder.weight": ten(t.w_enc.T), "encoder.bias": ten(t.b_enc * n),
          "decoder.weight": ten(t.w_dec.T)}


def trainer_config(t: Trained, metadata: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
  """config.json's ``trainer`` block: structural fields always; the training fields of our own runs, or
  the imported file's trainer block as it was."""
  sae, train = t.cfg.sae, t.cfg.train
  dict_class, trainer_class = LAYOUT[t.arch]
  imp = t.run.get("import")
  if imp is not None:
    trainer = dict(imp.get("trainer") or {})
  else:
    source = block.get("source") or {}
    trainer = {"lr": train.lr_value(sae.F), "steps": train.steps, "seed": train.seed, "auxk_alpha": sae.auxk_alpha,
               "layer": source.get("layer"), "lm_name": metadata.get("model_name"),
               "submodule_name": metadata.get("hf_hook_name"), "device": "cpu"}
    if t.arch == "softsae":
      trainer.update(soft_topk_alpha=sae.alpha, k_loss_weight=sae.k_loss_weight)
    if t.arch == "relu":
      trainer.update(l1_penalty=sae.l1_coeff)
      del trainer["auxk_alpha"]
  trainer.update(trainer_class=trainer_class, dict_class=dict_class, activation_dim=sae.d_in, dict_size=sae.F)
  if t.arch != "relu":
    trainer["k"] = sae.k
  if t.arch == "matryoshka":
    trainer.update(group_sizes=list(sae.group_sizes()), group_fractions=list(sae.matryoshka_fractions))
  return trainer


def export(t: Trained, out: str, *, metadata: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
  """Writes ``t`` as ``out/ae.pt`` + ``out/config.json`` (``out`` must not exist); returns the config."""
  torch = _torch()
  sd = state_dict(t)
  cfg = {"trainer": trainer_config(t, metadata, block), BLOCK: {**block, "metadata": metadata}}
  with staged_dir(out, "--out") as tmp:
    torch.save(sd, os.path.join(tmp, AE_FILE))
    files.write_json(os.path.join(tmp, CFG_FILE), cfg)
  return cfg


# ------------------------------------------------------------------------------------------ import


def _locate(in_path: str) -> str:
  """The folder holding ae.pt (``in_path`` may be that folder or the ae.pt file)."""
  if os.path.isfile(in_path):
    return os.path.dirname(os.path.abspath(in_path))
  if not os.path.isdir(in_path):
    raise ConvertError(f"--in {in_path} does not exist")
  if not os.path.isfile(os.path.join(in_path, AE_FILE)):
    subs = sorted(d for d in os.listdir(in_path) if os.path.isfile(os.path.join(in_path, d, AE_FILE)))
    hint = f"; it holds {len(subs)} trainer folders ({', '.join(subs[:4])}{', ...' if len(subs) > 4 else ''}): pass one" \
        if subs else ""
    raise ConvertError(f"{in_path} has no {AE_FILE}{hint}")
  return in_path


def import_(in_path: str) -> Imported:
  """Reads a dictionary_learning folder (SoftSAE, AutoEncoderTopK, BatchTopKSAE, MatryoshkaBatchTopKSAE,
  AutoEncoder, JumpReluAutoEncoder)."""
  torch = _torch()
  folder = _locate(in_path)
  ae_path, cfg_path = os.path.join(folder, AE_FILE), os.path.join(folder, CFG_FILE)
  cfg_json = read_json(cfg_path, "dictionary_learning config")
  trainer = cfg_json.get("trainer")
  if not isinstance(trainer, dict) or "dict_class" not in trainer:
    raise ConvertError(f"{cfg_path}: expected a trainer block with dict_class")
  dict_class = trainer["dict_class"]
  if dict_class not in IMPORTS:
    raise ConvertError(f"{cfg_path}: trainer.dict_class {dict_class!r} is not supported "
                       f"(supported: {', '.join(IMPORTS)})")
  arch = IMPORTS[dict_class]
  try:
    sd = torch.load(ae_path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file)
    raise ConvertError(f"{ae_path}: not a readable torch state dict ({str(e).splitlines()[0][:200]})") from None
  if not isinstance(sd, dict) or "ae" in sd:
    raise ConvertError(f"{ae_path}: expected the final state dict of an autoencoder (a training backup holds it "
                       "under 'ae'; dictionary_learning writes the final one at the end of training)")

  def tensor(name, shape=None):
    if name not in sd:
      raise ConvertError(f"{ae_path}: missing tensor {name!r} (dict_class {dict_class})")
    a = as_f32(ae_path, name, sd[name].detach().to(torch.float32).numpy())
    if shape is not None:
      check_shape(ae_path, name, a, shape)
    return a

  def integer(name):
    if name not in sd:
      raise ConvertError(f"{ae_path}: missing buffer {name!r} (dict_class {dict_class})")
    return int(sd[name].item())

  if arch == "matryoshka" or arch == "jumprelu":
    d, f = tuple(sd["W_enc"].shape) if "W_enc" in sd else (0, 0)
    w_enc, w_dec = tensor("W_enc", (d, f)), tensor("W_dec", (f, d))
    b_enc, b_dec = tensor("b_enc", (f,)), tensor("b_dec", (d,))
  else:
    f, d = tuple(sd["encoder.weight"].shape) if "encoder.weight" in sd else (0, 0)
    w_enc, b_enc = tensor("encoder.weight", (f, d)).T.copy(), tensor("encoder.bias", (f,))
    w_dec = tensor("decoder.weight", (d, f)).T.copy()
    b_dec = tensor("bias" if arch == "relu" else "b_dec", (d,))
  block = cfg_json.get(BLOCK) if isinstance(cfg_json.get(BLOCK), dict) else None
  extra: Any = None
  threshold = None
  norm_factor = 1.0
  where = cfg_path
  if arch == "softsae":
    k, k_max, alpha = integer("k"), integer("k_max"), float(tensor("alpha"))
    norm_factor = float(tensor("norm_factor"))
    if not norm_factor > 0:
      raise ConvertError(f"{ae_path}: norm_factor must be > 0, got {norm_factor}")
    extra = KEstimator(w_k1=tensor("k_estimator.0.weight", (f, d)).T.copy(), b_k1=tensor("k_estimator.0.bias", (f,)),
                       w_k2=tensor("k_estimator.2.weight", (1, f))[0].copy(),
                       b_k2=tensor("k_estimator.2.bias", (1,)).reshape(()))
    cfg = (config_from_block(block, arch, d, f, k=k, k_max=k_max, alpha=alpha)
           or config_from_block(block, arch, d, f, k=k, k_max=k_max)
           or make_config(arch, d, f, k=k, k_max=k_max, alpha=alpha, where=where))
  elif arch in ("topk", "batchtopk"):
    k = integer("k")
    if arch == "batchtopk":
      threshold = float(tensor("threshold"))
    cfg = config_from_block(block, arch, d, f, k=k) or make_config(arch, d, f, k=k, where=where)
  elif arch == "matryoshka":
    k = integer("k")
    threshold = float(tensor("threshold"))
    sizes = [int(s) for s in sd["group_sizes"].tolist()] if "group_sizes" in sd else None
    if not sizes or sum(sizes) != f or min(sizes) < 1:
      raise ConvertError(f"{ae_path}: group_sizes {sizes} must be positive and sum to dict_size {f}")
    cfg = config_from_block(block, arch, d, f, k=k) or make_config(
        arch, d, f, k=k, where=where, matryoshka_fractions=tuple(s / f for s in sizes))
    if list(cfg.sae.group_sizes()) != sizes:
      raise ConvertError(f"{ae_path}: group_sizes {sizes} cannot be represented as sae.matryoshka_fractions")
  elif arch == "jumprelu":
    b_enc = fold_input_bias(w_enc, b_enc, b_dec)  # JumpReluAutoEncoder does not subtract b_dec
    extra = JumpThreshold(threshold=tensor("threshold", (f,)))
    cfg = config_from_block(block, arch, d, f) or make_config(arch, d, f, where=where)
  else:
    cfg = config_from_block(block, arch, d, f) or make_config(arch, d, f, where=where)
  params = Params(w_enc=w_enc, b_enc=b_enc, w_dec=w_dec, b_dec=b_dec, extra=extra)
  if block and isinstance(block.get("metadata"), dict):
    metadata = {k: block["metadata"].get(k) for k in LLM_KEYS}
  else:
    layer = trainer.get("layer")
    metadata = {k: None for k in LLM_KEYS}
    metadata.update(model_name=trainer.get("lm_name"), hf_hook_name=trainer.get("submodule_name"),
                    hook_name=f"blocks.{layer}.hook_resid_post" if isinstance(layer, int) else None)
  block_out = None if block is None else {k: v for k, v in block.items() if k != "metadata"}
  step = block_step(block) if block else (trainer["steps"] if isinstance(trainer.get("steps"), int) else 0)
  origin = {"format": "dictionary_learning", "path": os.path.abspath(folder), "dict_class": dict_class,
            "metadata": metadata, "trainer": trainer, BLOCK: block_out}
  return Imported(cfg=cfg, params=params, threshold=threshold, norm_factor=norm_factor, step=step, origin=origin)
