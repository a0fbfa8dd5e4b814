"""Loading a transformers model and reading the output of one of its blocks (torch, imported lazily).

The site is ``block_output``: the output of transformer block ``L`` (0-indexed), which is
``hidden_states[L + 1]`` of a forward pass with ``output_hidden_states=True``. For ``L`` below the
last block the same tensor is taken by a forward hook on block ``L`` that then stops the forward
pass, so the later blocks are never run; on the first batch both ways are computed and compared,
and the hook is used only if they agree (otherwise every batch runs the full model). For the last
block ``hidden_states[-1]`` is used as transformers defines it, which for GPT-2 and Llama-style
models includes the final layer norm (``ln_f`` / ``norm``), and for BERT and ViT does not.

Model kinds (``source.arch`` in the manifest):
  causal: decoder-only LMs (GPT-2, Llama, ...): their model_type is registered for causal LM and not
    for masked LM in transformers.
  encoder: everything else that reads token ids (BERT, MiniLM, RoBERTa, ...).
  vision: ``--images`` input; for a vision-language checkpoint (CLIP, SigLIP) its ``vision_model``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from softsae_jax.bridge import ExportError

TORCH_DTYPES = ("float32", "float16", "bfloat16")
KINDS = ("causal", "encoder", "vision")


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def quiet_transformers() -> None:
  """Silences transformers' load reports and progress bars (the export has its own progress bar)."""
  import transformers

  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()


def check_source(name: str, flag: str) -> None:
  """Fails early, with one line, on a local model path that cannot work.

  A name that exists on disk must be a folder with ``config.json`` (or, for ``--tokenizer``, any
  folder). A name that looks like a path (absolute, ``./``, ``../``, ``~`` or more than one ``/``)
  but does not exist is an error; anything else is treated as a Hugging Face hub name.

  Raises:
    ExportError: naming ``flag`` and what was expected.
  """
  if os.path.exists(name):
    if not os.path.isdir(name):
      raise ExportError(f"{flag} {name}: expected a model folder or a Hugging Face hub name, got a file")
    if flag == "--model" and not os.path.isfile(os.path.join(name, "config.json")):
      raise ExportError(f"{flag} {name}: folder has no config.json (expected a transformers model folder)")
    return
  if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name:
    raise ExportError(f"{flag} {name}: no such model folder")


def load_config(name: str) -> Any:
  """``AutoConfig.from_pretrained(name)`` with a one-line error.

  Raises:
    ExportError: the folder or hub name does not hold a transformers config.
  """
  from transformers import AutoConfig

  check_source(name, "--model")
  try:
    return AutoConfig.from_pretrained(name)
  # transformers and huggingface_hub raise OSError, ValueError, KeyError and HTTP errors here;
  # all of them mean the same thing to the user.
  except Exception as e:  # noqa: BLE001
    where = "folder" if os.path.isdir(name) else "name (not a local folder; the Hugging Face hub could not provide it)"
    raise ExportError(f"--model {name}: cannot load a transformers config from this {where} "
                      f"({_first_line(e)})") from None


def text_kind(config: Any, arch: str, model: str) -> str:
  """``causal`` or ``encoder`` for a text model; ``arch`` other than ``auto`` forces the choice.

  Raises:
    ExportError: an encoder-decoder or vision-language model (not supported for text).
  """
  if getattr(config, "is_encoder_decoder", False):
    raise ExportError(f"--model {model}: encoder-decoder models ({config.model_type}) are not supported; "
                    "expected a causal LM or an encoder")
  if hasattr(config, "vision_config"):
    raise ExportError(f"--model {model}: a vision-language model ({config.model_type}); "
                    "use --images to export its vision tower")
  if arch != "auto":
    return arch
  from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                      MODEL_FOR_MASKED_LM_MAPPING_NAMES)

  mt = config.model_type
  if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
    return "causal"
  return "encoder"


def tower_config(config: Any, kind: str) -> Any:
  """The config of the part that is run: the vision tower of a CLIP-style model, else ``config``."""
  if kind == "vision" and hasattr(config, "vision_config"):
    return config.vision_config
  return config


def num_layers(config: Any, model: str) -> int:
  """Number of transformer blocks of a (tower) config.

  Raises:
    ExportError: the config does not say.
  """
  n = getattr(config, "num_hidden_layers", None)
  if not isinstance(n, int) or n < 1:
    raise ExportError(f"--model {model}: config has no num_hidden_layers; cannot locate block outputs")
  return n


def max_positions(config: Any) -> int | None:
  """The longest sequence the model's position embeddings allow, if the config says."""
  for key in ("max_position_embeddings", "n_positions"):
    n = getattr(config, key, None)
    if isinstance(n, int) and n > 0:
      return n
  return None


def load_tokenizer(name: str) -> Any:
  """``AutoTokenizer.from_pretrained(name)`` with a one-line error.

  Raises:
    ExportError: naming ``--tokenizer``/``--model`` and the cause.
  """
  from transformers import AutoTokenizer

  check_source(name, "--tokenizer")
  try:
    return AutoTokenizer.from_pretrained(name)
  except Exception as e:  # noqa: BLE001  (see load_config)
    raise ExportError(f"--tokenizer {name}: cannot load a tokenizer ({_first_line(e)})") from None


def load_image_processor(name: str) -> Any:
  """``AutoImageProcessor.from_pretrained(name)`` with a one-line error.

  Raises:
    ExportError: the model has no image processor (``preprocessor_config.json``).
  """
  from transformers import AutoImageProcessor

  try:
    return AutoImageProcessor.from_pretrained(name)
  except Exception as e:  # noqa: BLE001  (see load_config)
    raise ExportError(f"--model {name}: no usable image processor (preprocessor_config.json); --images needs a "
                    f"vision model such as ViT or CLIP ({_first_line(e)})") from None


def torch_device(device: str) -> Any:
  """``torch.device(device)``, checked to be usable.

  Raises:
    ExportError: an unknown or unavailable device.
  """
  import torch

  try:
    dev = torch.device(device)
  except (RuntimeError, ValueError) as e:
    raise ExportError(f"--device {device}: not a torch device ({_first_line(e)})") from None
  if dev.type == "cuda" and not torch.cuda.is_available():
    raise ExportError(f"--device {device}: torch.cuda.is_available() is False on this machine")
  if dev.type == "mps" and not torch.backends.mps.is_available():
    raise ExportError(f"--device {device}: torch.backends.mps.is_available() is False on this machine")
  return dev


def load_model(name: str, config: Any, kind: str, device: Any, torch_dtype: str) -> Any:
  """Loads the model to run, in eval mode on ``device`` with ``torch_dtype`` weights.

  Args:
    name: model folder or hub name.
    config: its config (from :func:`load_config`).
    kind: ``causal``, ``encoder`` or ``vision``.
    device: a ``torch.device``.
    torch_dtype: one of :data:`TORCH_DTYPES`.

  Returns:
    The ``torch.nn.Module`` to call: the base model (no LM head), or the vision tower.

  Raises:
    ExportError: the weights cannot be loaded.
  """
  import torch
  import transformers
  from transformers import AutoModel, AutoModelForCausalLM

  dtype = getattr(torch, torch_dtype)
  major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
  # `torch_dtype=` was renamed `dtype=` in transformers 4.56.
  kw = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}
  try:
    try:
      model = AutoModel.from_pretrained(name, config=config, **kw)
    except ValueError:
      if kind != "causal":
        raise
      model = AutoModelForCausalLM.from_pretrained(name, config=config, **kw)
  except Exception as e:  # noqa: BLE001  (see load_config)
    raise ExportError(f"--model {name}: cannot load the weights ({_first_line(e)})") from None
  if kind == "vision" and hasattr(model, "vision_model"):
    model = model.vision_model
  return model.to(device=device, dtype=dtype).eval()


class _StopForward(Exception):
  """Raised by the block hook once block L has run, to skip the rest of the model."""


def _find_blocks(model: Any, n_layers: int) -> Any:
  import torch

  for module in model.modules():
    if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
      return module
  return None


class LayerReader:
  """Returns the block-``L`` output ``[B, T, D]`` (float32 numpy) of a batch of model inputs.

  Args:
    model: from :func:`load_model`.
    layer: block index ``L``, ``0 <= L < n_layers``.
    n_layers: number of blocks.
    extra_kwargs: passed to every forward (e.g. ``use_cache=False``).
  """

  def __init__(self, model: Any, layer: int, n_layers: int, extra_kwargs: dict[str, Any] | None = None):
    self.model = model
    self.layer = layer
    self.n_layers = n_layers
    self.extra_kwargs = dict(extra_kwargs or {})
    blocks = _find_blocks(model, n_layers) if layer < n_layers - 1 else None
    self.block = blocks[layer] if blocks is not None else None
    self.mode: str | None = None if self.block is not None else "hidden_states"

  def _full(self, inputs: dict[str, Any]) -> Any:
    out = self.model(**inputs, **self.extra_kwargs, output_hidden_states=True)
    hs = out.hidden_states
    if len(hs) != self.n_layers + 1:
      raise ExportError(f"model returned {len(hs)} hidden states, expected num_hidden_layers + 1 = {self.n_layers + 1}")
    return hs[self.layer + 1]

  def _hooked(self, inputs: dict[str, Any]) -> Any:
    captured = []

    def hook(module, args, output):
      captured.append(output[0] if isinstance(output, tuple) else output)
      raise _StopForward

    handle = self.block.register_forward_hook(hook)
    try:
      self.model(**inputs, **self.extra_kwargs)
    except _StopForward:
      pass
    finally:
      handle.remove()
    if not captured:
      raise ExportError(f"block {self.layer} did not run during the forward pass")
    return captured[0]

  def __call__(self, inputs: dict[str, Any]) -> np.ndarray:
    """Runs the batch; returns ``x_BTD`` as float32."""
    import torch

    with torch.inference_mode():
      if self.mode == "hook":
        x_BTD = self._hooked(inputs)
      elif self.mode == "hidden_states":
        x_BTD = self._full(inputs)
      else:
        ref_BTD = self._full(inputs)
        x_BTD = self._hooked(inputs)
        scale = float(ref_BTD.float().abs().max()) + 1.0
        if x_BTD.shape == ref_BTD.shape and float((x_BTD.float() - ref_BTD.float()).abs().max()) <= 1e-4 * scale:
          self.mode = "hook"
        else:
          print(f"note: the output hook on block {self.layer} disagrees with hidden_states[{self.layer + 1}]; "
                "running the full model for every batch", file=sys.stderr)
          self.mode = "hidden_states"
          x_BTD = ref_BTD
      return x_BTD.float().cpu().numpy()


def text_inputs(windows: Sequence[Any], pad_id: int, device: Any) -> dict[str, Any]:
  """Right-padded ``input_ids``/``attention_mask`` [B, T] for a batch of windows."""
  import torch

  t = max(len(w.ids) for w in windows)
  ids_BT = torch.full((len(windows), t), pad_id, dtype=torch.long)
  mask_BT = torch.zeros((len(windows), t), dtype=torch.long)
  for b, w in enumerate(windows):
    ids_BT[b, :len(w.ids)] = torch.tensor(w.ids, dtype=torch.long)
    mask_BT[b, :len(w.ids)] = 1
  return {"input_ids": ids_BT.to(device), "attention_mask": mask_BT.to(device)}


def image_inputs(processor: Any, images: Sequence[Any], device: Any, torch_dtype: str) -> dict[str, Any]:
  """``pixel_values`` [B, C, H, W] for a batch of PIL images."""
  import torch

  pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
  return {"pixel_values": pixels.to(device=device, dtype=getattr(torch, torch_dtype))}


def patch_size(config: Any) -> tuple[int, int] | None:
  """(height, width) of a patch from a vision config, if it says."""
  p = getattr(config, "patch_size", None)
  if isinstance(p, int):
    return p, p
  if isinstance(p, (list, tuple)) and len(p) == 2:
    return int(p[0]), int(p[1])
  return None
