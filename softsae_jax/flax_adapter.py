"""A trained SAE as a Flax NNX module, to splice into a JAX model's forward pass.

:class:`SaeSplice` holds the trained parameters as :class:`SaeWeight` variables (an ``nnx.Variable``
that is not an ``nnx.Param``, so ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and ``nnx.grad`` over
``nnx.Param`` leave them alone) and maps activations ``h [..., D]`` in raw units to the SAE's raw-unit
reconstruction with the arch's own inference rule (:mod:`softsae_jax.archs`: the input is divided by
the norm factor, encoded and decoded, and scaled back)::

  import softsae_jax
  from softsae_jax.flax_adapter import SaeSplice

  sae = SaeSplice(softsae_jax.load("runs/x"))        # or SaeSplice("runs/x")
  h_hat = sae(h)                                     # [..., D] reconstruction
  h_hat = sae(h, keep_mask=is_special)               # positions where keep_mask is True keep h

  ablate = SaeSplice("runs/x", error_term=True)      # h + decode(edited codes) - decode(codes):
  ablate.latent_scale[...] = ablate.latent_scale[...].at[17].set(0.0)   # feature 17 ablated,
  h_edit = ablate(h)                                 # the SAE's error kept (== h when nothing is edited)

Splicing after block ``L`` of an NNX model is replacing the block with a wrapper,
``model.blocks[L] = Spliced(model.blocks[L], sae)``; see ``examples/nnx_splice.py``. The module
works under ``nnx.jit`` (its configuration is static, its weights are state).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from softsae_jax import archs
from softsae_jax.config import THRESHOLD_ARCHS, SaeConfig
from softsae_jax.sae import decode
from softsae_jax.types import Params


class SaeWeight(nnx.Variable):
  """A trained SAE weight: state of the module, but not an ``nnx.Param`` (not trained with the host model)."""


def _weight(a: Any) -> SaeWeight:
  return SaeWeight(jnp.asarray(np.asarray(a, np.float32)))


class SaeSplice(nnx.Module):
  """A trained SAE as an NNX module returning raw-unit reconstructions of ``h [..., D]``.

  Args:
    model: a :class:`softsae_jax.evaluate.Model` (``softsae_jax.load(workdir)``) or a workdir path;
      or None with ``cfg`` (a resolved SaeConfig), ``params`` (normalised units), ``arch_state`` and
      ``norm_factor`` given (see :meth:`from_params`).
    error_term: return ``h + decode(codes * latent_scale) - decode(codes)`` instead of the
      reconstruction: the SAE's error is kept, so only edits of the codes (``latent_scale``) change
      the activations; with nothing edited the output is ``h`` exactly.

  Attributes:
    latent_scale: ``SaeWeight`` [F] multiplying the codes before decoding (ones: no edit); set
      entries to 0 to ablate latents, or to other values to steer.
  """

  def __init__(self, model: Any = None, *, error_term: bool = False, cfg: SaeConfig | None = None,
               params: Params | None = None, arch_state: Any = None, norm_factor: float = 1.0):
    if model is not None:
      if isinstance(model, str):
        from softsae_jax.evaluate import load

        model = load(model)
      cfg, params, arch_state, norm_factor = model.cfg.sae, model.params, model.arch_state, model.norm_factor
    elif cfg is None or params is None:
      raise ValueError("Expected a Model or workdir, or cfg= and params=")
    self._init(cfg, params, arch_state, float(norm_factor), error_term)

  @classmethod
  def from_params(cls, cfg: SaeConfig, params: Params, *, arch_state: Any = None, norm_factor: float = 1.0,
                  error_term: bool = False) -> "SaeSplice":
    """From a resolved :class:`~softsae_jax.config.SaeConfig` and parameters in normalised units."""
    return cls(cfg=cfg, params=params, arch_state=arch_state, norm_factor=norm_factor, error_term=error_term)

  def _init(self, cfg: SaeConfig, params: Params, arch_state: Any, norm_factor: float, error_term: bool) -> None:
    if cfg.d_in is None:
      raise ValueError("Expected a resolved SaeConfig (d_in set), got d_in=None")
    self.cfg = cfg
    self.error_term = bool(error_term)
    self.w_enc, self.b_enc = _weight(params.w_enc), _weight(params.b_enc)
    self.w_dec, self.b_dec = _weight(params.w_dec), _weight(params.b_dec)
    self.extra_type = None if params.extra is None else type(params.extra)
    self.extra_fields = () if params.extra is None else tuple(params.extra._fields)
    for name in self.extra_fields:
      setattr(self, "extra_" + name, _weight(getattr(params.extra, name)))
    # only BatchTopK/Matryoshka's arch state is used at inference (SoftSAE's k-controller offset is not)
    self.threshold = _weight(arch_state) if cfg.arch in THRESHOLD_ARCHS and arch_state is not None else None
    self.norm_factor = _weight(norm_factor)
    self.latent_scale = SaeWeight(jnp.ones((cfg.F,), jnp.float32))

  # ------------------------------------------------------------------------------------ pieces

  def params(self) -> Params:
    """The weights as a :class:`~softsae_jax.types.Params` (normalised units)."""
    extra = None
    if self.extra_type is not None:
      extra = self.extra_type(**{name: getattr(self, "extra_" + name)[...] for name in self.extra_fields})
    return Params(w_enc=self.w_enc[...], b_enc=self.b_enc[...], w_dec=self.w_dec[...], b_dec=self.b_dec[...],
                  extra=extra)

  def _rows(self, h: jax.Array) -> jax.Array:
    if h.shape[-1] != self.cfg.d_in:
      raise ValueError(f"Expected activations [..., D={self.cfg.d_in}], got shape {h.shape}")
    return h.reshape(-1, self.cfg.d_in).astype(jnp.float32)

  def _codes(self, x_BD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalised-unit codes [B, F] and k [B] of raw rows (the arch's inference rule)."""
    thr = None if self.threshold is None else self.threshold[...]
    return archs.get(self.cfg.arch).infer(self.params(), thr, x_BD / self.norm_factor[...], self.cfg, None)

  def encode(self, h: jax.Array) -> jax.Array:
    """Raw-unit codes [..., F] of raw activations [..., D] (before ``latent_scale``)."""
    acts_BF, _ = self._codes(self._rows(h))
    return (acts_BF * self.norm_factor[...]).reshape(*h.shape[:-1], self.cfg.F)

  def estimate_k(self, h: jax.Array) -> jax.Array:
    """Per-position k [...]: SoftSAE's k-hat, the active count for the other archs."""
    _, k_B = self._codes(self._rows(h))
    return k_B.reshape(h.shape[:-1])

  def decode(self, codes: jax.Array) -> jax.Array:
    """Raw-unit reconstructions [..., D] of raw-unit codes [..., F]."""
    n = self.norm_factor[...]
    c_BF = codes.reshape(-1, self.cfg.F).astype(jnp.float32)
    return (decode(self.params(), c_BF / n, self.cfg) * n).reshape(*codes.shape[:-1], self.cfg.d_in)

  # ------------------------------------------------------------------------------------ splice

  def __call__(self, h: jax.Array, keep_mask: jax.Array | None = None) -> jax.Array:
    """The SAE's raw-unit reconstruction of ``h [..., D]`` (or, with ``error_term``, ``h`` plus the
    effect of editing the codes), in ``h``'s dtype; positions where ``keep_mask [...]`` is True
    keep ``h`` (e.g. BOS and other special tokens)."""
    x_BD = self._rows(h)
    n = self.norm_factor[...]
    acts_BF, _ = self._codes(x_BD)
    edited_BF = acts_BF * self.latent_scale[...][None, :]
    if self.error_term:
      # h + decode(edited) - decode(acts) = h + (edited - acts) W_dec: exactly h when nothing is edited
      out_BD = x_BD + (jnp.matmul(edited_BF - acts_BF, self.w_dec[...]) * n)
    else:
      out_BD = decode(self.params(), edited_BF, self.cfg) * n
    out = out_BD.reshape(h.shape)
    if keep_mask is not None:
      out = jnp.where(jnp.asarray(keep_mask, bool)[..., None], h.astype(jnp.float32), out)
    return out.astype(h.dtype)
