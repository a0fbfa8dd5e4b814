"""The SAE family as pure functions over :class:`~softsae_jax.types.Params`.

Archs (``SaeConfig.arch``), all with a ReLU encoder, unit-norm decoder atoms and ``b_dec``
subtracted before encoding (SOFTSAE_SPEC.md §2, §4):

* ``softsae``: a k-estimator MLP D -> F -> 1 predicts a real k-hat in [1, k_max] per row. Training
  multiplies the ReLU activations by LapSum soft top-k weights (sum = k-hat); inference keeps the
  floor(k-hat) largest ReLU activations of each row.
* ``topk``: the k largest ReLU activations per row.
* ``batchtopk``: training keeps the k*B largest activations of the whole batch; inference keeps
  activations above a learned threshold (an EMA of the smallest selected activation).
* ``matryoshka``: batch top-k with nested groups of latents, each prefix trained to reconstruct.
* ``relu``: plain ReLU with an L1 penalty.

Inputs here are in *normalised* units (raw activations divided by the norm factor); see
``evaluate.py`` for raw-unit inference.

References:
  SoftSAE: Stępień et al., arXiv 2605.06610. TopK / AuxK: Gao et al., "Scaling and evaluating sparse
  autoencoders", arXiv 2406.04093. BatchTopK: Bussmann et al., arXiv 2412.06410. Matryoshka SAEs:
  Bussmann et al., arXiv 2503.17547.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from softsae_jax.config import SaeConfig
from softsae_jax.topk import hard_topk, soft_topk
from softsae_jax.types import Codes, Params

_EPS32 = float(jnp.finfo(jnp.float32).eps)


def init_params(key: jax.Array, cfg: SaeConfig) -> Params:
  """Initial parameters (spec §2.1).

  Decoder atoms (rows of ``w_dec`` [F, D]) start as torch's default Linear init U(-1/sqrt(F),
  1/sqrt(F)) normalised to unit L2 norm; ``w_enc`` is its transpose; the SoftSAE k-estimator's first
  layer is a separate copy of ``w_enc``; its second layer is torch-default uniform. ``b_dec`` is 0
  here and set to the geometric median of the first batch by the trainer.

  Examples:
    >>> cfg = SaeConfig(arch="topk", d_in=8, n_latents=32, k=4)
    >>> p = init_params(jax.random.key(0), cfg)
    >>> p.w_dec.shape, p.w_enc.shape
    ((32, 8), (8, 32))
  """
  d, f = cfg.d_in, cfg.F
  if d is None:
    raise ValueError("Expected cfg.d_in to be set (resolve the config against the data first), got None")
  k_dec, k_w2, k_b2 = jax.random.split(key, 3)
  bound = 1.0 / jnp.sqrt(f)
  w_dec_FD = jax.random.uniform(k_dec, (f, d), jnp.float32, -bound, bound)
  w_dec_FD = w_dec_FD / (jnp.linalg.norm(w_dec_FD, axis=1, keepdims=True) + _EPS32)
  w_enc_DF = w_dec_FD.T
  if cfg.arch == "softsae":
    w_k1, b_k1 = jnp.copy(w_enc_DF), jnp.zeros((f,), jnp.float32)  # own buffer: the state is donated
    w_k2 = jax.random.uniform(k_w2, (f,), jnp.float32, -bound, bound)
    b_k2 = jax.random.uniform(k_b2, (), jnp.float32, -bound, bound)
  else:
    # Size-1 placeholders (orbax cannot save zero-size arrays); never read by these archs.
    w_k1, b_k1 = jnp.zeros((1, 1), jnp.float32), jnp.zeros((1,), jnp.float32)
    w_k2, b_k2 = jnp.zeros((1,), jnp.float32), jnp.zeros((), jnp.float32)
  return Params(w_enc=w_enc_DF, b_enc=jnp.zeros((f,), jnp.float32), w_dec=w_dec_FD,
                b_dec=jnp.zeros((d,), jnp.float32), w_k1=w_k1, b_k1=b_k1, w_k2=w_k2, b_k2=b_k2)


def _affine(x_BD, b_dec_D, w_DF, b_F, dtype):
  """(x - b_dec) @ w + b, written as x @ w - (b_dec @ w) + b.

  The same function; the second form lets autodiff reach b_dec through a vector-matrix product
  instead of materialising the [B, D] input gradient with a second full matmul.
  """
  cd = jnp.dtype(dtype)
  h_BF = jnp.matmul(x_BD.astype(cd), w_DF.astype(cd), preferred_element_type=jnp.float32)
  shift_F = jnp.matmul(b_dec_D.astype(cd), w_DF.astype(cd), preferred_element_type=jnp.float32)
  return h_BF - shift_F[None, :] + b_F[None, :]


def pre_acts(params: Params, x_BD: jax.Array, cfg: SaeConfig) -> jax.Array:
  """ReLU((x - b_dec) W_enc + b_enc): [B, D] -> [B, F], before any top-k selection."""
  return jax.nn.relu(_affine(x_BD, params.b_dec, params.w_enc, params.b_enc, cfg.compute_dtype))


def estimate_k(params: Params, x_BD: jax.Array, cfg: SaeConfig) -> jax.Array:
  """SoftSAE's k-hat: clamp(k_max * sigmoid(w2 . ReLU((x - b_dec) W1 + b1) + b2), 1, F), [B] float32.

  Kept in float32 whatever the compute dtype (spec §7.9: bf16 would quantise k-hat).
  """
  h_BF = jax.nn.relu(_affine(x_BD, params.b_dec, params.w_k1, params.b_k1, cfg.compute_dtype))
  logit_B = h_BF @ params.w_k2 + params.b_k2
  return jnp.clip(cfg.kmax * jax.nn.sigmoid(logit_B), 1.0, float(cfg.F))


def topk_sparse(pre_BF: jax.Array, k_B: jax.Array, max_k: int) -> tuple[jax.Array, jax.Array]:
  """The floor(k_B) largest entries of each row as (vals_BK, idx_BK), K = max_k; ranks at or beyond a
  row's count have value 0. Differentiable in ``pre_BF`` through the values."""
  vals_BK, idx_BK = jax.lax.top_k(pre_BF, max_k)
  keep_BK = jnp.arange(max_k)[None, :] < jnp.floor(k_B)[:, None]
  return jnp.where(keep_BK, vals_BK, 0.0), idx_BK


def scatter_codes(vals_BK: jax.Array, idx_BK: jax.Array, num_f: int) -> jax.Array:
  """(vals_BK, idx_BK) -> dense [B, F] codes (indices within a row are distinct)."""
  rows_BK = jnp.broadcast_to(jnp.arange(vals_BK.shape[0])[:, None], idx_BK.shape)
  return jnp.zeros((vals_BK.shape[0], num_f), vals_BK.dtype).at[rows_BK, idx_BK].add(vals_BK)


@jax.custom_vjp
def sparse_decode(w_dec_FD: jax.Array, idx_BK: jax.Array, vals_BK: jax.Array) -> jax.Array:
  """sum_k vals[b, k] * w_dec[idx[b, k]]: [B, D] without b_dec, from K active latents per row.

  The forward gathers K decoder rows per row (B*K*D work instead of the dense B*F*D), one slot at a
  time: a ``fori_loop`` over the K slots, each gathering B rows, is several times faster on XLA:CPU
  than one [B, K, D] gather (JAX_NOTES.md). The custom backward returns d vals by the same loop and
  dW_dec as one dense matmul of the scattered codes with the upstream gradient, since autodiff's
  scatter-add of B*K rows is the slow part on CPU and a matmul is not.
  """
  def body(j, acc_BD):
    return acc_BD + vals_BK[:, j, None] * jnp.take(w_dec_FD, idx_BK[:, j], axis=0, mode="clip")

  zeros_BD = jnp.zeros((vals_BK.shape[0], w_dec_FD.shape[1]), jnp.result_type(vals_BK, w_dec_FD))
  return jax.lax.fori_loop(0, idx_BK.shape[1], body, zeros_BD)


def _sparse_decode_fwd(w_dec_FD, idx_BK, vals_BK):
  return sparse_decode(w_dec_FD, idx_BK, vals_BK), (w_dec_FD, idx_BK, vals_BK)


def _sparse_decode_bwd(res, g_BD):
  w_dec_FD, idx_BK, vals_BK = res
  def body(j, d_BK):
    row_BD = jnp.take(w_dec_FD, idx_BK[:, j], axis=0, mode="clip")
    return d_BK.at[:, j].set(jnp.sum(g_BD * row_BD, axis=1))

  d_vals_BK = jax.lax.fori_loop(0, idx_BK.shape[1], body, jnp.zeros(vals_BK.shape, g_BD.dtype))
  d_w_FD = scatter_codes(vals_BK, idx_BK, w_dec_FD.shape[0]).T @ g_BD
  return d_w_FD, None, d_vals_BK


sparse_decode.defvjp(_sparse_decode_fwd, _sparse_decode_bwd)


def _batch_topk(pre_BF: jax.Array, k: int) -> jax.Array:
  """Keeps the k*B largest entries of the whole batch (ties: lax.top_k order), zeros elsewhere."""
  b, f = pre_BF.shape
  flat = pre_BF.reshape(-1)
  vals, idx = jax.lax.top_k(flat, min(k * b, b * f))
  return jnp.zeros_like(flat).at[idx].set(vals).reshape(b, f)


def encode(params: Params, x_BD: jax.Array, cfg: SaeConfig, *, train: bool = False,
           alpha: jax.Array | float | None = None, threshold: jax.Array | float | None = None) -> Codes:
  """Encodes normalised rows.

  Args:
    params: SAE parameters.
    x_BD: [B, D] normalised inputs.
    cfg: the SAE config (static).
    train: training-mode selection (SoftSAE: soft top-k with ``alpha``; BatchTopK/Matryoshka: batch
      top-k); False is inference (SoftSAE: hard top-floor(k-hat); BatchTopK/Matryoshka: ``threshold``).
    alpha: soft top-k Laplace scale, required for ``softsae`` with ``train=True``.
    threshold: inference threshold for ``batchtopk``/``matryoshka``.

  Returns:
    Codes(pre_BF, acts_BF, k_B): ``k_B`` is k-hat for SoftSAE, the per-row count of active latents
    otherwise.

  Examples:
    >>> cfg = SaeConfig(arch="topk", d_in=8, n_latents=32, k=4)
    >>> p = init_params(jax.random.key(0), cfg)
    >>> c = encode(p, jnp.ones((2, 8)), cfg)
    >>> int((c.acts_BF > 0).sum(axis=1).max()) <= 4
    True
  """
  if x_BD.ndim != 2 or x_BD.shape[1] != cfg.d_in:
    raise ValueError(f"x_BD must be [B, D={cfg.d_in}], got {x_BD.shape}")
  pre_BF = pre_acts(params, x_BD, cfg)
  arch = cfg.arch
  if arch == "softsae":
    k_B = estimate_k(params, x_BD, cfg)
    if train:
      if alpha is None:
        raise ValueError("Expected alpha for softsae training-mode encode, got None")
      scores_BF = pre_BF if cfg.soft_grad == "faithful" else jax.lax.stop_gradient(pre_BF)
      weights_BF = soft_topk(scores_BF, k_B, alpha, max_k=cfg.kmax)
      acts_BF = pre_BF * weights_BF
    else:
      acts_BF = hard_topk(pre_BF, jnp.floor(k_B), max_k=cfg.kmax)
    return Codes(pre_BF, acts_BF, k_B)
  if arch == "topk":
    k_B = jnp.full(pre_BF.shape[:1], float(cfg.k), jnp.float32)
    acts_BF = hard_topk(pre_BF, k_B, max_k=cfg.k)
  elif arch in ("batchtopk", "matryoshka"):
    if train:
      acts_BF = _batch_topk(pre_BF, cfg.k)
    else:
      if threshold is None:
        raise ValueError(f"Expected an inference threshold for {arch}, got None")
      acts_BF = jnp.where(pre_BF > threshold, pre_BF, 0.0)
  elif arch == "relu":
    acts_BF = pre_BF
  else:  # config validation makes this unreachable
    raise ValueError(f"Expected a known arch, got {arch!r}")
  return Codes(pre_BF, acts_BF, (acts_BF > 0).sum(axis=1).astype(jnp.float32))


def decode(params: Params, acts_BF: jax.Array, cfg: SaeConfig | None = None) -> jax.Array:
  """acts @ W_dec + b_dec: [B, F] -> [B, D]."""
  cd = jnp.dtype(cfg.compute_dtype) if cfg is not None else jnp.float32
  recon_BD = jnp.matmul(acts_BF.astype(cd), params.w_dec.astype(cd), preferred_element_type=jnp.float32)
  return recon_BD + params.b_dec[None, :]


def forward(params: Params, x_BD: jax.Array, cfg: SaeConfig, **kw) -> tuple[jax.Array, Codes]:
  """encode then decode; keyword arguments go to :func:`encode`."""
  codes = encode(params, x_BD, cfg, **kw)
  return decode(params, codes.acts_BF, cfg), codes
