"""`softsae train` steps against PyTorch SAE trainers, timed in one run, interleaved.

Run:  python benchmarks/peers.py [--rounds 7] [--peers-python .venv-peers/bin/python]
      (about 3 minutes on a 2-core CPU; ``--sizes 384x4096x32`` for the small size only)

Peers environment (the torch side runs there, in a worker subprocess; SAELens's and sparsify's pins
need not agree with jax's):

    python3 -m venv .venv-peers
    .venv-peers/bin/pip install torch          # a CPU or CUDA build, as the machine needs
    .venv-peers/bin/pip install eai-sparsify sae-lens   # or: pip install -e '.[peers]' in that venv

Contenders, each one optimizer step on the same shapes (B rows of width d, F latents, k active),
float32, Adam, on one device:

* ``softsae topk`` / ``softsae softsae``: the real jitted step of ``softsae train``
  (:func:`softsae_jax.train.make_train_step` on a 1x1 mesh, state donated, library defaults);
  SoftSAE at steady state: the soft phase with alpha and the k budget at their final values
  (``train.alpha_anneal_frac=0``, ``train.k_anneal_frac=0``), as after the first 1-5% of a run.
* ``softsae topk (dense grads)``: the same TopK step with ``sae.sparse_grads=off`` (dense [B, F]
  gradients and matmuls for dW_enc and dW_dec; the default before the sparse ones), for a before/after
  in the same rounds.
* ``softsae softsae (dense soft phase)``: the same SoftSAE step with ``sae.sparse_soft=false`` (the
  soft phase's decode and encoder gradient dense, B*F*D matmuls; the default before the candidates'
  sparse soft phase), likewise.
* ``softsae softsae (x estimator)``: the same SoftSAE step with ``sae.k_input=x`` (the authors'
  k-estimator, a second D -> F layer on x; the default before the top_acts estimator), likewise.
* ``softsae topk (xla top-k)``, ``softsae softsae (xla top-k)``: the same steps compiled as without
  the native top-k kernel (:mod:`softsae_jax.native`; the pure-XLA selection, what runs where no C++
  compiler is found or with ``SOFTSAE_NATIVE=off``), for a before/after in the same rounds.
* ``softsae topk (dead latents)``, ``softsae softsae (dead latents)``: the same steps with 0.1% of the
  latents dead (past the dead-token window, and kept so), so that AuxK runs, as it does on most steps
  of a training run (55-68% of the logged steps of the MiniLM runs had dead latents, a median 0.13%
  of them). The other ``softsae`` rows have none: AuxK is skipped there.
* ``torch topk (plain)``: a plain PyTorch TopK SAE step: ReLU encoder, ``torch.topk``, the codes
  scattered into a dense [B, F] tensor and decoded by one dense matmul, MSE, ``loss.backward()``,
  ``torch.optim.Adam``, decoder rows renormalised (:class:`PlainTopK`).
* ``sparsify``: EleutherAI sparsify's ``SparseCoder`` (fused encoder, ``embedding_bag`` decoder and
  index-add backward) with the per-step work of its ``Trainer.fit`` for one SAE: unit-norm decoder,
  forward, FVU loss, backward, parallel-gradient removal, Adam step, dead-latent bookkeeping.
  (sparsify's default optimizer is signum; Adam, its other built-in, is used to match the others.)
  No AuxK (sparsify's default ``auxk_alpha`` is 0). ``sparsify (dead latents)``: the same latents dead
  as in our "(dead latents)" rows, with AuxK on at our weight (1/32), through its ``dead_mask``.
* ``sae_lens``: SAELens's ``SAETrainer.step`` on a ``TopKTrainingSAE`` (its defaults: Adam, gradient
  clipping, decoder-norm rescaling of the activations, AuxK when latents are dead).
* ``torch topk (plain) [same malloc]``, ``sparsify [same malloc]``: the same two steps in a second
  worker whose glibc malloc keeps freed memory (``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=2147483647``), the setting ``softsae`` applies to itself
  (:mod:`softsae_jax.host`; this script too, through ``_host``). The rows without the suffix are the
  peers as their users run them; these show what is left of each ratio when the peers get it too.
* Roofline rows: one dense [B, d] x [d, F] float32 matmul in each framework (the encoder's forward;
  a step whose decoder and gradients are all dense does 5 of them, SoftSAE's soft phase 7).

On a shared machine with more runnable jobs than cores, ``taskset -c 0 python benchmarks/peers.py``
runs both sides on one core (torch then takes one thread, XLA sizes its pool the same way), which keeps
the multi-threaded runtimes' waits on descheduled threads out of the comparison.

Timing: after 3 warm-up steps each, every round runs one step of each contender in turn, so load
from other processes hits them alike. Printed per contender: median and best step time, tokens/s
(B / median), the median over rounds of the per-round ratio to the plain PyTorch TopK step and the
ratio of best times, and step / one matmul of its own framework. Then the acceptance ratios of
issue 13. Writes nothing; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_SIZES = "384x4096x32,768x16384x64"
TORCH_NAMES = ("torch topk (plain)", "sparsify", "sparsify (dead latents)", "sae_lens", "torch matmul")
# The same torch steps in a second worker whose glibc malloc keeps freed memory as `softsae` sets it for
# itself (softsae_jax.host, here through glibc's environment variables): the peers with the allocator
# setting that helps our step, so that what the setting buys is not counted as the trainer's speed.
SAME_MALLOC = " [same malloc]"
TORCH_SAME = ("torch topk (plain)" + SAME_MALLOC, "sparsify" + SAME_MALLOC, "sparsify (dead latents)" + SAME_MALLOC)
JAX_NAMES = ("softsae topk", "softsae topk (dense grads)", "softsae topk (dead latents)", "softsae topk (xla top-k)",
             "softsae softsae", "softsae softsae (dense soft phase)", "softsae softsae (x estimator)",
             "softsae softsae (dead latents)", "softsae softsae (xla top-k)", "jax matmul")
REFERENCE = "torch topk (plain)"


# ------------------------------------------------------------------------------------- torch side
# Imports torch (and the peers) only inside functions: the jax process never imports torch.


def _inputs_np(b: int, d: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(b, d)).astype(np.float32)


class PlainTopK:
  """A plain PyTorch TopK SAE step (dense decode, autograd, Adam, unit-norm decoder rows)."""

  def __init__(self, d: int, f: int, k: int, b: int, lr: float = 2e-4, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    w_dec = torch.empty(f, d).uniform_(-f ** -0.5, f ** -0.5, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    self.w_enc = w_dec.T.clone().requires_grad_()
    self.b_enc = torch.zeros(f, requires_grad=True)
    self.w_dec = w_dec.requires_grad_()
    self.b_dec = torch.zeros(d, requires_grad=True)
    self.k = k
    self.opt = torch.optim.Adam([self.w_enc, self.b_enc, self.w_dec, self.b_dec], lr=lr)
    self.x = torch.from_numpy(_inputs_np(b, d, seed))

  def step(self) -> float:
    import torch

    x = self.x
    pre = torch.relu((x - self.b_dec) @ self.w_enc + self.b_enc)
    vals, idx = pre.topk(self.k, dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter(-1, idx, vals)
    recon = acts @ self.w_dec + self.b_dec
    loss = (recon - x).pow(2).sum(-1).mean()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      self.w_dec /= self.w_dec.norm(dim=1, keepdim=True)
    return float(loss.detach())


class SparsifyStep:
  """sparsify's ``Trainer.fit`` inner step for one SAE on activations (loss_fn="fvu"; auxk_alpha=0, or
  1/32 with ``dead``)."""

  def __init__(self, d: int, f: int, k: int, b: int, seed: int = 0, dead: bool = False):
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(seed)
    self.sae = SparseCoder(d, SparseCoderConfig(num_latents=f, k=k), device="cpu", dtype=torch.float32)
    # dead: the same latents as our "(dead latents)" contenders, held dead, with AuxK on at the weight of
    # ours (sparsify's default auxk_alpha is 0: no AuxK at all)
    self.dead_mask, self.auxk_alpha = None, 0.0
    if dead:
      from _steps import dead_latents  # imports numpy only: fine in the peers' environment

      idx = torch.from_numpy(dead_latents(f)).long()
      self.dead_mask = torch.zeros(f, dtype=torch.bool)
      self.dead_mask[idx] = True
      self.auxk_alpha = 1 / 32
      with torch.no_grad():
        self.sae.encoder.bias[idx] = -100.0
    self.opt = torch.optim.Adam(self.sae.parameters(), lr=2e-4 / (f / 2 ** 14) ** 0.5)  # its default lr rule
    self.since_fired = torch.zeros(f, dtype=torch.long)
    self.did_fire = torch.zeros(f, dtype=torch.bool)
    self.x = torch.from_numpy(_inputs_np(b, d, seed))
    self.sae.b_dec.data = self.x.mean(0)  # fit() does this on its first batch

  def step(self) -> float:
    import torch

    x, sae = self.x, self.sae
    sae.set_decoder_norm_to_unit_norm()
    total_variance = (x - x.mean(0)).pow(2).sum()
    out = sae(x=x, y=x, dead_mask=self.dead_mask, total_variance=total_variance)
    self.did_fire[out.latent_indices.flatten()] = True
    fvu = float(out.fvu.detach())
    (out.fvu + self.auxk_alpha * out.auxk_loss).backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    self.opt.step()
    self.opt.zero_grad()
    with torch.no_grad():
      self.since_fired += x.shape[0]
      self.since_fired[self.did_fire] = 0
      self.did_fire.zero_()
    return fvu


class SaeLensStep:
  """SAELens's ``SAETrainer.step`` on a ``TopKTrainingSAE`` (what ``fit()`` calls per batch)."""

  def __init__(self, d: int, f: int, k: int, b: int, seed: int = 0):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=f, k=k, dtype="float32", device="cpu"))
    # lr_end: what LanguageModelSAERunnerConfig.__post_init__ sets by default (lr / 10).
    cfg = SAETrainerConfig(total_training_samples=10 ** 12, train_batch_size_samples=b, device="cpu", lr_end=3e-5)
    self.trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    self.x = torch.from_numpy(_inputs_np(b, d, seed))

  def step(self) -> float:
    out = self.trainer.step(self.x)
    self.trainer.n_training_steps += 1
    return float(out.loss.detach())


class TorchMatmul:
  """One dense [B, d] x [d, F] float32 matmul (the roofline unit)."""

  def __init__(self, d: int, f: int, k: int, b: int, seed: int = 0):
    import torch

    self.x = torch.from_numpy(_inputs_np(b, d, seed))
    self.w = torch.from_numpy(_inputs_np(d, f, seed + 1))

  def step(self) -> float:
    return float((self.x @ self.w)[0, 0])


TORCH_STEPS = {"torch topk (plain)": PlainTopK, "sparsify": SparsifyStep, "sae_lens": SaeLensStep,
               "torch matmul": TorchMatmul, "sparsify (dead latents)": functools.partial(SparsifyStep, dead=True)}
_PEER_PACKAGES = {"torch topk (plain)": "torch", "sparsify": "eai-sparsify", "sae_lens": "sae-lens",
                  "torch matmul": "torch", "sparsify (dead latents)": "eai-sparsify"}


def _version(dist: str) -> str:
  from importlib import metadata

  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return "?"


def worker() -> None:
  """Serves torch steps over stdin/stdout, one JSON line per request (see :class:`TorchWorker`)."""
  out = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # whatever the libraries print goes to stderr, not into the protocol
  steps = {}
  for line in sys.stdin:
    req = json.loads(line)
    try:
      if req["cmd"] == "setup":
        base = req["name"].removesuffix(SAME_MALLOC)
        steps[req["name"]] = TORCH_STEPS[base](req["d"], req["f"], req["k"], req["b"])
        import torch

        from softsae_jax.host import GLIBC_ENV  # stdlib only: fine in the peers' environment

        dist = _PEER_PACKAGES[base]
        resp = {"ok": True, "version": f"{dist} {_version(dist)}", "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "malloc": " ".join(f"{v}={os.environ[v]}" for v in GLIBC_ENV if v in os.environ)
                          or "glibc defaults"}
      elif req["cmd"] == "step":
        wall, cpu = time.perf_counter(), time.process_time()
        steps[req["name"]].step()
        resp = {"ok": True, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
      elif req["cmd"] == "drop":
        steps.pop(req["name"], None)
        resp = {"ok": True}
      else:
        break
    except Exception as e:  # reported to the jax process, which skips that contender
      resp = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    out.write(json.dumps(resp) + "\n")


class TorchWorker:
  """The torch side in a subprocess of ``python`` (the peers' environment)."""

  def __init__(self, python: str, env_extra: dict[str, str] | None = None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
               **(env_extra or {}))
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

  def call(self, **req) -> dict:
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      return {"ok": False, "error": "the torch worker exited (is torch installed in --peers-python?)"}
    return json.loads(line)

  def close(self):
    try:
      self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      self.proc.stdin.close()
    except OSError:
      pass
    self.proc.wait(timeout=60)


# --------------------------------------------------------------------------------------- jax side


def jax_step(arch: str, d: int, f: int, k: int, b: int, seed: int = 0, overrides=(), dead: bool = False,
             native: bool = True):
  """The jitted step ``softsae train`` runs, with its state: returns ``step()`` (one blocking step)."""
  import _steps

  return _steps.runner(_steps.build(arch, d, f, k, b, seed=seed, overrides=overrides, dead=dead, native=native))


def jax_matmul(d: int, f: int, k: int, b: int, seed: int = 0):
  import jax
  import jax.numpy as jnp

  x, w = jnp.asarray(_inputs_np(b, d, seed)), jnp.asarray(_inputs_np(d, f, seed + 1))
  mm = jax.jit(lambda x, w: x @ w)

  def step():
    jax.block_until_ready(mm(x, w))

  return step


def _jax_version(name: str) -> str:
  import jax

  return f"jax {jax.__version__}" + (f", softsae_jax {_version('softsae_jax')}" if name.startswith("softsae") else "")


def _jax_builder(name):
  return {"softsae topk": lambda *a: jax_step("topk", *a), "softsae softsae": lambda *a: jax_step("softsae", *a),
          "softsae topk (dense grads)": lambda *a: jax_step("topk", *a, overrides=("sae.sparse_grads=off",)),
          "softsae softsae (dense soft phase)": lambda *a: jax_step("softsae", *a, overrides=("sae.sparse_soft=false",)),
          "softsae softsae (x estimator)": lambda *a: jax_step("softsae", *a, overrides=("sae.k_input=x",)),
          "softsae topk (dead latents)": lambda *a: jax_step("topk", *a, dead=True),
          "softsae softsae (dead latents)": lambda *a: jax_step("softsae", *a, dead=True),
          "softsae topk (xla top-k)": lambda *a: jax_step("topk", *a, native=False),
          "softsae softsae (xla top-k)": lambda *a: jax_step("softsae", *a, native=False),
          "jax matmul": jax_matmul}[name]


# ------------------------------------------------------------------------------------------ driver


def measure(size: tuple[int, int, int], batch: int, rounds: int, worker: TorchWorker | None, names, warmup: int = 3,
            log=print, worker_same: TorchWorker | None = None) -> dict[str, dict]:
  """Interleaved step times of ``names`` at ``size`` = (d, F, k): {name: {"wall": [...], "cpu": [...], ...}}.

  ``worker`` runs the torch steps, ``worker_same`` those named with :data:`SAME_MALLOC`."""
  d, f, k = size
  runners, info, owner = {}, {}, {}  # owner: the torch worker that set a torch contender up
  for name in names:
    if name in JAX_NAMES:
      fn = _jax_builder(name)(d, f, k, batch)

      def run(fn=fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

      runners[name], info[name] = run, {"version": _jax_version(name)}
    elif (w := worker_same if name.endswith(SAME_MALLOC) else worker) is not None:
      resp = w.call(cmd="setup", name=name, d=d, f=f, k=k, b=batch)
      if not resp["ok"]:
        log(f"# {name}: not run ({resp['error']})")
        continue
      owner[name] = w

      def run(name=name, w=w):
        r = w.call(cmd="step", name=name)
        if not r["ok"]:
          raise RuntimeError(f"{name}: {r['error']}")
        return r["wall"], r["cpu"]

      runners[name], info[name] = run, resp
  for run in runners.values():
    for _ in range(warmup):
      run()
  res = {name: {"wall": [], "cpu": [], **info[name]} for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      wall, cpu = run()
      res[name]["wall"].append(wall)
      res[name]["cpu"].append(cpu)
  for name, w in owner.items():
    w.call(cmd="drop", name=name)
  return res


def ratio(res: dict, a: str, b: str) -> tuple[float, float]:
  """(median of per-round time(b)/time(a), best(b)/best(a)): how many times faster ``a`` is than ``b``."""
  wa, wb = np.asarray(res[a]["wall"]), np.asarray(res[b]["wall"])
  return float(np.median(wb / wa)), float(wb.min() / wa.min())


def table(res: dict, batch: int) -> list[str]:
  lines = ["| contender | version | median step [s] | best [s] | tokens/s (median) | x plain torch TopK (median, best) "
           "| step / matmul |",
           "|---|---|---|---|---|---|---|"]
  for name, r in res.items():
    wall = np.asarray(r["wall"])
    med = float(np.median(wall))
    vs = ratio(res, name, REFERENCE) if REFERENCE in res else (float("nan"),) * 2
    mm = "torch matmul" if name in TORCH_NAMES + TORCH_SAME else "jax matmul"
    per_mm = med / float(np.median(res[mm]["wall"])) if mm in res else float("nan")
    version = r.get("version", "?")
    lines.append(f"| {name} | {version} | {med:.4f} | {wall.min():.4f} | {batch / med:,.0f} | "
                 f"{vs[0]:.2f}, {vs[1]:.2f} | {per_mm:.2f} |")
  return lines


SPEEDUPS = (  # (after, before): the same step with a speed-up of the library on and off
    ("softsae topk", "softsae topk (dense grads)", "sae.sparse_grads"),
    ("softsae softsae", "softsae softsae (dense soft phase)", "sae.sparse_soft"),
    ("softsae softsae", "softsae softsae (x estimator)", "sae.k_input=top_acts"),
    ("softsae topk", "softsae topk (dead latents)", "no dead latent (what AuxK costs with 0.1% dead)"),
    ("softsae softsae", "softsae softsae (dead latents)", "no dead latent (what AuxK costs with 0.1% dead)"),
    ("sparsify", "sparsify (dead latents)", "no dead latent (what AuxK costs with 0.1% dead)"),
    ("softsae topk", "softsae topk (xla top-k)", "the native top-k kernel (softsae_jax.native)"),
    ("softsae softsae", "softsae softsae (xla top-k)", "the native top-k kernel (softsae_jax.native)"),
)


def speedup_lines(res: dict) -> list[str]:
  """For each (after, before) pair timed in this run: the median of the per-round ratios before / after."""
  out = []
  for a, b, what in SPEEDUPS:
    if a in res and b in res:
      med, best = ratio(res, a, b)
      out.append(f"#   {what}: {a!r} is {med:.2f}x {b!r} (median of per-round ratios; best steps {best:.2f}x)")
  return out


GOALS = (  # (faster, slower, target, what) from issue 13
    ("softsae topk", "sparsify", 1.5, "TopK >= 1.5x sparsify's training step"),
    ("softsae topk", "sparsify" + SAME_MALLOC, 1.5, "the same, sparsify with our malloc setting"),
    ("softsae topk (dead latents)", "sparsify (dead latents)", 1.5,
     "the same on a step with 0.1% of the latents dead (AuxK on in both)"),
    ("softsae topk (dead latents)", "sparsify (dead latents)" + SAME_MALLOC, 1.5,
     "the same, sparsify with our malloc setting"),
    ("softsae topk", REFERENCE, 3.75, "TopK ~ 3.75x plain PyTorch TopK (the same goal, via sparsify ~2.5x plain)"),
    ("softsae softsae", REFERENCE, 1.35,
     "SoftSAE at steady state >= 5x the authors' (~1.35x plain PyTorch TopK; the authors' code is not installable)"),
    ("softsae softsae", REFERENCE + SAME_MALLOC, 1.35, "the same, plain PyTorch TopK with our malloc setting"),
)


def goal_lines(res: dict) -> list[str]:
  out = []
  for a, b, target, what in GOALS:
    if a in res and b in res:
      med, best = ratio(res, a, b)
      verdict = "met" if med >= target else "missed"
      out.append(f"#   {what}: {med:.2f} (best {best:.2f}) -> {verdict}")
  return out


def default_peers_python() -> str:
  env = os.environ.get("SOFTSAE_PEERS_PYTHON")
  if env:
    return env
  local = os.path.join(REPO, ".venv-peers", "bin", "python")
  return local if os.path.exists(local) else sys.executable


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated dxFxk (default %(default)s)")
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--peers-python", default=default_peers_python(),
                  help="python of the environment with torch, eai-sparsify, sae-lens "
                       "(default $SOFTSAE_PEERS_PYTHON, else .venv-peers/bin/python, else this python)")
  ap.add_argument("--only", default="", help="comma-separated contender names (default: all)")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.worker:
    return worker()

  from _host import header

  steps = [n for n in JAX_NAMES if n != "jax matmul"]
  names = [n for n in (*steps, "torch topk (plain)", "sparsify", "sparsify (dead latents)", "sae_lens", *TORCH_SAME,
                       "jax matmul", "torch matmul")
           if not a.only or n in a.only.split(",")]
  from softsae_jax.host import GLIBC_ENV

  w = TorchWorker(a.peers_python) if any(n in TORCH_NAMES for n in names) else None
  w_same = TorchWorker(a.peers_python, GLIBC_ENV) if any(n in TORCH_SAME for n in names) else None
  try:
    threads = ""
    if w is not None:
      probe = w.call(cmd="setup", name="torch matmul", d=8, f=8, k=1, b=8)
      w.call(cmd="drop", name="torch matmul")
      threads = (f"torch {probe['torch']} ({probe['threads']} threads)" if probe["ok"]
                 else f"torch side unavailable ({probe['error']})")
    print(header(threads, f"B={a.batch}", f"interleaved, {a.rounds} rounds after 3 warm-up steps"), flush=True)
    for spec in a.sizes.split(","):
      d, f, k = (int(v) for v in spec.lower().split("x"))
      res = measure((d, f, k), a.batch, a.rounds, w, names, log=lambda m: print(m, flush=True), worker_same=w_same)
      from _host import load

      print(f"\n## d={d} F={f} k={k} B={a.batch} (load after: {load()})\n")
      print("\n".join(table(res, a.batch)))
      speedups = speedup_lines(res)
      if speedups:
        print("\n# speed-ups (the same step with the option on and off, same rounds):\n" + "\n".join(speedups))
      goals = goal_lines(res)
      if goals:
        print("\n# goals (issue 13; median of per-round ratios):\n" + "\n".join(goals))
      print(flush=True)
  finally:
    for worker_ in (w, w_same):
      if worker_ is not None:
        worker_.close()


if __name__ == "__main__":
  main()
