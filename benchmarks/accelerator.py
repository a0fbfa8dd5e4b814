"""Tokens/s, MFU and peak memory of the real train step on one accelerator (GPU/TPU; CPU at small sizes).

Run:  python benchmarks/accelerator.py                 # d=2304 F=65536 k=32 B=8192 bf16, topk and softsae
      python benchmarks/accelerator.py --small         # d=256 F=4096 k=32 B=1024: a CPU check (seconds)
      python benchmarks/accelerator.py --compile-only  # memory and XLA's FLOP count only, nothing run
      python benchmarks/accelerator.py --d 768 --f 16384 --k 64 --batch 1024 --dtype float32 --profile 3
                    # + the top XLA ops of 3 traced steps (any backend; on a CPU pin it to one core:
                    #   taskset -c 0 ..., so that the ops' times add up to the step's)

What is timed: ``make_train_step`` (the jit ``softsae train`` runs: state donated, one device), lowered
and compiled once with ``jax.jit(...).lower(...).compile()``, then ``--warmup`` steps and the median of
``--steps`` steps, each ended by ``block_until_ready``. The batch is float16 rows, as read from
float16 shards (the step casts on device); ``sae.compute_dtype`` is the matmul dtype (``--dtype``).
SoftSAE runs at steady state (the soft phase with alpha and the k budget at their final values).

Printed per arch: step time, tokens/s (B / median step), model FLOPs per token (below), XLA's own count
(``compiled.cost_analysis()["flops"] / B``: what the compiled program holds, dense gradients where the
step computes them densely, and both branches of every ``cond``, so AuxK's and SoftSAE's hard phase
are in it although a steady-state step runs neither: an upper bound), achieved TFLOP/s and
MFU = tokens/s x model FLOPs per token / peak FLOP/s, and memory: ``compiled.memory_analysis()``
(peak = arguments + outputs - donated aliases + temporaries) and, where the backend reports it
(GPU/TPU), the allocator's ``peak_bytes_in_use``.

Model FLOPs per token (2 FLOPs per multiply-add; D = d_in, F = latents, k = active latents;
backward = 2x forward, the usual 6N convention; AuxK is not counted, it runs only when latents are dead):

* ``topk``: forward = encoder 2DF + sparse decoder 2kD (k rows of W_dec gathered per token);
  model FLOPs = 3 x (2DF + 2kD) = 6DF + 6kD.
* ``softsae`` (soft phase): the soft top-k weights every latent, so the decoder is dense: forward =
  encoder 2DF + decoder 2FD + the k-estimator: with the default ``sae.k_input=top_acts`` an
  M -> H -> 1 MLP on the M = min(2k + 16, F) top activations (2MH + 2H, H = 128), model FLOPs =
  3 x (4DF + 2MH + 2H); with the authors' ``k_input=x`` a D -> F -> 1 MLP (2DF + 2F), model FLOPs =
  3 x (6DF + 2F) = 18DF + 6F. (On the CPU the candidates' soft phase decodes from M latents only;
  the convention keeps the architecture's dense decoder, so the CPU's MFU is a lower bound.)
* dense decoders (``batchtopk``, ``matryoshka``, ``relu``, ``jumprelu``): 3 x (2DF + 2FD) = 12DF.

The convention counts the encoder's input gradient, which the step never computes (x is data): the
work the step needs is 2DF per token less (topk, dense archs) or 4DF less (softsae, whose k-estimator's
first layer also reads x). The counts are per token of a batch of B; the O(DF) per-batch terms
(the b_dec shifts) and elementwise work are left out.

Peak FLOP/s: :data:`PEAK_TFLOPS` (dense bf16, by ``device.device_kind``), or ``--peak-tflops``; on a
CPU, MFU is "n/a" unless ``--peak-tflops`` is given. Writes nothing; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import _steps  # noqa: E402
from _host import header  # noqa: E402

# Dense bf16 tensor-core / MXU peak, TFLOP/s per chip (not the 2:4-sparsity figures), matched as a
# substring of device_kind, first match wins. Sources:
#   NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): SXM "BF16 Tensor Core 1,979 TFLOPS*",
#     PCIe 1,513*, * = with sparsity, so 989 and 756 dense;
#   NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): SXM 1,979* -> 989 dense;
#   NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): "BF16 Tensor Core 312 TFLOPS | 624*";
#   Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, .../v5e, .../v5p,
#     .../v6e), "Peak compute per chip (bf16)": v4 275, v5e 197, v5p 459, v6e 918.
# jax's device_kind for v5e and v6e reads "TPU v5 lite" and "TPU v6 lite".
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v6 lite", 918.0),
    ("TPU v6e", 918.0),
)

FULL = dict(d=2304, f=65536, k=32, batch=8192, dtype="bfloat16")
SMALL = dict(d=256, f=4096, k=32, batch=1024, dtype="float32")


def peak_tflops(device_kind: str) -> float | None:
  """Dense bf16 peak of a device kind from :data:`PEAK_TFLOPS`, None when unknown (e.g. a CPU).

  Examples:
    >>> peak_tflops("NVIDIA H100 80GB HBM3"), peak_tflops("TPU v5 lite"), peak_tflops("cpu")
    (989.0, 197.0, None)
  """
  for pattern, tflops in PEAK_TFLOPS:
    if pattern.lower() in device_kind.lower():
      return tflops
  return None


def model_flops_per_token(arch: str, d: int, f: int, k: int, k_input: str = "top_acts", k_hidden: int = 128) -> float:
  """Model FLOPs of one training token (forward + backward = 3 x forward); see the module docstring.
  ``k_input``, ``k_hidden``: SoftSAE's k-estimator (``sae.k_input``, ``sae.k_hidden``).

  Examples:
    >>> model_flops_per_token("topk", 2304, 65536, 32) / 1e9
    0.9064...
  """
  if arch == "topk":
    return 3.0 * (2 * d * f + 2 * k * d)
  if arch == "softsae":
    m = min(2 * k + 16, f)
    estimator = 2 * m * k_hidden + 2 * k_hidden if k_input == "top_acts" else 2 * d * f + 2 * f
    return 3.0 * (4 * d * f + estimator)
  return 3.0 * (4 * d * f)


def _memory(compiled) -> dict[str, float]:
  """Bytes from ``memory_analysis()``: args, out, alias, temp and peak = args + out - alias + temp."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    m = None
  if m is None:
    return {}
  out = {name: float(getattr(m, f"{name}_size_in_bytes", 0) or 0) for name in ("argument", "output", "alias", "temp")}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def _xla_flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
  except Exception:
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  return float(ca["flops"]) if ca and "flops" in ca else None


def _allocator_peak(device) -> float | None:
  try:
    stats = device.memory_stats()
  except Exception:
    return None
  return float(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def measure(arch: str, d: int, f: int, k: int, batch: int, dtype: str = "bfloat16", *, steps: int = 10,
            warmup: int = 3, peak: float | None = None, compile_only: bool = False, profile: int = 0,
            top: int = 15) -> dict:
  """One arch's row: tokens/s, FLOPs, MFU and memory of the compiled step (see the module docstring).

  ``peak``: TFLOP/s of the device (None: :func:`peak_tflops` of its kind). ``compile_only`` lowers and
  compiles on abstract shapes (nothing of the state is allocated) and times nothing. ``profile``: trace
  that many extra steps and add ``ops``, the time per XLA op (:func:`profile_ops`).
  """
  overrides = [f"sae.compute_dtype={dtype}"]
  device = jax.devices()[0]
  peak = peak if peak is not None else peak_tflops(device.device_kind)
  row = {"arch": arch, "d": d, "f": f, "k": k, "batch": batch, "dtype": dtype, "device": device.device_kind,
         "model_flops_per_token": model_flops_per_token(arch, d, f, k), "peak_tflops": peak}
  if compile_only:
    from softsae_jax import config as config_lib
    from softsae_jax import sharding
    from softsae_jax.optim import make_optimizer
    from softsae_jax.train import abstract_state, make_train_step, state_shardings

    ov = [f"sae.arch={arch}", f"sae.n_latents={f}", f"sae.k={k}", f"train.batch_size={batch}", *_steps.STEADY,
          *overrides]
    cfg = config_lib.apply_overrides(config_lib.Config(), ov).resolve(d)
    tx = make_optimizer(cfg)
    mesh = sharding.make_mesh(1, 1)
    rows_sh, mask_sh = sharding.batch_shardings(mesh)
    st = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state(cfg, tx),
                      state_shardings(cfg, tx, mesh))
    t = time.perf_counter()
    compiled = make_train_step(cfg, tx, mesh).lower(
        st, jax.ShapeDtypeStruct((batch, d), np.float16, sharding=rows_sh),
        jax.ShapeDtypeStruct((batch,), np.bool_, sharding=mask_sh)).compile()
  else:
    step = _steps.build(arch, d, f, k, batch, overrides=overrides, x_dtype=np.float16)
    t = time.perf_counter()
    compiled = step.fn.lower(step.state, step.x_BD, step.valid_B).compile()
  row["compile_s"] = time.perf_counter() - t
  row["memory"] = _memory(compiled)
  flops = _xla_flops(compiled)
  row["xla_flops_per_token"] = flops / batch if flops is not None else None
  if compile_only:
    return row

  state = step.state
  for _ in range(warmup):
    state, metrics = compiled(state, step.x_BD, step.valid_B)
  jax.block_until_ready((state, metrics))
  ts = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, step.x_BD, step.valid_B)
    jax.block_until_ready((state, metrics))
    ts.append(time.perf_counter() - t)
  t_step = statistics.median(ts)
  row.update(step_s=t_step, best_s=min(ts), tokens_per_s=batch / t_step,
             loss=float(metrics.loss), allocator_peak=_allocator_peak(device))
  row["tflops"] = row["tokens_per_s"] * row["model_flops_per_token"] / 1e12
  row["mfu"] = row["tflops"] / peak if peak else None
  if profile:
    holder = [state]

    def one():
      holder[0], m = compiled(holder[0], step.x_BD, step.valid_B)
      jax.block_until_ready((holder[0], m))

    row["ops"], row["ops_ms"], row["traced_ms"] = profile_ops(one, profile, compiled.as_text(), top=top)
  return row


# --------------------------------------------------------------------------------------- profile

_HLO_LINE = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|\S+)\s+([\w\-]+)\((.*)$')


def _hlo_labels(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> "jax op path  output shape", from the compiled module's text."""
  labels = {}
  for line in hlo_text.splitlines():
    m = _HLO_LINE.match(line)
    if m:
      shape = re.sub(r"\{[^}]*\}", "", m.group(2))
      op = re.search(r'op_name="([^"]*)"', m.group(4))
      name = re.sub(r"^jit[(][^)]*[)]/", "", op.group(1)) if op else f"({m.group(3)})"
      labels[m.group(1)] = f"{name}  {shape}"
  return labels


def _self_intervals(events: list[dict]) -> list[tuple[str, float, float]]:
  """(hlo_op, start, end) pieces of each op event: its span less the op events nested in it on the same
  line (a while or cond thunk contains its body's)."""
  out = []
  by_tid = collections.defaultdict(list)
  for e in events:
    by_tid[(e.get("pid"), e.get("tid"))].append(e)
  for evs in by_tid.values():
    evs.sort(key=lambda e: (float(e["ts"]), -float(e.get("dur", 0.0))))
    stack: list[list] = []  # [end, op, start of its part not yet emitted]
    for e in evs:
      ts, dur = float(e["ts"]), float(e.get("dur", 0.0))
      while stack and ts >= stack[-1][0]:
        end, op, cur = stack.pop()
        out.append((op, cur, end))
      if stack:
        parent = stack[-1]
        out.append((parent[1], parent[2], ts))
        parent[2] = max(parent[2], ts + dur)
      stack.append([ts + dur, e["args"]["hlo_op"], ts])
    out.extend((op, cur, end) for end, op, cur in stack)
  return [(op, a, b) for op, a, b in out if b > a]


def _op_times(events: list[dict]) -> tuple[collections.Counter, float]:
  """Wall time per op and the time any op ran, from the op events: each op's own pieces
  (:func:`_self_intervals`), an instant shared evenly among the pieces running at it. XLA:CPU's thunk
  executor runs independent thunks on several threads; on one core they take turns, so their spans
  overlap and a plain sum of durations counts the same core time more than once. Shared this way the
  ops add up to the time they kept the device busy, never more than the wall time traced."""
  pieces = _self_intervals(events)
  pts = sorted([(a, 1, i) for i, (_, a, _) in enumerate(pieces)] + [(b, -1, i) for i, (_, _, b) in enumerate(pieces)])
  times, busy, active, last = collections.Counter(), 0.0, set(), None
  for t, kind, i in pts:
    if active and t > last:
      for j in active:
        times[pieces[j][0]] += (t - last) / len(active)
      busy += t - last
    last = t
    (active.add if kind == 1 else active.discard)(i)
  return times, busy


def profile_ops(step, n: int, hlo_text: str, top: int = 15) -> tuple[list[dict], float, float]:
  """Runs ``step()`` ``n`` times under ``jax.profiler``; returns the ``top`` XLA ops by wall time per
  step, [{"op", "ms", "share", "calls", "label"}], the time per step any op ran (ms) and the traced
  steps' own wall time per step (ms).

  Read from the trace's XSpace (``jax.profiler.ProfileData``): every event named after an instruction
  of the compiled step, on any plane and line (GPU/TPU kernels; on XLA:CPU the thunks, which emit
  events only with ``--xla_cpu_enable_xprof_traceme=true``, set by :func:`main` when ``--profile`` is
  given), its span less that of the op events nested in it on the same line (a while or cond thunk
  contains its body's), concurrent ops sharing the time they overlap (:func:`_op_times`). The ops'
  time is the traced steps' wall time less the executor's own work and dispatch; ``label`` is the
  op's jax name path and output shape from the compiled HLO.
  """
  labels = _hlo_labels(hlo_text)
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    try:
      t0 = time.perf_counter()
      for _ in range(n):
        step()
      traced_ms = (time.perf_counter() - t0) * 1e3 / n
    finally:
      jax.profiler.stop_trace()
    paths = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
    if not paths:
      return [], 0.0, traced_ms
    data = jax.profiler.ProfileData.from_file(paths[0])
    events = [{"ts": ev.start_ns / 1e3, "dur": ev.duration_ns / 1e3, "pid": plane.name, "tid": line.name,
               "args": {"hlo_op": ev.name}}
              for plane in data.planes for line in plane.lines for ev in line.events if ev.name in labels]
  dur, busy = _op_times(events)
  calls = collections.Counter(e["args"]["hlo_op"] for e in events)
  total = sum(dur.values()) or 1.0
  ops = [{"op": op, "ms": us / 1e3 / n, "share": us / total, "calls": calls[op] // n, "label": labels.get(op, "")}
         for op, us in dur.most_common(top)]
  return ops, busy / 1e3 / n, traced_ms


# ------------------------------------------------------------------------------------------- main


def _gib(x):
  return f"{x / 2 ** 30:.2f}" if x else "n/a"


def table(rows: list[dict]) -> list[str]:
  lines = ["| arch | dtype | step [s] (median / best) | tokens/s | model GFLOP/token | XLA GFLOP/token | TFLOP/s "
           "| MFU | peak GiB (memory_analysis) | temp GiB | allocator peak GiB | compile [s] |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    mem = r["memory"]
    xla = f"{r['xla_flops_per_token'] / 1e9:.3f}" if r["xla_flops_per_token"] else "n/a"
    if "step_s" in r:
      timing = (f"{r['step_s']:.4f} / {r['best_s']:.4f} | {r['tokens_per_s']:,.0f} ", f"{r['tflops']:.3f}",
                f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a")
    else:
      timing = ("(compile only) | n/a ", "n/a", "n/a")
    lines.append(f"| {r['arch']} | {r['dtype']} | {timing[0]}| {r['model_flops_per_token'] / 1e9:.3f} | {xla} | "
                 f"{timing[1]} | {timing[2]} | {_gib(mem.get('peak'))} | {_gib(mem.get('temp'))} | "
                 f"{_gib(r.get('allocator_peak'))} | {r['compile_s']:.1f} |")
  return lines


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--archs", default="topk,softsae")
  ap.add_argument("--small", action="store_true", help=f"the CPU check size {SMALL}")
  ap.add_argument("--d", type=int)
  ap.add_argument("--f", type=int)
  ap.add_argument("--k", type=int)
  ap.add_argument("--batch", type=int)
  ap.add_argument("--dtype", choices=("bfloat16", "float32"))
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: by device_kind)")
  ap.add_argument("--compile-only", action="store_true", help="memory and XLA FLOPs only; allocates nothing")
  ap.add_argument("--profile", type=int, default=0, metavar="N", help="trace N steps; print the top ops")
  ap.add_argument("--top", type=int, default=15, help="how many ops --profile prints (default %(default)s)")
  a = ap.parse_args()
  if a.profile:  # before the backend starts: XLA:CPU's thunks trace themselves only with this flag
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
  size = dict(SMALL if a.small else FULL)
  size.update({key: v for key, v in (("d", a.d), ("f", a.f), ("k", a.k), ("batch", a.batch), ("dtype", a.dtype))
               if v is not None})
  dev = jax.devices()[0]
  peak = a.peak_tflops if a.peak_tflops is not None else peak_tflops(dev.device_kind)
  print(header(f"d={size['d']} F={size['f']} k={size['k']} B={size['batch']} {size['dtype']}",
               f"peak {peak:g} TFLOP/s" if peak else "peak n/a (give --peak-tflops)",
               f"median of {a.steps} steps after {a.warmup}" if not a.compile_only else "compile only"), flush=True)
  rows = []
  for arch in a.archs.split(","):
    rows.append(measure(arch, size["d"], size["f"], size["k"], size["batch"], size["dtype"], steps=a.steps,
                        warmup=a.warmup, peak=peak, compile_only=a.compile_only, profile=a.profile,
                        top=a.top))
  print("\n".join(table(rows)))
  for r in rows:
    if r.get("ops"):
      print(f"\n# {r['arch']}: top XLA ops by wall time over {a.profile} traced steps (nested ops "
            f"subtracted, overlapping ops sharing their time); all ops {r['ops_ms']:.1f} ms per step, traced "
            f"step {r['traced_ms']:.1f} ms, median untraced step {1e3 * r['step_s']:.1f} ms")
      print("| op | ms/step | share | calls/step | jax op, output shape |\n|---|---|---|---|---|")
      for o in r["ops"]:
        print(f"| {o['op']} | {o['ms']:.2f} | {100 * o['share']:.1f}% | {o['calls']} | {o['label']} |")


if __name__ == "__main__":
  main()
