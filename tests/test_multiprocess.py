"""Two real processes on localhost (jax.distributed over gloo) train one workdir through `softsae train`.

They must end bit-identical to one process holding the same devices, write metrics.jsonl once, and
resume exactly after both are SIGKILLed at a random (seeded) moment — with the mesh's 'data' axis
across the processes, and with its 'model' axis across them. A harness that kills with SIGTERM would
hang (JAX catches it), so peers are SIGKILLed, and short heartbeat timeouts bound any hang.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow

STEPS = 30
COMMON = ["--set", "sae.arch=softsae", "--set", "sae.k=4", "--set", "sae.n_latents=64", "--set", "train.batch_size=128",
          "--set", f"train.steps={STEPS}", "--set", "train.checkpoint_every=10", "--set", "train.log_every=5",
          "--set", "train.hard_frac=0.1", "--quiet"]
MESHES = {"data": ["--set", "mesh.data=2", "--set", "mesh.model=1"],
          "model": ["--set", "mesh.data=1", "--set", "mesh.model=2"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from softsae_jax import synthetic

  path = str(tmp_path_factory.mktemp("mp") / "data")
  synthetic.write_dataset(path, synthetic.make_mixture(4096, 16, 64, k_values=(2, 4), seed=0))
  return path


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(data, workdir, mesh, n_proc):
  """n_proc processes x (2 / n_proc) devices on one workdir; returns the Popen list."""
  base = [sys.executable, "-m", "softsae_jax.cli", "train", "--data", data, "--workdir", workdir, *COMMON, *MESHES[mesh]]
  if n_proc == 1:
    return [subprocess.Popen(base, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  port = _port()
  return [subprocess.Popen(base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n_proc),
                                   "--process-id", str(i), "--heartbeat-timeout", "10", "--init-timeout", "60"],
                           env=_env(2 // n_proc), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(n_proc)]


def _wait(procs, timeout=300):
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]


def _params(workdir):
  from softsae_jax import evaluate

  return [np.asarray(x) for x in jax.tree.leaves(evaluate.load(workdir).params)]


def _assert_same(a, b):
  for x, y in zip(_params(a), _params(b)):
    np.testing.assert_array_equal(x, y)


def _metric_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_two_processes_equal_one_and_resume_exactly_after_sigkill(data, tmp_path, mesh, test_seed):
  one, two, killed = (str(tmp_path / n) for n in ("one", "two", "killed"))
  _wait(_launch(data, one, mesh, 1))
  _wait(_launch(data, two, mesh, 2))
  _assert_same(one, two)
  assert _metric_steps(two) == list(range(5, STEPS + 1, 5))  # one line per logged step, not one per process
  with open(os.path.join(two, "run.json")) as f:
    assert json.load(f)["processes"] == 2

  # SIGKILL both at a random moment after the first checkpoint, rerun, and end at the same model.
  rng = random.Random(test_seed)
  procs = _launch(data, killed, mesh, 2)
  ck = os.path.join(killed, "checkpoints")
  t0 = time.time()
  while not (os.path.isdir(ck) and any(n.isdigit() for n in os.listdir(ck))) and time.time() - t0 < 240:
    time.sleep(0.05)
  time.sleep(rng.uniform(0.0, 1.0))
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait()
  done = sorted(int(n) for n in os.listdir(ck) if n.isdigit())
  assert done and done[-1] < STEPS, f"the run finished before the kill: {done}"
  _wait(_launch(data, killed, mesh, 2))
  _assert_same(one, killed)
  assert _metric_steps(killed) == list(range(5, STEPS + 1, 5))


def test_distributed_flags_are_checked(data, tmp_path):
  r = subprocess.run([sys.executable, "-m", "softsae_jax.cli", "train", "--data", data, "--workdir",
                      str(tmp_path / "w"), "--coordinator", "127.0.0.1:1", "--num-processes", "2"],
                     env=_env(1), capture_output=True, text=True, timeout=120)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines() == ["error: --coordinator, --num-processes and --process-id go together"]
  assert not os.path.exists(tmp_path / "w")
