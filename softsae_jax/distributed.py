"""Multi-process runs through ``jax.distributed``: the flags and the one call that joins a cluster.

One process per host (TPU VM worker) or per GPU (SLURM task) runs the same ``softsae train`` command
on a shared workdir; ``jax.distributed.initialize`` joins them before any other jax call, after which
``jax.devices()`` lists every process's devices and the one jitted step runs on the global mesh.
``pmap`` is JAX's legacy multi-device API and is not used: the step is ``jax.jit`` over global arrays
with explicit shardings (docs/scale-out.md).

* ``--coordinator HOST:PORT --num-processes N --process-id I``: an explicit cluster (e.g. two
  processes on one machine for testing, or hosts you start yourself);
* ``--distributed auto``: JAX's cluster auto-detection (SLURM under ``srun``, Cloud TPU VMs, GKE, ...).

A peer that dies is noticed within ``--heartbeat-timeout`` seconds and the others exit with an error
instead of hanging (JAX's own defaults are minutes).
"""

from __future__ import annotations

import argparse

from softsae_jax.cli_types import nonneg_int, positive_int
from softsae_jax.errors import UserError


class DistributedError(UserError):
  """A cluster that cannot be joined: bad flags or an unreachable coordinator."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("multi-process (jax.distributed)")
  g.add_argument("--distributed", choices=("off", "auto"), default="off",
                 help="'auto': join the cluster JAX detects (SLURM under srun, Cloud TPU, ...)")
  g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address; with --num-processes and --process-id")
  g.add_argument("--num-processes", type=positive_int, metavar="N")
  g.add_argument("--process-id", type=nonneg_int, metavar="I")
  g.add_argument("--init-timeout", type=positive_int, default=120, metavar="S",
                 help="seconds to wait for every process to join (default 120)")
  g.add_argument("--heartbeat-timeout", type=positive_int, default=20, metavar="S",
                 help="seconds without a heartbeat before a peer counts as dead (default 20)")


def initialize(args: argparse.Namespace) -> bool:
  """Joins the cluster the flags describe; False (and nothing done) for a single-process run.

  Must run before any other jax call that touches devices.
  """
  explicit = [args.coordinator, args.num_processes, args.process_id]
  if args.distributed == "off" and all(v is None for v in explicit):
    return False
  import jax

  kw = dict(initialization_timeout=args.init_timeout, heartbeat_timeout_seconds=args.heartbeat_timeout,
            shutdown_timeout_seconds=args.heartbeat_timeout)
  if args.distributed == "auto":
    if any(v is not None for v in explicit):
      raise DistributedError("--distributed auto detects the cluster: drop --coordinator/--num-processes/--process-id")
    try:
      jax.distributed.initialize(**kw)
    except (ValueError, RuntimeError) as e:
      raise DistributedError(f"--distributed auto: no cluster detected or it could not be joined ({_first(e)})") from None
    return True
  if any(v is None for v in explicit):
    raise DistributedError("--coordinator, --num-processes and --process-id go together")
  if not 0 <= args.process_id < args.num_processes:
    raise DistributedError(f"--process-id must be in [0, {args.num_processes}); got {args.process_id}")
  if ":" not in args.coordinator:
    raise DistributedError(f"--coordinator must be HOST:PORT; got {args.coordinator!r}")
  try:
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id, **kw)
  except (ValueError, RuntimeError) as e:
    raise DistributedError(f"could not join the cluster at {args.coordinator} ({_first(e)})") from None
  return True


def _first(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__
