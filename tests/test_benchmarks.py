"""The speed scripts of benchmarks/ run at tiny sizes on CPU, so they cannot rot.

Each script's measuring function is called directly (the scripts print and write nothing); the
numbers are only checked to be finite and positive, never for speed.
"""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import accelerator  # noqa: E402
import data_path  # noqa: E402
import peers  # noqa: E402

D, F, K, B = 16, 64, 4, 32  # one tiny shape for every test


def _has(module):
  return importlib.util.find_spec(module) is not None


def test_accelerator_runs_the_step_and_reports_memory():
  row = accelerator.measure("topk", D, F, K, B, "bfloat16", steps=2, warmup=1, peak=1.0)
  assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
  assert math.isfinite(row["loss"])
  assert row["memory"]["peak"] > 0 and row["memory"]["argument"] > 0
  assert row["model_flops_per_token"] == 3 * (2 * D * F + 2 * K * D)
  assert row["mfu"] > 0  # against the given 1 TFLOP/s
  lines = accelerator.table([row])
  assert lines[2].startswith("| topk | bfloat16 |") and "n/a" not in lines[2].split("|")[3]


def test_accelerator_compile_only_allocates_nothing_and_counts_flops():
  row = accelerator.measure("topk", D, F, K, B, "float32", compile_only=True)
  assert "tokens_per_s" not in row
  assert row["memory"]["peak"] > 0
  if row["xla_flops_per_token"] is not None:  # cost_analysis is backend-dependent
    assert row["xla_flops_per_token"] > 0
  assert "(compile only)" in accelerator.table([row])[2]


def test_peak_table_and_flop_formulas():
  assert accelerator.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert accelerator.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert accelerator.peak_tflops("NVIDIA H200") == 989.0
  assert accelerator.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
  assert accelerator.peak_tflops("TPU v4") == 275.0
  assert accelerator.peak_tflops("TPU v5 lite") == 197.0
  assert accelerator.peak_tflops("TPU v5p") == 459.0
  assert accelerator.peak_tflops("TPU v6 lite") == 918.0
  assert accelerator.peak_tflops("cpu") is None
  d, f, k = 2304, 65536, 32
  assert accelerator.model_flops_per_token("topk", d, f, k) == 6 * d * f + 6 * k * d
  assert accelerator.model_flops_per_token("softsae", d, f, k, k_input="x") == 18 * d * f + 6 * f
  assert accelerator.model_flops_per_token("softsae", d, f, k) == 3 * (4 * d * f + 2 * 80 * 128 + 2 * 128)
  assert accelerator.model_flops_per_token("batchtopk", d, f, k) == 12 * d * f


def test_profile_op_times_subtract_nested_ops_and_share_overlaps():
  ev = [{"ts": 0.0, "dur": 10.0, "pid": 1, "tid": 1, "args": {"hlo_op": "while.1"}},
        {"ts": 1.0, "dur": 3.0, "pid": 1, "tid": 1, "args": {"hlo_op": "body"}},
        {"ts": 5.0, "dur": 3.0, "pid": 1, "tid": 1, "args": {"hlo_op": "body"}},
        {"ts": 11.0, "dur": 2.0, "pid": 1, "tid": 1, "args": {"hlo_op": "dot.1"}}]
  times, busy = accelerator._op_times(ev)
  assert dict(times) == {"while.1": 4.0, "body": 6.0, "dot.1": 2.0} and busy == 12.0
  # a second thread's op overlapping dot.1 for 1 us (one core taking turns): that 1 us is shared
  times, busy = accelerator._op_times(ev + [{"ts": 12.0, "dur": 2.0, "pid": 1, "tid": 2,
                                             "args": {"hlo_op": "fusion.2"}}])
  assert dict(times) == {"while.1": 4.0, "body": 6.0, "dot.1": 1.5, "fusion.2": 1.5} and busy == 13.0
  assert sum(times.values()) == busy


def test_data_path_measures_the_loader_and_the_step(tmp_path):
  from softsae_jax.shards import open_dataset

  path = str(tmp_path / "acts")
  data_path.write_dataset(path, 700, D, chunk=300)
  ds = open_dataset(path)
  assert ds.dtype == "float16" and ds.n_rows == 700
  data_path.warm_cache(ds)
  rates = data_path.measure(ds, d=D, f=F, k=K, batch=B, rounds=1, batches=3, steps=1, archs=("topk",))
  assert set(rates) == {"loader (prefetch 2)", "loader (no prefetch)", "step topk"}
  assert all(math.isfinite(r) and r > 0 for r in rates.values())
  parts = data_path.stages(ds, B, n=2)
  assert len(parts) == 4 and all(ms >= 0 for ms in parts.values())


def test_peers_jax_side_runs_interleaved():
  names = ("softsae topk", "softsae topk (dense grads)", "jax matmul")
  res = peers.measure((D, F, K), B, rounds=2, worker=None, names=names, warmup=1)
  assert set(res) == set(names)
  assert all(len(r["wall"]) == 2 and min(r["wall"]) > 0 for r in res.values())
  lines = peers.table(res, B)
  assert len(lines) == 5 and lines[2].startswith("| softsae topk |")
  (speedup,) = peers.speedup_lines(res)  # the dense-grads pair; the SoftSAE pair was not run
  assert "sae.sparse_grads" in speedup


def test_grad_scatter_variants_agree_and_time():
  import grad_scatter

  res = grad_scatter.measure(D, F, K, B, rounds=1)  # raises if a variant disagrees with the dense gradient
  assert len(res) == 9 and all(t > 0 for t in res.values())
  assert grad_scatter.table(res)[2].startswith("| dW_dec dense")


@pytest.mark.skipif(not _has("torch"), reason="torch not installed")
def test_peers_plain_torch_topk_step_runs_and_learns():
  step = peers.PlainTopK(D, F, K, B, lr=1e-2)
  losses = [step.step() for _ in range(5)]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.skipif(not _has("torch"), reason="torch not installed")
def test_peers_torch_worker_protocol():
  w = peers.TorchWorker(sys.executable)
  try:
    assert w.call(cmd="setup", name="torch topk (plain)", d=D, f=F, k=K, b=B)["ok"]
    r = w.call(cmd="step", name="torch topk (plain)")
    assert r["ok"] and r["wall"] > 0
    bad = w.call(cmd="step", name="nonexistent")
    assert not bad["ok"]
  finally:
    w.close()


@pytest.mark.skipif(not _has("torch"), reason="torch not installed")
def test_peers_same_malloc_worker_runs_its_own_rows():
  same = "torch topk (plain)" + peers.SAME_MALLOC
  names = ("softsae softsae", "torch topk (plain)", same)
  from softsae_jax.host import GLIBC_ENV

  w, w_same = peers.TorchWorker(sys.executable), peers.TorchWorker(sys.executable, GLIBC_ENV)
  try:
    res = peers.measure((D, F, K), B, rounds=2, worker=w, names=names, warmup=1, worker_same=w_same)
  finally:
    w.close()
    w_same.close()
  assert set(res) == set(names) and all(min(r["wall"]) > 0 for r in res.values())
  assert res["torch topk (plain)"]["malloc"] == "glibc defaults"
  assert res[same]["malloc"] == "MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647"
  goals = peers.goal_lines(res)
  assert len(goals) == 2 and "with our malloc setting" in goals[1]


def test_dead_latent_contenders_run_auxk_on_the_same_latents():
  import _steps

  assert len(_steps.dead_latents(4096)) == 4 and len(_steps.dead_latents(F)) == 1
  run = _steps.runner(_steps.build("topk", D, F, K, B, dead=True))
  metrics = [run() for _ in range(3)]
  assert all(float(m.aux_loss) > 0 and float(m.dead_frac) == 1 / F for m in metrics)


def test_xla_top_k_contender_compiles_without_the_native_kernel():
  """peers.py's "(xla top-k)" rows: the same step compiled with the pure-XLA selection, the default one
  with the native kernel where it is built; both train the same."""
  import _steps

  from softsae_jax import native

  plain = _steps.build("topk", D, F, K, B, native=False)
  assert native._TARGET not in plain.fn.as_text()
  default = _steps.build("topk", D, F, K, B)
  if native.available():
    assert native._TARGET in default.fn.lower(default.state, default.x_BD, default.valid_B).as_text()
  a, b = _steps.runner(plain)(), _steps.runner(default)()
  np.testing.assert_array_equal(np.asarray(a.loss), np.asarray(b.loss))


@pytest.mark.slow
def test_accelerator_softsae_and_step_parts():
  import step_parts

  row = accelerator.measure("softsae", D, F, K, B, "bfloat16", steps=1, warmup=1)
  assert row["tokens_per_s"] > 0 and row["mfu"] is None  # no peak for a CPU
  for arch, sparse in (("topk", "on"), ("topk", "off"), ("softsae", "auto")):
    res = step_parts.measure(arch, D, F, K, B, rounds=1, sparse_grads=sparse)
    assert res["whole step"] > 0 and all(t > 0 for t in res.values())
    assert step_parts.table(res)[-2].startswith("| **whole step** |")
    assert any("encoder backward: sparse" in name for name in res) == (arch == "topk" and sparse == "on")


@pytest.mark.slow
def test_accelerator_profile_on_cpu_accounts_for_the_step():
  """--profile on XLA:CPU (one core): the ops' time covers most of the traced steps' wall time and never
  exceeds it (overlapping thunks share their time), the encoder's matmul among the top ops (the thunks
  trace themselves only with the flag main() sets)."""
  import re
  import subprocess

  cmd = [sys.executable, os.path.join(BENCH, "accelerator.py"), "--small", "--archs", "topk", "--steps", "3",
         "--warmup", "2", "--profile", "3"]
  import shutil

  if shutil.which("taskset") and hasattr(os, "sched_getaffinity"):
    cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=True).stdout
  m = re.search(r"all ops ([\d.]+) ms per step, traced step ([\d.]+) ms", out)
  assert m, out
  ops_ms, traced_ms = float(m.group(1)), float(m.group(2))
  assert 0.5 * traced_ms < ops_ms <= traced_ms + 0.1, out
  assert "dot_general" in out and "top_k" in out


def test_auxk_bench_times_both_paths():
  import auxk

  res = auxk.measure(D, F, K, B, rounds=1, dead=[1, 3])
  assert set(res) == {"no AuxK", "1 dead: dead columns", "1 dead: full selection", "3 dead: dead columns",
                      "3 dead: full selection"}
  assert all(t > 0 for t in res.values())
  lines = auxk.table(res)
  assert len(lines) == 7 and lines[3].startswith("| 1 dead: dead columns |") and lines[3].endswith("x |")
