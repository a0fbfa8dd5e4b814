"""What the speed scripts print about the host: CPU model, cores, load, library versions, malloc.

Shared by benchmarks/peers.py, accelerator.py and data_path.py (imported as a sibling module: the
scripts run as ``python benchmarks/NAME.py``, which puts this directory on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time

from softsae_jax.host import reuse_freed_memory

# What `softsae` does before anything runs (softsae_jax.host): importing this module does the same, so
# every speed script times the steps as the command runs them. SOFTSAE_MALLOC=system times glibc's defaults.
MALLOC = reuse_freed_memory()


def cpu_model() -> str:
  """The first "model name" of /proc/cpuinfo, else platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown CPU"


def load() -> str:
  """The 1-minute load average, or "n/a" where the OS has none."""
  try:
    return f"{os.getloadavg()[0]:.2f}"
  except (AttributeError, OSError):
    return "n/a"


def cores() -> str:
  """"N cores", and how many this process may run on when that is fewer (taskset, cgroups)."""
  n = os.cpu_count() or 0
  try:
    usable = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    usable = n
  return f"{n} cores" + (f" ({usable} usable)" if usable < n else "")


def header(*parts: str) -> str:
  """The ``#`` line every speed script prints first: date, jax, backend, CPU, cores, load, then ``parts``."""
  import jax

  dev = jax.devices()[0]
  fields = [time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), f"jax {jax.__version__}",
            f"{dev.platform} ({dev.device_kind})", cpu_model(), cores(), f"load {load()}", MALLOC]
  return "# " + " | ".join(fields + [p for p in parts if p])


def shape_args(ap, *, d: int = 768, f: int = 16384, k: int = 64, batch: int = 1024, rounds: int = 5):
  """Adds the step-shape flags the speed scripts share (--d --f --k --batch --rounds) to ``ap``."""
  ap.add_argument("--d", type=int, default=d)
  ap.add_argument("--f", type=int, default=f)
  ap.add_argument("--k", type=int, default=k)
  ap.add_argument("--batch", type=int, default=batch)
  ap.add_argument("--rounds", type=int, default=rounds)
  return ap


def interleaved_medians(calls: dict, rounds: int, *, warmup: bool = True) -> dict[str, float]:
  """{name: median seconds} of ``fn(*args)`` for each ``name: (fn, args)`` of ``calls``, run one after the
  other in each of ``rounds`` rounds (so load from other processes hits them alike), each call ended
  by ``jax.block_until_ready``; ``warmup``: one untimed call of each first."""
  import jax

  if warmup:
    for fn, args in calls.values():
      jax.block_until_ready(fn(*args))
  ts: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(rounds):
    for name, (fn, args) in calls.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      ts[name].append(time.perf_counter() - t)
  return {name: statistics.median(v) for name, v in ts.items()}


def summary(ts: list[float]) -> tuple[float, float]:
  """(median, best) of a list of times."""
  return statistics.median(ts), min(ts)
