"""Per-device memory of the real training step on a ("data", "model") mesh, compile-only.

Run:  python benchmarks/memory.py                  # D=2304, F=65536 and 2^20, B=4096: ~2.5 minutes
      python benchmarks/memory.py --small          # D=64, F=1024, B=256: ~20 s (--archs topk: ~8 s)

For each arch, F and mesh it builds the real ``make_train_step(cfg, tx, mesh)`` (state donated,
every state leaf sharded by the rule table, the batch split over 'data') on simulated CPU devices
(``--xla_force_host_platform_device_count``), lowers it on ShapeDtypeStructs that carry the
shardings, compiles it, and reads ``compiled.memory_analysis()``. Nothing of size B x F or D x F is
ever allocated: the numbers are XLA's buffer assignment for one device's program, so they are
per-device bytes. Columns:

* ``args``, ``out``, ``temp``: argument, output and temporary bytes of the per-device program;
* ``total`` = args + out - aliased + temp (the donated state is aliased to the new state, so it
  counts once): what one device needs for the step;
* ``state``: the per-device state from :func:`softsae_jax.train.state_shardings` (each leaf's shard
  shape times its itemsize, summed);
* ``state~``: the derived formula 3 (P_lat / Sm + P_rep) + 4 F / Sm, with P_lat the bytes of the
  parameters that have a latent axis, P_rep the rest (b_dec, scalars), the factor 3 for the
  parameters and Adam's two moments, 4 F for the int32 dead-latent counter;
* ``temp~``: the fitted formula c_a (B/Sd)(F/Sm) 4 + c_g P_lat/Sm: c_a float32 [b, f] activation-sized
  buffers per device and c_g parameter-sized ones (gradients, Adam's update), fitted per arch
  (least squares of the relative error) on the compiles of the smallest F only, so the rows at
  larger F test the formula rather than fit it;
* ``total~`` = state~ + temp~ + the device's batch rows (b D 4 + b bytes), and total / total~;
* ``compile s``, ``rss GB``: wall time of lower + compile and the compiling process's peak RSS (with
  ``--small``, in one process, the peak so far).

``--collectives`` adds a second table from the compiled HLO text: the number and result bytes of the
all-reduces and all-gathers of the per-device program (every branch of every ``lax.cond`` counted
once: AuxK's only runs on steps with dead latents), the largest all-gather, how many all-gathers
produce a whole [B, F] (rows of pre-activations gathered over a mesh axis), and any other collective
kind (reduce-scatter, all-to-all, collective-permute). Bytes on the wire per device are at most the
result bytes for an all-gather and about twice the bytes for a ring all-reduce.

Each compile runs in its own subprocess (default, not with ``--small``) so that its time and peak
RSS can be bounded: one over ``--max-compile-s`` seconds or ``--max-rss-gb`` GB is killed and its row
is filled from the formulas, marked ``extrapolated``. ``--small`` compiles in this process, which
then needs the devices before jax starts (it sets ``--xla_force_host_platform_device_count`` itself
unless jax was imported already, e.g. by a test with its own simulated devices).

Compiles use ``--xla_backend_optimization_level=0`` (``--no-fast-compile`` turns it off): it only
lowers LLVM's optimisation of the generated CPU code, halves compile times, and left every byte of
``memory_analysis()`` unchanged at ``--small`` and at D=2304, F=65536 (meshes 1x1, 1x8, 4x2).

XLA:CPU's buffer assignment is a proxy for a GPU/TPU's: the same program has about the same buffers,
but fusion decisions (and hence temporaries) differ between backends. Treat ``temp`` as an estimate
within tens of percent and ``state`` as exact.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time

import numpy as np

FULL = dict(d=2304, fs=(65536, 2**20), batch=4096, meshes="1x1,1x4,1x8,8x1,4x2")
SMALL = dict(d=64, fs=(1024,), batch=256, meshes="1x1,1x2")
UNIT = [2.0**30, "GiB"]  # MiB for --small


def _parse_mesh(text: str) -> tuple[int, int]:
  sd, sm = text.lower().split("x")
  return int(sd), int(sm)


# ---------------------------------------------------------------------------------- one compile


def measure(arch: str, d: int, f: int, batch: int, sd: int, sm: int, with_collectives: bool = False) -> dict:
  """Compiles the step for one (arch, F, mesh); needs >= sd * sm jax devices. Returns a dict of bytes."""
  import jax
  import jax.numpy as jnp

  from softsae_jax import config as config_lib
  from softsae_jax import sharding
  from softsae_jax.optim import make_optimizer
  from softsae_jax.train import abstract_state, make_train_step, state_shardings

  t0 = time.perf_counter()
  cfg = config_lib.apply_overrides(config_lib.Config(), [
      f"sae.arch={arch}", f"sae.n_latents={f}", f"train.batch_size={batch}", f"mesh.data={sd}",
      f"mesh.model={sm}"]).resolve(d)
  tx = make_optimizer(cfg)
  mesh = sharding.make_mesh(sd, sm)
  abstract = abstract_state(cfg, tx)
  shardings = state_shardings(cfg, tx, mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  rows, mask = sharding.batch_shardings(mesh)
  x = jax.ShapeDtypeStruct((batch, d), jnp.float32, sharding=rows)
  valid = jax.ShapeDtypeStruct((batch,), jnp.bool_, sharding=mask)
  compiled = make_train_step(cfg, tx, mesh).lower(state, x, valid).compile()
  seconds = time.perf_counter() - t0
  ma = compiled.memory_analysis()

  def shard_bytes(a, s):
    return int(np.prod(s.shard_shape(a.shape), dtype=np.int64)) * a.dtype.itemsize

  state_dev = sum(jax.tree.leaves(jax.tree.map(shard_bytes, abstract, shardings)))
  # Parameter bytes with and without a latent axis (for the state formula).
  p_lat = p_rep = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract.params):
    nbytes = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
    if sharding.logical_axes(sharding._leaf_name(path)):
      p_lat += nbytes
    else:
      p_rep += nbytes
  coll = collectives(compiled.as_text(), batch, f) if with_collectives else {}
  return dict(**coll, arch=arch, d=d, f=f, batch=batch, sd=sd, sm=sm, args=ma.argument_size_in_bytes,
              out=ma.output_size_in_bytes, alias=ma.alias_size_in_bytes, temp=ma.temp_size_in_bytes,
              total=ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
              + ma.temp_size_in_bytes, state=state_dev, p_lat=p_lat, p_rep=p_rep, seconds=round(seconds, 1),
              rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8}
_COLLECTIVE = re.compile(r"= (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\(")


def _group_size(line: str) -> int | None:
  """Devices per replica group of one collective (None: a format not parsed here)."""
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line)
  if m:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    return int(np.prod([int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2))], dtype=np.int64))
  m = re.search(r"replica_groups=\[([\d,]+)\]<=", line)
  if m:
    return int(m.group(1).split(",")[-1])
  return None


def collectives(hlo_text: str, batch: int, f: int) -> dict:
  """The collectives of a compiled per-device program (every branch of every cond counted once).

  ``ar``/``ag``: count and result bytes of all-reduces / all-gathers; ``other``: the count of each other
  collective kind; ``bf``: all-gathers whose result holds the whole [B, F] (a row gather).
  Collectives over one-device groups (e.g. a psum over a 'data' axis of size 1) are left out.
  """
  out = dict(ar=0, ar_bytes=0, ag=0, ag_bytes=0, bf=0, ag_max="-")
  other: dict[str, int] = {}
  biggest = 0
  for line in hlo_text.splitlines():
    line = re.sub(r"/\*.*?\*/", "", line)
    m = _COLLECTIVE.search(line)
    if not m or _group_size(line) == 1:  # a group of one device moves nothing
      continue
    shapes = re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))
    dims = [[int(n) for n in s.split(",") if n] for _, s in shapes]
    nbytes = sum(_DTYPE_BYTES.get(t, 4) * int(np.prod(d, dtype=np.int64)) for (t, _), d in zip(shapes, dims))
    kind = m.group(2)
    if kind == "all-reduce":
      out["ar"] += 1
      out["ar_bytes"] += nbytes
    elif kind == "all-gather":
      out["ag"] += 1
      out["ag_bytes"] += nbytes
      out["bf"] += sum(1 for d in dims if batch in d and f in d)
      if nbytes > biggest:
        biggest, out["ag_max"] = nbytes, " ".join(f"{t}[{s}]" for t, s in shapes)
    else:
      other[kind] = other.get(kind, 0) + 1
  out["other"] = ", ".join(f"{n} {k}" for k, n in sorted(other.items())) or "-"
  return out


def _rss_bytes(pid: int) -> int:
  try:
    with open(f"/proc/{pid}/status") as fh:
      for line in fh:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def measure_isolated(arch, d, f, batch, sd, sm, max_s: float, max_rss_gb: float, with_collectives: bool) -> dict:
  """``measure`` in a subprocess with sd * sm simulated devices; killed past max_s or max_rss_gb."""
  import importlib.util

  # The child imports the same softsae_jax as this process (a worktree on PYTHONPATH, or the installed one).
  pkg_root = os.path.dirname(os.path.dirname(importlib.util.find_spec("softsae_jax").origin))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [pkg_root] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]),
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={sd * sm}".strip())
  cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{arch},{d},{f},{batch},{sd},{sm},{int(with_collectives)}"]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  t0, peak, why = time.time(), 0, None
  while proc.poll() is None:
    peak = max(peak, _rss_bytes(proc.pid))
    if time.time() - t0 > max_s:
      why = f"compile > {max_s:.0f} s"
    elif peak > max_rss_gb * 1e9:
      why = f"RSS > {max_rss_gb:g} GB"
    if why:
      proc.kill()
      proc.wait()
      return dict(arch=arch, d=d, f=f, batch=batch, sd=sd, sm=sm, skipped=why)
    time.sleep(0.2)
  out, err = proc.communicate()
  if proc.returncode:
    return dict(arch=arch, d=d, f=f, batch=batch, sd=sd, sm=sm, skipped=f"failed: {err.strip().splitlines()[-1:]}")
  return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ formulas


def _features(r) -> list[float]:
  """[(B/Sd)(F/Sm) 4, P_lat/Sm]: one float32 [b, f] array, and the latent parameters on one device."""
  return [r["batch"] / r["sd"] * r["f"] / r["sm"] * 4, r["p_lat"] / r["sm"]]


def fit_temp(rows: list[dict]) -> dict:
  """(c_a, c_g) per arch: least squares of the relative error over the measured rows of the smallest F.

  temp~ = c_a (B/Sd)(F/Sm) 4 + c_g P_lat/Sm: c_a counts the live float32 [b, f] activation-sized
  buffers, c_g the parameter-sized ones (gradients, Adam's update). With a single point, c_g = 2.
  """
  coef = {}
  measured = [r for r in rows if "skipped" not in r]
  for arch in dict.fromkeys(r["arch"] for r in rows):
    pts = [r for r in measured if r["arch"] == arch]
    if not pts:
      continue
    f0 = min(r["f"] for r in pts)
    pts = [r for r in pts if r["f"] == f0]
    a = np.asarray([_features(r) for r in pts], np.float64)
    y = np.asarray([r["temp"] for r in pts], np.float64)
    if np.linalg.matrix_rank(a) < 2:
      c_g = 2.0
      c = np.asarray([float(np.mean((y - c_g * a[:, 1]) / a[:, 0])), c_g])
    else:
      c = np.linalg.lstsq(a / y[:, None], np.ones(len(y)), rcond=None)[0]
    coef[arch] = (c, f0)
  return coef


def state_formula(r) -> float:
  return 3 * (r["p_lat"] / r["sm"] + r["p_rep"]) + 4 * r["f"] / r["sm"]


def temp_formula(r, coef) -> float | None:
  if r["arch"] not in coef:
    return None
  return float(sum(ci * xi for ci, xi in zip(coef[r["arch"]][0], _features(r))))


def total_formula(r, coef) -> float | None:
  """state~ + temp~ + this device's rows of the batch ([b, D] float32 and a [b] mask)."""
  tp = temp_formula(r, coef)
  return None if tp is None else state_formula(r) + tp + r["batch"] / r["sd"] * (r["d"] * 4 + 1)


def _param_bytes(arch: str, d: int, f: int) -> tuple[int, int]:
  """(P_lat, P_rep) without compiling (for extrapolated rows)."""
  import jax

  from softsae_jax import config as config_lib
  from softsae_jax import sharding
  from softsae_jax.optim import make_optimizer
  from softsae_jax.train import abstract_state

  cfg = config_lib.apply_overrides(config_lib.Config(), [f"sae.arch={arch}", f"sae.n_latents={f}"]).resolve(d)
  lat = rep = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state(cfg, make_optimizer(cfg)).params):
    n = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
    if sharding.logical_axes(sharding._leaf_name(path)):
      lat += n
    else:
      rep += n
  return lat, rep


# --------------------------------------------------------------------------------------- output


def _gib(x) -> str:
  return "-" if x is None else f"{x / UNIT[0]:.2f}"


def table(rows: list[dict], coef: dict) -> str:
  lines = ["| arch | F | mesh (data x model) | args | out | temp | total | state | state~ | temp~ | total~ "
           "| total / total~ | compile s | RSS GB |", "|" + "---|" * 14]
  for r in rows:
    mesh = f"{r['sd']}x{r['sm']}"
    if "skipped" in r:
      if "p_lat" not in r:
        r["p_lat"], r["p_rep"] = _param_bytes(r["arch"], r["d"], r["f"])
      tot = total_formula(r, coef)
      what = f"skipped ({r['skipped']}): no measured row to fit" if tot is None else \
          f"~{_gib(tot)} extrapolated ({r['skipped']})"
      lines.append(f"| {r['arch']} | {r['f']} | {mesh} | - | - | - | {what} | - | {_gib(state_formula(r))} "
                   f"| {_gib(temp_formula(r, coef))} | {_gib(tot)} | - | - | - |")
      continue
    tot = total_formula(r, coef)
    ratio = "-" if not tot else f"{r['total'] / tot:.2f}"
    lines.append(f"| {r['arch']} | {r['f']} | {mesh} | {_gib(r['args'])} | {_gib(r['out'])} | {_gib(r['temp'])} "
                 f"| **{_gib(r['total'])}** | {_gib(r['state'])} | {_gib(state_formula(r))} "
                 f"| {_gib(temp_formula(r, coef))} | {_gib(tot)} | {ratio} | {r['seconds']} | {r['rss_gb']} |")
  return "\n".join(lines)


def collectives_table(rows: list[dict]) -> str:
  """Static collectives per device program: every cond branch counted (AuxK's runs only on steps with
  dead latents; at mesh.model = 1 SoftSAE runs one of its two phases)."""
  lines = ["| arch | F | mesh (data x model) | all-reduces | all-reduce MB | all-gathers | all-gather MB "
           "| largest all-gather | [B, F] gathers | other collectives |", "|" + "---|" * 10]
  for r in rows:
    if "ar" not in r:
      continue
    lines.append(f"| {r['arch']} | {r['f']} | {r['sd']}x{r['sm']} | {r['ar']} | {r['ar_bytes'] / 1e6:.1f} | {r['ag']} "
                 f"| {r['ag_bytes'] / 1e6:.1f} | {r['ag_max']} | {r['bf']} | {r['other']} |")
  return "\n".join(lines)


def _cpu() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return platform.processor() or platform.machine()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--small", action="store_true", help="D=64, F=1024, B=256, meshes 1x1,1x2, in-process (seconds)")
  p.add_argument("--archs", default="softsae,topk")
  p.add_argument("--d", type=int)
  p.add_argument("--f", help="comma-separated dictionary sizes")
  p.add_argument("--batch", type=int)
  p.add_argument("--meshes", help="comma-separated DATAxMODEL, e.g. 1x1,1x8,4x2")
  p.add_argument("--max-compile-s", type=float, default=180.0, help="skip (and extrapolate) a slower compile")
  p.add_argument("--max-rss-gb", type=float, default=10.0, help="skip (and extrapolate) a compile using more RAM")
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                 help="one subprocess per compile (default: on, off with --small)")
  p.add_argument("--fast-compile", action=argparse.BooleanOptionalAction, default=True,
                 help="XLA_FLAGS --xla_backend_optimization_level=0: LLVM codegen only, ~2x faster compiles, "
                      "the same buffer assignment (checked byte-for-byte at --small and at F=65536)")
  p.add_argument("--collectives", action="store_true",
                 help="also print the collectives of each compiled step (counts, result bytes, [B, F] gathers)")
  p.add_argument("--json", help="also write the rows as JSON here")
  p.add_argument("--one", help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.one:  # child mode: one compile, one JSON line
    arch, *nums = args.one.split(",")
    d, f, batch, sd, sm, coll = map(int, nums)
    print(json.dumps(measure(arch, d, f, batch, sd, sm, bool(coll))))
    return 0

  preset = SMALL if args.small else FULL
  if args.small:
    UNIT[:] = [2.0**20, "MiB"]
  d = args.d or preset["d"]
  fs = tuple(int(x) for x in args.f.split(",")) if args.f else preset["fs"]
  batch = args.batch or preset["batch"]
  meshes = [_parse_mesh(m) for m in (args.meshes or preset["meshes"]).split(",")]
  isolate = (not args.small) if args.isolate is None else args.isolate
  if args.fast_compile:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
  n_dev = max(sd * sm for sd, sm in meshes)
  if not isolate and "jax" not in sys.modules:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n_dev}"
  import jax

  if not isolate and jax.device_count() < n_dev:
    p.error(f"the meshes need {n_dev} devices and jax has {jax.device_count()}: set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={n_dev} before jax is imported, or use --isolate")
  print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; jax {jax.__version__}; "
        f"XLA:CPU compile-only, simulated devices; CPU {_cpu()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; D={d}, B={batch}, float32; bytes per device in {UNIT[1]}", flush=True)
  rows = []
  for arch in args.archs.split(","):
    for f in fs:
      for sd, sm in meshes:
        if isolate:
          r = measure_isolated(arch, d, f, batch, sd, sm, args.max_compile_s, args.max_rss_gb, args.collectives)
        else:
          r = measure(arch, d, f, batch, sd, sm, args.collectives)
        rows.append(r)
        print(f"#   {arch} F={f} mesh {sd}x{sm}: "
              + (r["skipped"] if "skipped" in r else f"total {_gib(r['total'])} {UNIT[1]}, {r['seconds']} s, "
                 f"{r['rss_gb']} GB RSS"), file=sys.stderr, flush=True)
  coef = fit_temp(rows)
  print(table(rows, coef))
  print()
  for arch, (c, f0) in coef.items():
    r0 = next(r for r in rows if r["arch"] == arch and "p_lat" in r)
    print(f"# temp~ {arch}: {c[0]:.2f} (B/Sd)(F/Sm) 4 + {c[1]:.2f} P_lat/Sm bytes, fitted on the F={f0} rows; "
          f"P_lat = {r0['p_lat'] / r0['f']:g} F bytes, P_rep = {r0['p_rep']} bytes")
  if args.collectives:
    print()
    print(collectives_table(rows))
  if args.json:
    with open(args.json, "w") as fh:
      json.dump({"rows": rows, "coef": {a: [*map(float, c), f0] for a, (c, f0) in coef.items()}}, fh, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
