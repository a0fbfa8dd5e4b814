"""Building blocks shared by the SAE family: pure functions over :class:`~softsae_jax.types.Params`.

Every architecture has a ReLU encoder over ``x - b_dec``, unit-norm decoder atoms (rows of
``w_dec``) and ``b_dec`` added back after decoding (docs/method.md §2). What differs between
architectures (their own parameters, selection rule, loss terms, inference rule) is one entry of the
table in :mod:`softsae_jax.archs`, which also holds the public ``init_params`` / ``encode`` /
``forward``. Inputs here are in *normalised* units (raw activations divided by the norm factor); see
:mod:`softsae_jax.evaluate` for raw-unit inference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from softsae_jax.config import SaeConfig
from softsae_jax.topk import top_k
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
  vals_BK, idx_BK = top_k(pre_BF, max_k)
  return _below_count(vals_BK, k_B), idx_BK


def _below_count(vals_BK: jax.Array, k_B: jax.Array) -> jax.Array:
  """``vals_BK`` with the ranks at or beyond each row's floor(k_B) set to 0."""
  keep_BK = jnp.arange(vals_BK.shape[1])[None, :] < jnp.floor(k_B)[:, None]
  return jnp.where(keep_BK, vals_BK, 0.0)


def scatter_codes(vals_BK: jax.Array, idx_BK: jax.Array, num_f: int) -> jax.Array:
  """(vals_BK, idx_BK) -> dense [B, F] codes (indices within a row are distinct)."""
  rows_BK = jnp.broadcast_to(jnp.arange(vals_BK.shape[0])[:, None], idx_BK.shape)
  return jnp.zeros((vals_BK.shape[0], num_f), vals_BK.dtype).at[rows_BK, idx_BK].add(vals_BK)


def sparse_grads_on(cfg: SaeConfig) -> bool:
  """Whether ``sae.sparse_grads`` asks for the sparse weight gradients: "on", "off", or "auto" (on where
  the default backend is the CPU, where they measured faster: docs/benchmarks.md)."""
  if cfg.sparse_grads == "auto":
    return jax.default_backend() == "cpu"
  return cfg.sparse_grads == "on"


def scatter_rows(vals_BK: jax.Array, idx_BK: jax.Array, rows_BD: jax.Array, num_f: int) -> jax.Array:
  """[F, D] with row f = sum over (b, j) with idx[b, j] = f of vals[b, j] * rows[b].

  ``codes^T @ rows`` for the codes ``scatter_codes(vals_BK, idx_BK, F)`` without the dense [B, F] codes
  or the B*F*D matmul: a ``fori_loop`` over the K slots, each scatter-adding B scaled rows into the
  [F, D] carry (B*K*D work, never a [B*K, D] intermediate). On XLA:CPU at B = 1024, D = 768,
  F = 16384, K = 64 it took 0.15 of the dense matmul's time; one scatter of all B*K rows took 2.2x
  and a sorted ``segment_sum`` 2.4x the loop's time (benchmarks/grad_scatter.py, docs/benchmarks.md).
  """
  def body(j, acc_FD):
    return acc_FD.at[idx_BK[:, j]].add(vals_BK[:, j, None] * rows_BD)

  zeros_FD = jnp.zeros((num_f, rows_BD.shape[1]), jnp.result_type(vals_BK, rows_BD))
  return jax.lax.fori_loop(0, idx_BK.shape[1], body, zeros_FD)


def _gather_sum(w_FD: jax.Array, idx_BK: jax.Array, vals_BK: jax.Array) -> jax.Array:
  """sum_j vals[b, j] * w[idx[b, j]]: [B, D], one slot at a time (a gather of B rows per slot)."""
  def body(j, acc_BD):
    return acc_BD + vals_BK[:, j, None] * jnp.take(w_FD, idx_BK[:, j], axis=0, mode="clip")

  zeros_BD = jnp.zeros((vals_BK.shape[0], w_FD.shape[1]), jnp.result_type(vals_BK, w_FD))
  return jax.lax.fori_loop(0, idx_BK.shape[1], body, zeros_BD)


def sparse_decode(w_dec_FD: jax.Array, idx_BK: jax.Array, vals_BK: jax.Array, *,
                  sparse_grad: bool = False) -> jax.Array:
  """sum_k vals[b, k] * w_dec[idx[b, k]]: [B, D] without b_dec, from K active latents per row.

  The forward gathers K decoder rows per row (B*K*D work instead of the dense B*F*D), one slot at a
  time: a ``fori_loop`` over the K slots, each gathering B rows, is several times faster on XLA:CPU
  than one [B, K, D] gather. The custom backward returns d vals by the same loop, and
  dW_dec either as one dense matmul of the scattered codes with the upstream gradient
  (``sparse_grad=False``) or by :func:`scatter_rows` (``sparse_grad=True``, B*K*D work; what
  ``sae.sparse_grads`` selects). Autodiff's own scatter-add of B*K rows is the slow option on CPU.
  """
  return _sparse_decode(w_dec_FD, idx_BK, vals_BK, sparse_grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sparse_decode(w_dec_FD, idx_BK, vals_BK, sparse_grad):
  del sparse_grad
  return _gather_sum(w_dec_FD, idx_BK, vals_BK)


def _sparse_decode_fwd(w_dec_FD, idx_BK, vals_BK, sparse_grad):
  return _sparse_decode(w_dec_FD, idx_BK, vals_BK, sparse_grad), (w_dec_FD, idx_BK, vals_BK)


def _sparse_decode_bwd(sparse_grad, res, g_BD):
  w_dec_FD, idx_BK, vals_BK = res
  def body(j, d_BK):
    row_BD = jnp.take(w_dec_FD, idx_BK[:, j], axis=0, mode="clip")
    return d_BK.at[:, j].set(jnp.sum(g_BD * row_BD, axis=1))

  d_vals_BK = jax.lax.fori_loop(0, idx_BK.shape[1], body, jnp.zeros(vals_BK.shape, g_BD.dtype))
  if sparse_grad:
    d_w_FD = scatter_rows(vals_BK, idx_BK, g_BD, w_dec_FD.shape[0])
  else:
    d_w_FD = scatter_codes(vals_BK, idx_BK, w_dec_FD.shape[0]).T @ g_BD
  return d_w_FD.astype(w_dec_FD.dtype), None, d_vals_BK


_sparse_decode.defvjp(_sparse_decode_fwd, _sparse_decode_bwd)


def topk_encode(params: Params, x_BD: jax.Array, k_B: jax.Array, max_k: int,
                cfg: SaeConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``pre_acts`` and ``topk_sparse`` of it in one: (pre_BF, vals_BK, idx_BK), with a sparse backward.

  The same values as ``topk_sparse(pre_acts(params, x_BD, cfg), k_B, max_k)``. The gradient reaching
  the encoder through ``vals_BK`` is k-sparse per row, so the backward forms dW_enc (as its [F, D]
  transpose, by :func:`scatter_rows`), d b_enc, d b_dec and d x from the B*K selected entries (B*K*D
  work) instead of a dense [B, F] gradient and two B*F*D matmuls. ``pre_BF`` stays differentiable (AuxK
  reads it): its cotangent is added densely, under a ``cond`` that skips the dense matmuls when it is
  zero everywhere (no dead latent this step). Gradients are float32 whatever ``cfg.compute_dtype``.
  """
  pre_BF, top_BK, idx_BK = encode_top(params, x_BD, max_k, cfg)
  return pre_BF, _below_count(top_BK, k_B), idx_BK


def encode_top(params: Params, x_BD: jax.Array, num: int,
               cfg: SaeConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``pre_acts`` and its ``num`` largest entries per row, ``(pre_BF, top_BN, idx_BN)`` =
  ``(pre, *lax.top_k(pre, num))``, with :func:`topk_encode`'s sparse backward: the cotangent of
  ``top_BN`` reaches the encoder's weights by B*num*D scatter-adds, that of ``pre_BF`` by the dense
  matmuls only on steps where it is nonzero. SoftSAE's soft phase uses it with its M soft top-k
  candidates (:func:`softsae_jax.topk.soft_topk_candidates`)."""
  return _topk_encode(x_BD, params.w_enc, params.b_enc, params.b_dec, num, cfg.compute_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _topk_encode(x_BD, w_enc_DF, b_enc_F, b_dec_D, max_k, dtype):
  pre_BF = jax.nn.relu(affine(x_BD, b_dec_D, w_enc_DF, b_enc_F, dtype))
  top_BK, idx_BK = top_k(pre_BF, max_k)
  return pre_BF, top_BK, idx_BK


def _topk_encode_fwd(x_BD, w_enc_DF, b_enc_F, b_dec_D, max_k, dtype):
  pre_BF, top_BK, idx_BK = _topk_encode(x_BD, w_enc_DF, b_enc_F, b_dec_D, max_k, dtype)
  return (pre_BF, top_BK, idx_BK), (x_BD, w_enc_DF, b_dec_D, pre_BF, top_BK, idx_BK)


def _topk_encode_bwd(max_k, dtype, res, cts):
  del max_k, dtype
  x_BD, w_enc_DF, b_dec_D, pre_BF, top_BK, idx_BK = res
  d_pre_BF, d_top_BK, _ = cts
  num_f = w_enc_DF.shape[1]
  xc_BD = x_BD.astype(jnp.float32) - b_dec_D[None, :]
  # ReLU: a selected entry passes its gradient only where it is positive (jax.nn.relu's gradient at 0 is 0).
  g_BK = jnp.where(top_BK > 0, d_top_BK, 0.0).astype(jnp.float32)
  d_w_DF = scatter_rows(g_BK, idx_BK, xc_BD, num_f).T
  d_b_F = jnp.zeros((num_f,), jnp.float32).at[idx_BK.reshape(-1)].add(g_BK.reshape(-1))
  d_x_BD = _gather_sum(w_enc_DF.T, idx_BK, g_BK)

  def add_dense(acc):
    d_w_DF, d_b_F, d_x_BD = acc
    g_BF = jnp.where(pre_BF > 0, d_pre_BF, 0.0).astype(jnp.float32)
    return d_w_DF + xc_BD.T @ g_BF, d_b_F + g_BF.sum(axis=0), d_x_BD + g_BF @ w_enc_DF.T

  d_w_DF, d_b_F, d_x_BD = jax.lax.cond(jnp.any(d_pre_BF != 0), add_dense, lambda acc: acc,
                                       (d_w_DF, d_b_F, d_x_BD))
  d_b_dec_D = -(w_enc_DF.astype(jnp.float32) @ d_b_F)
  return d_x_BD.astype(x_BD.dtype), d_w_DF.astype(w_enc_DF.dtype), d_b_F, d_b_dec_D


_topk_encode.defvjp(_topk_encode_fwd, _topk_encode_bwd)


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
