"""Ways to form a k-sparse weight gradient codes^T @ rows on XLA:CPU, against the dense matmul.

Run:  python benchmarks/grad_scatter.py [--d 768] [--f 16384] [--k 64] [--batch 1024] [--rounds 5]
      (about 30 s on one core)

The TopK step's weight gradients are dW_dec = codes^T g ([F, D]) and dW_enc = x^T dpre ([D, F]),
where codes / dpre hold k nonzeros per row. Timed here, interleaved, at the step's shapes:

* ``dense``: scatter the codes into [B, F], then one [F, B] x [B, D] matmul (the ``sae.sparse_grads=off``
  dW_dec), and x^T codes for dW_enc;
* ``slot loop``: :func:`softsae_jax.sae.scatter_rows`, a ``fori_loop`` over the k slots, each
  scatter-adding B scaled rows into the [F, D] carry (what ``sae.sparse_grads=on`` uses); for dW_enc
  followed by the [F, D] -> [D, F] transpose;
* ``slot loop, unroll 4``: the same loop unrolled by 4;
* ``one scatter``: one scatter-add of all B*k scaled rows (a [B*k, D] intermediate);
* ``sorted segment_sum``: sort the B*k indices, gather and scale the rows, ``segment_sum`` them;
* ``slot loop into [D, F] columns``: scatter-adding columns of the [D, F] gradient directly.

Every variant is checked against the dense result; the table gives median milliseconds and the
ratio to one dense [B, d] x [d, F] matmul. Writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _host import header, interleaved_medians, shape_args  # noqa: E402


def variants(d: int, f: int, k: int, b: int) -> dict:
  """{name: (jitted fn, args, reference name)}; "unit" is the dense [B, d] x [d, F] matmul."""
  from softsae_jax.sae import scatter_codes, scatter_rows

  rng = np.random.default_rng(0)
  x_BD = jnp.asarray(rng.normal(size=(b, d)).astype(np.float32))
  w_DF = jnp.asarray(rng.normal(size=(d, f)).astype(np.float32))
  vals_BK, idx_BK = jax.lax.top_k(jnp.asarray(rng.normal(size=(b, f)).astype(np.float32)), k)

  def unrolled(v, i, r):
    def body(j, acc_FD):
      return acc_FD.at[i[:, j]].add(v[:, j, None] * r)
    return jax.lax.fori_loop(0, k, body, jnp.zeros((f, d), r.dtype), unroll=4)

  def one_scatter(v, i, r):
    upd = (v[:, :, None] * r[:, None, :]).reshape(-1, d)
    return jnp.zeros((f, d), r.dtype).at[i.reshape(-1)].add(upd)

  def sorted_segment_sum(v, i, r):
    flat = i.reshape(-1)
    order = jnp.argsort(flat)
    upd = v.reshape(-1)[order][:, None] * r[order // k]
    return jax.ops.segment_sum(upd, flat[order], num_segments=f, indices_are_sorted=True)

  def columns(v, i, r):
    r_DB = r.T
    def body(j, acc_DF):
      return acc_DF.at[:, i[:, j]].add(r_DB * v[None, :, j])
    return jax.lax.fori_loop(0, k, body, jnp.zeros((d, f), r.dtype))

  dec = (vals_BK, idx_BK, x_BD)
  out = {
      "dW_dec dense: scatter codes, codes^T g": (lambda v, i, r: scatter_codes(v, i, f).T @ r, dec, None),
      "dW_dec slot loop (scatter_rows)": (lambda v, i, r: scatter_rows(v, i, r, f), dec, "dec"),
      "dW_dec slot loop, unroll 4": (unrolled, dec, "dec"),
      "dW_dec one scatter ([B*k, D] rows)": (one_scatter, dec, "dec"),
      "dW_dec sorted segment_sum": (sorted_segment_sum, dec, "dec"),
      "dW_enc dense: scatter dpre, x^T dpre": (lambda v, i, r: r.T @ scatter_codes(v, i, f), dec, None),
      "dW_enc slot loop, then transpose": (lambda v, i, r: scatter_rows(v, i, r, f).T, dec, "enc"),
      "dW_enc slot loop into [D, F] columns": (columns, dec, "enc"),
      "unit: one [B, d] x [d, F] matmul": (lambda x, w: x @ w, (x_BD, w_DF), None),
  }
  return {name: (jax.jit(fn), args, ref) for name, (fn, args, ref) in out.items()}


def measure(d: int, f: int, k: int, b: int, rounds: int) -> dict[str, float]:
  """Median seconds per variant over interleaved rounds, after checking each against the dense one."""
  vs = variants(d, f, k, b)
  refs = {"dec": np.asarray(vs["dW_dec dense: scatter codes, codes^T g"][0](*vs["dW_dec dense: scatter codes, codes^T g"][1])),
          "enc": np.asarray(vs["dW_enc dense: scatter dpre, x^T dpre"][0](*vs["dW_enc dense: scatter dpre, x^T dpre"][1]))}
  for name, (fn, args, ref) in vs.items():
    out = np.asarray(fn(*args))
    if ref is not None:
      err = np.abs(out - refs[ref]).max() / max(np.abs(refs[ref]).max(), 1e-30)
      if err > 1e-5:
        raise AssertionError(f"{name}: max relative error {err:.2e} against the dense gradient")
  # the checks above were every variant's warm-up call
  return interleaved_medians({name: (fn, args) for name, (fn, args, _) in vs.items()}, rounds, warmup=False)


def table(res: dict[str, float]) -> list[str]:
  unit = res["unit: one [B, d] x [d, F] matmul"]
  lines = ["| variant | ms | matmul units |", "|---|---|---|"]
  lines += [f"| {name} | {1e3 * t:.1f} | {t / unit:.3f} |" for name, t in res.items()]
  return lines


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  shape_args(ap)
  a = ap.parse_args()
  print(header(f"d={a.d} F={a.f} k={a.k} B={a.batch} float32", f"{a.rounds} interleaved rounds"), flush=True)
  print("\n".join(table(measure(a.d, a.f, a.k, a.batch, a.rounds))))


if __name__ == "__main__":
  main()
