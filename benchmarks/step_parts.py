"""Where the train step's time goes: its pieces timed one by one, against the whole step.

Run:  python benchmarks/step_parts.py [--d 768] [--f 16384] [--k 64] [--batch 1024] [--rounds 5]
      [--sparse-grads auto|on|off] [--sparse-soft true|false]
      (about 2 minutes on a 2-core CPU; ``--archs topk`` for one arch)

Why pieces and not a trace: on XLA:CPU the profiler's per-op events do not hold a dot's time (dots
are dispatched asynchronously; see ``profile_ops`` in benchmarks/accelerator.py, which is the tool on
a GPU or TPU). Here each piece is its own jitted function at the step's shapes, built from the
library's functions (softsae_jax.sae, .topk, .optim), so its time is what the step would spend if XLA
fused nothing across pieces; "rest" is the step less the sum of the pieces (negative when fusion across
pieces saves time).

TopK pieces: the encoder forward (x W_enc, ReLU), ``lax.top_k``, the sparse decoder's forward (gathers
of k rows per token) and backward (d values by gathers; dW_dec as a dense matmul of the scattered
codes, or by per-slot scatter-adds with ``sae.sparse_grads`` on), the scatter of the codes into [B, F],
the encoder's weight gradient (dense dW_enc = x^T dpre, or ``sae.topk_encode``'s sparse backward),
the optimizer (Adam, decoder-gradient projection, unit-norm decoder), and the bookkeeping after the
update (dead-latent counter, L0 and metrics). SoftSAE's soft phase, dense (``--sparse-soft false``, or
``sae.sparse_grads`` off): the encoder forward, the k-estimator's forward and backward, the soft top-k's
forward and backward, the dense decoder's forward and backward (3 matmuls), dW_enc, the optimizer and
the bookkeeping. From its M = k_max + 16 candidates (``sae.sparse_soft``, the default with sparse
gradients; the batch's tail must be negligible, else the script stops): the encoder forward with
``lax.top_k`` of M, the k-estimator, the soft top-k on the candidates (forward and backward, [B, M]),
the full weights the statistics read (one [B, F] pass), the sparse decode over M slots (forward and
backward), the encoder's backward from the M candidates, the optimizer and the bookkeeping.

All pieces and the whole step run in interleaved rounds; the table gives median times and their
share of the median step. The unit row: one dense [B, d] x [d, F] float32 matmul. Writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _steps  # noqa: E402
from _host import header, interleaved_medians, load, shape_args  # noqa: E402


def pieces(arch: str, d: int, f: int, k: int, b: int, sparse_grads: str = "auto", sparse_soft: bool = True) -> dict:
  """{name: (jitted fn, args)} of the step's pieces, plus "whole step" (a closure, no args)."""
  import optax

  from softsae_jax import archs, losses
  from softsae_jax import sae as sae_lib
  from softsae_jax import topk as topk_lib
  from softsae_jax.optim import unit_norm_decoder
  from softsae_jax.sae import decode, pre_acts, scatter_codes, sparse_decode, topk_sparse
  from softsae_jax.topk import soft_topk

  step = _steps.build(arch, d, f, k, b, overrides=(f"sae.sparse_grads={sparse_grads}",
                                                   f"sae.sparse_soft={str(sparse_soft).lower()}"))
  sae = step.cfg.sae
  sparse = sae_lib.sparse_grads_on(sae)
  candidates = arch == "softsae" and archs._soft_candidates_on(sae, None)
  # Copies: the whole step donates (deletes) the state it is given.
  params, opt_state, since_F = jax.tree.map(lambda a: a.copy(), (step.state.params, step.state.opt_state,
                                                                  step.state.since_fired_F))
  x_BD = jnp.asarray(_steps.inputs(b, d)) / step.state.norm_factor
  rng = np.random.default_rng(1)
  g_BD = jnp.asarray(rng.normal(size=(b, d)).astype(np.float32))
  valid_B = jnp.ones((b,), jnp.float32)
  pre_BF = jax.jit(lambda p, x: pre_acts(p, x, sae))(params, x_BD)
  out = {"encoder forward (x W_enc, ReLU)": (jax.jit(lambda p, x: pre_acts(p, x, sae)), (params, x_BD))}
  grads = jax.tree.map(lambda a: a * 1e-3, params)

  def bookkeeping(acts_BF, since_F, x_BD, recon_BD):
    fired_F = jnp.any(acts_BF != 0, axis=0)
    since_F = jnp.where(fired_F, 0, since_F + b)
    l0_B = (acts_BF != 0).sum(axis=1).astype(jnp.float32)
    return since_F, l0_B.mean(), losses.fvu(x_BD, recon_BD, valid_B), losses.recon_loss(x_BD, recon_BD, valid_B)

  def optimizer(grads, opt_state, params):
    updates, opt_state = step.tx.update(grads, opt_state, params)
    return unit_norm_decoder(optax.apply_updates(params, updates)), opt_state

  if arch == "topk":
    k_B = jnp.full((b,), float(k))
    vals_BK, idx_BK = jax.jit(lambda p: topk_sparse(p, k_B, k))(pre_BF)
    acts_BF = jax.jit(lambda v, i: scatter_codes(v, i, f))(vals_BK, idx_BK)
    dpre_BF = acts_BF * 1e-3
    dw = "dW_dec by scatter-adds" if sparse else "dW_dec dense"
    out.update({
        f"lax.top_k (k={k})": (jax.jit(lambda p: topk_sparse(p, k_B, k)), (pre_BF,)),
        "sparse decode forward (gathers)": (jax.jit(sparse_decode), (params.w_dec, idx_BK, vals_BK)),
        f"sparse decode backward (d vals, {dw})": (
            jax.jit(lambda w, i, v, g: jax.vjp(lambda w, v: sparse_decode(w, i, v, sparse_grad=sparse), w, v)[1](g)),
            (params.w_dec, idx_BK, vals_BK, g_BD)),
        "scatter codes into [B, F]": (jax.jit(lambda v, i: scatter_codes(v, i, f)), (vals_BK, idx_BK)),
    })
    if sparse:  # the encoder's backward from the k selected entries (sae.topk_encode), AuxK's cotangent 0
      d_vals_BK = vals_BK * 1e-3

      def enc_bwd(x, w_enc, b_dec, pre, top, idx, d_pre, d_top):
        res = (x, w_enc, b_dec, pre, top, idx)
        return sae_lib._topk_encode_bwd(k, sae.compute_dtype, res, (d_pre, d_top, None))[1:]

      out["encoder backward: sparse (dW_enc, d b_enc, d b_dec by scatter-adds)"] = (
          jax.jit(enc_bwd), (x_BD, params.w_enc, params.b_dec, pre_BF, vals_BK, idx_BK, jnp.zeros_like(pre_BF),
                             d_vals_BK))
  elif candidates:  # the soft phase from the soft top-k's M candidates (sae.sparse_soft; its tail negligible)
    num_m = topk_lib._candidate_count(sae.kmax, f)
    k_B = jax.jit(lambda p, x: archs.estimate_k(p, x, sae))(params, x_BD)
    enc_top = jax.jit(lambda p, x: sae_lib.encode_top(p, x, num_m, sae))
    _, top_BM, idx_BM = enc_top(params, x_BD)
    cands = jax.jit(lambda s, t, i, kb: topk_lib.soft_topk_candidates(s, kb, sae.alpha, max_k=sae.kmax, top=(t, i),
                                                                      full_weights=True))
    c = cands(pre_BF, top_BM, idx_BM, k_B)
    if not bool(c.exact & jnp.all(c.tail_negligible | (jnp.min(top_BM, axis=1) <= 0))):  # as archs
      raise RuntimeError("the soft top-k's tail takes part on this batch: the step takes the dense phase")
    acts_BF = pre_BF * c.full
    acts_BM = top_BM * c.w
    v_BM = jnp.asarray(rng.normal(size=(b, num_m)).astype(np.float32))
    # The step hands the estimator its candidates (top_acts reads them; the x estimator ignores them).
    est_grad = jax.jit(jax.value_and_grad(
        lambda e, x, t: jnp.sum(archs.estimate_k(params._replace(extra=e), x, sae, top_BM=t))))

    def enc_bwd(x, w_enc, b_dec, pre, top, idx, d_pre, d_top):
      res = (x, w_enc, b_dec, pre, top, idx)
      return sae_lib._topk_encode_bwd(num_m, sae.compute_dtype, res, (d_pre, d_top, None))

    soft_grad = jax.jit(jax.value_and_grad(
        lambda t, kb, s, i, v: jnp.sum(topk_lib.soft_topk_candidates(
            s, kb, sae.alpha, max_k=sae.kmax, top=(jax.lax.stop_gradient(t), i)).w * v), argnums=(0, 1)))
    del out["encoder forward (x W_enc, ReLU)"]  # part of the next piece
    out.update({
        f"encoder forward + lax.top_k (M={num_m} candidates)": (enc_top, (params, x_BD)),
        f"k-estimator forward + backward (sae.k_input={sae.k_input})": (est_grad, (params.extra, x_BD, top_BM)),
        f"soft top-k on the candidates forward + backward (alpha={sae.alpha:g}, M={num_m})": (
            soft_grad, (top_BM, k_B, pre_BF, idx_BM, v_BM)),
        "full weights for the statistics (pre * w over [B, F])": (
            jax.jit(lambda s, t, i, kb: s * cands(s, t, i, kb).full), (pre_BF, top_BM, idx_BM, k_B)),
        "sparse decode over M forward + backward (gathers; dW_dec by scatter-adds)": (
            jax.jit(lambda w, i, v, g: jax.vjp(lambda w, v: sparse_decode(w, i, v, sparse_grad=True), w, v)[1](g)),
            (params.w_dec, idx_BM, acts_BM, g_BD)),
        "encoder backward from the M candidates (dW_enc, d b_enc, d b_dec, d x by scatter-adds)": (
            jax.jit(enc_bwd), (x_BD, params.w_enc, params.b_dec, pre_BF, top_BM, idx_BM, jnp.zeros_like(pre_BF),
                               acts_BM * 1e-3)),
    })
  else:
    k_B = jax.jit(lambda p, x: archs.estimate_k(p, x, sae))(params, x_BD)
    v_BF = jnp.asarray(rng.normal(size=(b, f)).astype(np.float32))
    acts_BF = pre_BF * jax.jit(lambda s, kb: soft_topk(s, kb, sae.alpha, max_k=sae.kmax))(pre_BF, k_B)
    dpre_BF = v_BF * 1e-3
    est_grad = jax.jit(jax.value_and_grad(lambda e, x: jnp.sum(archs.estimate_k(params._replace(extra=e), x, sae))))
    soft_grad = jax.jit(jax.value_and_grad(
        lambda s, kb, v: jnp.sum(soft_topk(s, kb, sae.alpha, max_k=sae.kmax) * v), argnums=(0, 1)))
    dec_grad = jax.jit(jax.value_and_grad(
        lambda w, a, g: jnp.sum(decode(params._replace(w_dec=w), a, sae) * g), argnums=(0, 1)))
    out.update({
        "k-estimator forward + backward": (est_grad, (params.extra, x_BD)),
        f"soft top-k forward + backward (alpha={sae.alpha:g}, max_k={sae.kmax})": (soft_grad, (pre_BF, k_B, v_BF)),
        "dense decode forward + backward (3 matmuls)": (dec_grad, (params.w_dec, acts_BF, g_BD)),
    })
  recon_BD = x_BD + 0.1 * g_BD
  if not ((arch == "topk" and sparse) or candidates):
    out["encoder backward: dW_enc = x^T dpre (dense)"] = (jax.jit(lambda x, g: x.T @ g), (x_BD, dpre_BF))
  out.update({
      "optimizer (Adam, projection, unit-norm decoder)": (jax.jit(optimizer), (grads, opt_state, params)),
      "bookkeeping (dead counter, L0, FVU, loss)": (jax.jit(bookkeeping),
                                                     (acts_BF, since_F, x_BD, recon_BD)),
  })
  w_DF = jnp.asarray(rng.normal(size=(d, f)).astype(np.float32))
  out["unit: one [B, d] x [d, F] matmul"] = (jax.jit(lambda x, w: x @ w), (x_BD, w_DF))
  out["whole step"] = (_steps.runner(step), ())
  return out


def measure(arch: str, d: int, f: int, k: int, b: int, rounds: int, sparse_grads: str = "auto",
            sparse_soft: bool = True) -> dict[str, float]:
  """Median seconds of each piece and of the whole step over interleaved rounds (after one warm-up)."""
  return interleaved_medians(pieces(arch, d, f, k, b, sparse_grads, sparse_soft), rounds)


def table(res: dict[str, float]) -> list[str]:
  step, unit = res["whole step"], res["unit: one [B, d] x [d, F] matmul"]
  parts = {n: t for n, t in res.items() if n not in ("whole step", "unit: one [B, d] x [d, F] matmul")}
  lines = ["| piece | ms | share of step | in matmul units |", "|---|---|---|---|"]
  for name, t in sorted(parts.items(), key=lambda kv: -kv[1]):
    lines.append(f"| {name} | {1e3 * t:.1f} | {100 * t / step:.0f}% | {t / unit:.2f} |")
  total = sum(parts.values())
  lines += [f"| sum of the pieces | {1e3 * total:.1f} | {100 * total / step:.0f}% | {total / unit:.2f} |",
            f"| rest (step - sum) | {1e3 * (step - total):.1f} | {100 * (step - total) / step:.0f}% | "
            f"{(step - total) / unit:.2f} |",
            f"| **whole step** | {1e3 * step:.1f} | 100% | {step / unit:.2f} |",
            f"| unit: one [B, d] x [d, F] matmul | {1e3 * unit:.1f} | {100 * unit / step:.0f}% | 1.00 |"]
  return lines


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  shape_args(ap)
  ap.add_argument("--archs", default="topk,softsae")
  ap.add_argument("--sparse-grads", default="auto", choices=("auto", "on", "off"), help="sae.sparse_grads")
  ap.add_argument("--sparse-soft", default="true", choices=("true", "false"), help="sae.sparse_soft")
  a = ap.parse_args()
  print(header(f"d={a.d} F={a.f} k={a.k} B={a.batch} float32", f"sae.sparse_grads={a.sparse_grads}",
               f"sae.sparse_soft={a.sparse_soft}", f"{a.rounds} interleaved rounds"), flush=True)
  for arch in a.archs.split(","):
    res = measure(arch, a.d, a.f, a.k, a.batch, a.rounds, a.sparse_grads, a.sparse_soft == "true")
    print(f"\n## {arch} (load after: {load()})\n")
    print("\n".join(table(res)), flush=True)


if __name__ == "__main__":
  main()
