"""A PyTorch module for our SAELens exports (``softsae convert --to saelens``): every arch, SoftSAE included.

Imports only torch, safetensors and the standard library (no jax, no numpy), so it drops into any
PyTorch codebase, and SAEBench's custom-SAE duck type is met (``W_enc`` [d_in, d_sae], ``W_dec``
[d_sae, d_in], ``b_enc``, ``b_dec``, ``device``, ``dtype``, ``to()``, ``cfg`` with model_name,
hook_name, hook_layer, d_in, d_sae, dtype string, context_size, prepend_bos)::

  from softsae_jax.torch_module import SaeModule
  sae = SaeModule.from_dir("exports/gpt2_l6")      # cfg.json + sae_weights.safetensors
  codes = sae.encode(h)                            # [..., d_sae]; h: [..., d_in] raw activations
  h_hat = sae.decode(codes)                        # == sae(h)
  k_hat = sae.estimate_k(h)                        # SoftSAE: the real k-hat per row (keeps floor(k-hat))

The encoders follow SAELens's semantics for the file's ``architecture``: ``standard``
relu((x - b_dec) W_enc + b_enc); ``topk`` its k largest (rescaled by the decoder row norms when
``rescale_acts_by_decoder_norm``); ``jumprelu`` relu(pre) where pre > threshold; ``softsae`` the
floor(k-hat) largest, k-hat = clamp(k_max sigmoid(w_k2 . relu((x - b_dec) W_k1 + b_k1) + b_k2), 1, d_sae)
(cfg ``k_input: "top_acts"``: relu(top_M(relu(pre)) W_k1 + b_k1) instead, the M = min(k_max + 16, d_sae)
largest activations sorted in decreasing order).

:func:`register_with_sae_lens` registers a SAELens SAE class for architecture ``softsae`` so that
``sae_lens.SAE.load_from_disk`` reads our SoftSAE exports too (the built-in architectures need nothing).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

ARCHITECTURES = ("standard", "topk", "jumprelu", "softsae")
_EXTRA = {"standard": (), "topk": (), "jumprelu": ("threshold",), "softsae": ("W_k1", "b_k1", "w_k2", "b_k2")}


@dataclasses.dataclass(frozen=True)
class Metadata:
  """SAEBench's ``cfg.metadata`` fields."""

  context_size: int | None
  hook_name: str | None
  hook_head_index: int | None
  seqpos_slice: tuple
  prepend_bos: bool


@dataclasses.dataclass
class SaeConfig:
  """The fields SAEBench's custom-SAE config has (plus ours: k, k_max, rescale, the full SAELens metadata)."""

  model_name: str | None
  d_in: int
  d_sae: int
  hook_layer: int | None
  hook_name: str | None
  context_size: int | None = None
  hook_head_index: int | None = None
  architecture: str = ""
  apply_b_dec_to_input: bool = True
  finetuning_scaling_factor: bool = False
  activation_fn_str: str = ""
  prepend_bos: bool = True
  normalize_activations: str = "none"
  dtype: str = "float32"
  device: str = "cpu"
  dataset_path: str = ""
  dataset_trust_remote_code: bool = True
  seqpos_slice: tuple = (None,)
  training_tokens: int = -100_000
  sae_lens_training_version: str | None = None
  neuronpedia_id: str | None = None
  hf_hook_name: str | None = None
  exclude_special_tokens: Any = False
  k: int | None = None
  k_max: int | None = None
  k_input: str = "x"
  rescale_acts_by_decoder_norm: bool = False
  metadata: Any = None
  sae_lens_metadata: dict = dataclasses.field(default_factory=dict)


def _hook_layer(hook_name: str | None) -> int | None:
  """The block index in a hook name (``blocks.12.hook_resid_post`` -> 12), as SAEBench parses it."""
  if not hook_name:
    return None
  m = re.search(r"\d+", hook_name)
  return int(m.group()) if m else None


def _dtype_name(dtype: torch.dtype) -> str:
  return str(dtype).split(".")[-1]


class SaeModule(nn.Module):
  """An SAE from a SAELens folder, in raw activation units. Build it with :meth:`from_dir`."""

  def __init__(self, cfg: SaeConfig, tensors: dict[str, torch.Tensor]):
    super().__init__()
    if cfg.architecture not in ARCHITECTURES:
      raise ValueError(f"architecture {cfg.architecture!r} is not supported (expected one of {ARCHITECTURES})")
    self.cfg = cfg
    for name in ("W_enc", "b_enc", "W_dec", "b_dec") + _EXTRA[cfg.architecture]:
      setattr(self, name, nn.Parameter(tensors[name]))
    self.dtype: torch.dtype = self.W_enc.dtype
    self.device: torch.device = self.W_enc.device
    self.cfg.dtype = _dtype_name(self.dtype)
    self.cfg.device = str(self.device)

  @classmethod
  def from_dir(cls, path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "SaeModule":
    """Reads ``cfg.json`` and ``sae_weights.safetensors`` from ``path``.

    Raises:
      ValueError: an architecture, field or tensor this module does not handle (named).
      FileNotFoundError: a missing file.
    """
    with open(os.path.join(path, "cfg.json")) as f:
      raw = json.load(f)
    arch = raw.get("architecture", "standard")
    if arch not in ARCHITECTURES:
      raise ValueError(f"{path}/cfg.json: architecture {arch!r} is not supported (expected one of {ARCHITECTURES})")
    if raw.get("normalize_activations", "none") not in ("none", None):
      raise ValueError(f"{path}/cfg.json: normalize_activations {raw['normalize_activations']!r} is not supported")
    if raw.get("k_input", "x") not in ("x", "top_acts"):
      raise ValueError(f"{path}/cfg.json: k_input {raw['k_input']!r} is not supported (expected 'x' or 'top_acts')")
    tensors = load_file(os.path.join(path, "sae_weights.safetensors"), device=str(device))
    need = ("W_enc", "b_enc", "W_dec", "b_dec") + _EXTRA[arch]
    missing = [n for n in need if n not in tensors]
    if missing:
      raise ValueError(f"{path}/sae_weights.safetensors: missing tensor {missing[0]!r} for architecture {arch!r}")
    tensors = {n: tensors[n].to(dtype=dtype) for n in need}
    md = raw.get("metadata") or {}
    hook = md.get("hook_name", raw.get("hook_name"))
    context = md.get("context_size", raw.get("context_size"))
    bos = md.get("prepend_bos", raw.get("prepend_bos"))
    cfg = SaeConfig(model_name=md.get("model_name", raw.get("model_name")), d_in=int(raw["d_in"]),
                    d_sae=int(raw["d_sae"]), hook_layer=_hook_layer(hook), hook_name=hook, context_size=context,
                    hook_head_index=md.get("hook_head_index"), architecture=arch,
                    apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
                    activation_fn_str="topk" if arch in ("topk", "softsae") else "relu",
                    prepend_bos=True if bos is None else bool(bos), dataset_path=md.get("dataset_path") or "",
                    hf_hook_name=md.get("hf_hook_name"), exclude_special_tokens=md.get("exclude_special_tokens", False),
                    k=raw.get("k"), k_max=raw.get("k_max"), k_input=raw.get("k_input", "x"),
                    rescale_acts_by_decoder_norm=bool(raw.get("rescale_acts_by_decoder_norm", False)),
                    sae_lens_metadata=dict(md))
    cfg.metadata = Metadata(context_size=context, hook_name=hook, hook_head_index=cfg.hook_head_index,
                            seqpos_slice=cfg.seqpos_slice, prepend_bos=cfg.prepend_bos)
    return cls(cfg, tensors)

  # ------------------------------------------------------------------ the forward pass

  def _sae_in(self, x: torch.Tensor) -> torch.Tensor:
    x = x.to(self.dtype)
    return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

  def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
    """The encoder's pre-activations (x - b_dec) W_enc + b_enc, [..., d_sae]."""
    return self._sae_in(x) @ self.W_enc + self.b_enc

  def estimate_k(self, x: torch.Tensor) -> torch.Tensor:
    """SoftSAE's k-hat per row [...] (real-valued; a row keeps its floor(k-hat) largest activations)."""
    if self.cfg.architecture != "softsae":
      raise ValueError(f"estimate_k is SoftSAE's; this SAE is {self.cfg.architecture!r}")
    sae_in = self._sae_in(x)
    return _k_hat(self, sae_in, sae_in @ self.W_enc + self.b_enc)

  def encode(self, x: torch.Tensor) -> torch.Tensor:
    """Raw-unit codes [..., d_sae] of raw activations [..., d_in]."""
    pre = self.pre_acts(x)
    arch = self.cfg.architecture
    if arch == "standard":
      return torch.relu(pre)
    if arch == "jumprelu":
      return torch.relu(pre) * (pre > self.threshold)
    if arch == "topk":
      if self.cfg.rescale_acts_by_decoder_norm:
        pre = pre * self.W_dec.norm(dim=-1)
      return _keep_top(torch.relu(pre), torch.full(pre.shape[:-1], float(self.cfg.k), device=pre.device),
                       int(self.cfg.k))
    k_max = min(int(self.cfg.k_max), self.cfg.d_sae)
    return _keep_top(torch.relu(pre), torch.floor(self.estimate_k(x)), k_max)

  def decode(self, codes: torch.Tensor) -> torch.Tensor:
    """Raw-unit reconstructions [..., d_in] of codes [..., d_sae]."""
    codes = codes.to(self.dtype)
    if self.cfg.architecture == "topk" and self.cfg.rescale_acts_by_decoder_norm:
      return codes @ (self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)) + self.b_dec
    return codes @ self.W_dec + self.b_dec

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """The reconstruction ``decode(encode(x))``, [..., d_in]."""
    return self.decode(self.encode(x))

  # ------------------------------------------------------------------ SAEBench's duck type

  def to(self, *args, **kwargs) -> "SaeModule":
    """``nn.Module.to`` that also updates ``device``, ``dtype`` and ``cfg.dtype`` / ``cfg.device``."""
    super().to(*args, **kwargs)
    self.dtype, self.device = self.W_enc.dtype, self.W_enc.device
    self.cfg.dtype, self.cfg.device = _dtype_name(self.dtype), str(self.device)
    return self

  @torch.no_grad()
  def check_decoder_norms(self) -> bool:
    """True when every decoder row has unit norm (SAEBench's check; 1e-5, or 1e-2 in half precision)."""
    tol = 1e-2 if self.dtype in (torch.float16, torch.bfloat16) else 1e-5
    norms = self.W_dec.float().norm(dim=-1)
    return bool(torch.allclose(norms, torch.ones_like(norms), atol=tol))


def _keep_top(acts: torch.Tensor, count: torch.Tensor, max_k: int, values: torch.Tensor | None = None) -> torch.Tensor:
  """Keeps the ``count`` (per row, <= max_k) largest entries of the last axis, zeros elsewhere; with
  ``values``, ranks by ``acts`` and keeps ``values``' entries at those places."""
  if max_k <= 0:
    return torch.zeros_like(acts)
  vals, idx = torch.topk(acts, max_k, dim=-1)
  if values is not None:
    vals = values.gather(-1, idx)
  keep = torch.arange(max_k, device=acts.device) < count.unsqueeze(-1)
  return torch.zeros_like(acts).scatter(-1, idx, vals * keep)


def _k_hat(m, sae_in: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
  """k-hat of module ``m`` (W_k1, b_k1, w_k2, b_k2, cfg.k_max, cfg.d_sae, cfg.k_input) from its input
  ``sae_in`` (x - b_dec) and its encoder pre-activations ``pre``."""
  k_input = getattr(m.cfg, "k_input", "x")
  if k_input == "top_acts":
    feats = torch.topk(torch.relu(pre), m.W_k1.shape[0], dim=-1).values
  elif k_input == "x":
    feats = sae_in
  else:
    raise ValueError(f"k_input {k_input!r} is not supported (expected 'x' or 'top_acts')")
  logit = torch.relu(feats @ m.W_k1 + m.b_k1) @ m.w_k2 + m.b_k2
  return torch.clamp(m.cfg.k_max * torch.sigmoid(logit), 1.0, float(m.cfg.d_sae))


# ------------------------------------------------------------------------------------- SAELens


def register_with_sae_lens() -> tuple[Any, Any]:
  """Registers architecture ``softsae`` with SAELens (idempotent); returns (SAE class, config class).

  After this, ``sae_lens.SAE.load_from_disk(path)`` loads our SoftSAE exports as a SAELens ``SAE``
  (encode = the floor(k-hat) largest activations; its ``estimate_k`` gives k-hat). In-process only:
  tools that know only SAELens's built-in classes (Neuronpedia, SAEDashboard's runner) cannot.
  ``sae_lens`` is imported here, not at module import.
  """
  import sae_lens
  from sae_lens.registry import SAE_CLASS_REGISTRY

  if "softsae" in SAE_CLASS_REGISTRY:
    return SAE_CLASS_REGISTRY["softsae"]
  from sae_lens.saes.sae import SAE, SAEConfig

  @dataclasses.dataclass
  class SoftSAELensConfig(SAEConfig):
    """SAELens config of a SoftSAE export: ``k`` (the trained mean-k budget) and ``k_max``."""

    k: int = 32
    k_max: int = 64
    k_input: str = "x"  # "top_acts": the estimator reads the top min(k_max + 16, d_sae) activations
    k_hidden: int = 128  # the "top_acts" estimator's hidden width
    k_top: int | None = None  # how many top activations it reads (None: min(k_max + 16, d_sae))

    @classmethod
    def architecture(cls) -> str:
      return "softsae"

  class SoftSAELens(SAE):
    """SoftSAE for SAELens: top-floor(k-hat) of relu((x - b_dec) W_enc + b_enc), k-hat from the estimator.

    ``rank_scale`` [d_sae] (None until :meth:`fold_W_dec_norm`) maps the activations back to the
    unfolded ones, which the top-k selection and the top_acts estimator read.
    """

    def initialize_weights(self) -> None:
      super().initialize_weights()
      kw = {"dtype": self.dtype, "device": self.device}
      d, f = self.cfg.d_in, self.cfg.d_sae
      self.b_enc = nn.Parameter(torch.zeros(f, **kw))
      top = self.cfg.k_max + 16 if self.cfg.k_top is None else self.cfg.k_top
      m, h = (min(top, f), self.cfg.k_hidden) if self.cfg.k_input == "top_acts" else (d, f)
      self.W_k1 = nn.Parameter(torch.zeros(m, h, **kw))
      self.b_k1 = nn.Parameter(torch.zeros(h, **kw))
      self.w_k2 = nn.Parameter(torch.zeros(h, **kw))
      self.b_k2 = nn.Parameter(torch.zeros((), **kw))
      # None until fold_W_dec_norm; a non-persistent buffer: follows .to(), not in the state dict (SAELens
      # builds the module on the meta device and loads exactly the saved tensors)
      self.register_buffer("rank_scale", None, persistent=False)

    def estimate_k(self, x: torch.Tensor) -> torch.Tensor:
      sae_in = self.process_sae_in(x)
      return _k_hat(self, sae_in, self._unfolded(sae_in @ self.W_enc + self.b_enc))

    def _unfolded(self, pre: torch.Tensor) -> torch.Tensor:
      return pre if self.rank_scale is None else pre * self.rank_scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
      sae_in = self.process_sae_in(x)
      pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
      ranked = self._unfolded(pre)  # rank_scale > 0: the same ReLU zeros
      k_max = min(int(self.cfg.k_max), self.cfg.d_sae)
      codes = _keep_top(torch.relu(ranked), torch.floor(_k_hat(self, sae_in, ranked)), k_max, values=torch.relu(pre))
      return self.hook_sae_acts_post(codes)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
      out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
      out = self.run_time_activation_norm_fn_out(out)
      return self.reshape_fn_out(out, self.d_head)

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
      """SAELens's fold (unit decoder rows, their norms into W_enc and b_enc), exact for SoftSAE too:
      ``rank_scale`` divides by the norms, so the selection and k-hat read the unfolded activations
      and ``decode(encode(x))`` is unchanged. ``rank_scale`` is not saved (SAELens loads our files
      strictly): save before folding, or fold again after loading."""
      scale = 1.0 / self.fold_and_get_W_dec_norm()
      self.rank_scale = scale if self.rank_scale is None else self.rank_scale * scale

  for c, name in ((SoftSAELensConfig, "SoftSAELensConfig"), (SoftSAELens, "SoftSAELens")):
    c.__module__, c.__qualname__ = __name__, name
    globals()[name] = c
  sae_lens.register_sae_class("softsae", SoftSAELens, SoftSAELensConfig)
  return SoftSAELens, SoftSAELensConfig


__all__ = ["SaeModule", "SaeConfig", "Metadata", "register_with_sae_lens", "ARCHITECTURES"]
