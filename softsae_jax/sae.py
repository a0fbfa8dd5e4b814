"""Building blocks shared by the SAE family: pure functions over :class:`~softsae_jax.types.Params`.

Every architecture has a ReLU encoder over ``x - b_dec``, unit-norm decoder atoms (rows of
``w_dec``) and ``b_dec`` added back after decoding (docs/method.md §2). What differs between
architectures (their own parameters, selection rule, loss terms, inference rule) is one entry of the
table in :mod:`softsae_jax.archs`, which also holds the public ``init_params`` / ``encode`` /
``forward``. Inputs here are in *normalised* units (raw activations divided by the norm factor); see
:mod:`softsae_jax.evaluate` for raw-unit inference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from softsae_jax.config import SaeConfig
from softsae_jax.types import Params

_EPS32 = float(jnp.finfo(jnp.float32).eps)


def init_core(key: jax.Array, cfg: SaeConfig) -> Params:
  """The four parameters every architecture has (docs/method.md §2.1), ``extra=None``.

  Decoder atoms (rows of ``w_dec`` [F, D]) start as torch's default Linear init U(-1/sqrt(F),
  1/sqrt(F)) normalised to unit L2 norm; ``w_enc`` is its transpose; ``b_enc`` and ``b_dec`` are 0
  (the trainer sets ``b_dec`` to the geometric median of the first batch).

  Examples:
    >>> cfg = SaeConfig(arch="topk", d_in=8, n_latents=32, k=4)
    >>> p = init_core(jax.random.key(0), cfg)
    >>> p.w_dec.shape, p.w_enc.shape, p.extra
    ((32, 8), (8, 32), None)
  """
  d, f = cfg.d_in, cfg.F
  if d is None:
    raise ValueError("Expected cfg.d_in to be set (resolve the config against the data first), got None")
  bound = 1.0 / jnp.sqrt(f)
  w_dec_FD = jax.random.uniform(key, (f, d), jnp.float32, -bound, bound)
  w_dec_FD = w_dec_FD / (jnp.linalg.norm(w_dec_FD, axis=1, keepdims=True) + _EPS32)
  return Params(w_enc=w_dec_FD.T, b_enc=jnp.zeros((f,), jnp.float32), w_dec=w_dec_FD,
                b_dec=jnp.zeros((d,), jnp.float32))


def affine(x_BD, b_dec_D, w_DF, b_F, dtype):
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
  return jax.nn.relu(affine(x_BD, params.b_dec, params.w_enc, params.b_enc, cfg.compute_dtype))


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


def batch_topk(pre_BF: jax.Array, k: int, count: jax.Array | None = None) -> jax.Array:
  """Keeps the k*B largest entries of the whole batch (ties: lax.top_k order), zeros elsewhere.

  ``count``: a traced k <= ``k`` (a sweep member's own, or k per valid row): the round(count*B)
  largest are kept (rounded: count*B is an integer that float32 may miss by an ulp).
  """
  b, f = pre_BF.shape
  flat = pre_BF.reshape(-1)
  vals, idx = jax.lax.top_k(flat, min(k * b, b * f))
  if count is not None:
    vals = jnp.where(jnp.arange(vals.shape[0]) < jnp.round(count * b), vals, 0.0)
  return jnp.zeros_like(flat).at[idx].set(vals).reshape(b, f)


def decode(params: Params, acts_BF: jax.Array, cfg: SaeConfig | None = None) -> jax.Array:
  """acts @ W_dec + b_dec: [B, F] -> [B, D]."""
  cd = jnp.dtype(cfg.compute_dtype) if cfg is not None else jnp.float32
  recon_BD = jnp.matmul(acts_BF.astype(cd), params.w_dec.astype(cd), preferred_element_type=jnp.float32)
  return recon_BD + params.b_dec[None, :]
