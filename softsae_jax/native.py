"""Native XLA:CPU kernels through ``jax.ffi``, compiled from ``softsae_jax/csrc`` on first use.

One kernel so far: :func:`top_k`, ``lax.top_k`` over the last axis of a float32 array, the same values
and indices bit for bit (ties, NaN, -0.0), 3.0-3.7x faster than ``lax.top_k`` on one core at the
training step's shapes, 5-7x on two (its rows are shared among XLA's intra-op threads;
``benchmarks/topk.py --top-k``, docs/benchmarks.md "Exact top-k"). ``softsae_jax.topk.top_k`` calls it on the CPU backend where it is available.

Building. The first call of :func:`available` in a process compiles ``csrc/cpu_kernels.cc`` against the
FFI headers shipped with jaxlib (``jax.ffi.include_dir()``), with the C++ compiler in ``$CXX`` (words
after the first are passed on, e.g. ``ccache g++``) or the first of ``c++``, ``g++``, ``clang++`` on
the PATH, at ``-O3`` with no CPU-specific flags, into
``$SOFTSAE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/softsae_jax``, else ``~/.cache/softsae_jax``); the
file's name is a hash of the source, the jaxlib version, the compiler and the flags, so a new version
of any of them builds afresh and concurrent processes do not clash (each writes its own temporary
file and renames it into place). Compiling takes a few seconds, once per cache.

Where it cannot be built (no compiler, a read-only cache) or loaded, :func:`available` is False, one
warning says why and how to silence it, and ``topk.top_k`` keeps its pure-XLA path: the results are
the same, only slower. ``SOFTSAE_NATIVE=off`` turns the kernels off without trying (nothing is
compiled or loaded, no warning).

Sharding. The custom call is opaque to XLA's partitioner: under a jit whose operand is split over
several devices, XLA gathers the whole array and runs the call on it, as it does for ``lax.top_k``
(a sweep of ``softsae train`` on a mesh of several devices selects so; the latent-sharded paths of
``softsae_jax.parallel`` select inside ``shard_map`` with ``lax.top_k``). On one device, the case it
is made for, nothing is gathered.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["available", "top_k", "ENV_SWITCH"]

ENV_SWITCH = "SOFTSAE_NATIVE"
_SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cc"
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")
_TARGET = "softsae_jax_top_k"  # the custom-call target; its handler is the library's symbol _SYMBOL
_SYMBOL = "SoftsaeTopK"


def _compiler() -> list[str] | None:
  """The C++ compiler's command: ``$CXX`` (which may carry words of its own, e.g. ``ccache g++``), else
  the first of ``c++``, ``g++``, ``clang++`` on the PATH; None if there is none."""
  cxx = shlex.split(os.environ.get("CXX", ""))
  if cxx:
    found = shutil.which(cxx[0]) or (cxx[0] if os.path.isfile(cxx[0]) else None)
    return [found, *cxx[1:]] if found else None
  for name in ("c++", "g++", "clang++"):
    found = shutil.which(name)
    if found:
      return [found]
  return None


def cache_dir() -> Path:
  """Where the compiled kernels live: ``$SOFTSAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/softsae_jax``,
  else ``~/.cache/softsae_jax``."""
  if os.environ.get("SOFTSAE_CACHE_DIR"):
    return Path(os.environ["SOFTSAE_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "softsae_jax"


def _build(cxx: list[str]) -> Path:
  """The compiled library's path, compiling it first if the cache does not hold it yet."""
  import jaxlib

  source = _SOURCE.read_bytes()
  tag = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), " ".join(cxx).encode(), " ".join(_FLAGS).encode(),
                                   platform.machine().encode(), platform.system().encode()])).hexdigest()[:16]
  out = cache_dir() / f"cpu_kernels-{tag}.so"
  if out.is_file():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".so.tmp", dir=out.parent)
  os.close(fd)
  try:
    cmd = [*cxx, *_FLAGS, "-I", jax.ffi.include_dir(), str(_SOURCE), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300, check=False)
    if proc.returncode != 0:
      last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
      raise OSError(f"{' '.join(cxx)} exited with {proc.returncode}: {last}")
    os.chmod(tmp, 0o755)  # mkstemp's 0600 would keep other users of a shared cache out
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
  """Compiles (once per cache) and registers the kernels; None on success, else why not."""
  if os.environ.get(ENV_SWITCH, "").lower() in ("0", "off", "false", "no"):
    return f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
  cxx = _compiler()
  if cxx is None:
    return "no C++ compiler found ($CXX, c++, g++, clang++)"
  try:
    lib = ctypes.CDLL(str(_build(cxx)))
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(getattr(lib, _SYMBOL)), platform="cpu")
  except (OSError, subprocess.SubprocessError, AttributeError) as e:
    return f"{type(e).__name__}: {e}"
  return None


def available() -> bool:
  """Whether the native kernels are built and registered in this process (builds them on the first
  call; a failure is warned about once and leaves the pure-XLA paths in use)."""
  why = _load()
  if why is not None and not why.startswith(ENV_SWITCH):
    _warn_once(why)
  return why is None


@functools.lru_cache(maxsize=None)
def _warn_once(why: str) -> None:
  warnings.warn(f"softsae_jax: native CPU kernels unavailable ({why}); using the slower pure-XLA top-k. "
                f"Install a C++ compiler (or set CXX) to build them, or set {ENV_SWITCH}=off to silence this.",
                RuntimeWarning, stacklevel=3)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """``lax.top_k(x, k)`` for a float32 ``x`` on the CPU, by the native kernel (requires
  :func:`available`); differentiable in ``x`` like ``lax.top_k`` (the values' tangents are gathered)."""
  if x.dtype != jnp.float32 or x.ndim < 1 or not 1 <= k <= x.shape[-1]:
    raise ValueError(f"native top_k needs float32 with 1 <= k <= the last axis; got {x.dtype}{list(x.shape)}, k={k}")
  if (why := _load()) is not None:
    raise RuntimeError(f"softsae_jax's native kernels are unavailable ({why}); use softsae_jax.topk.top_k")
  out = (jax.ShapeDtypeStruct(x.shape[:-1] + (k,), jnp.float32), jax.ShapeDtypeStruct(x.shape[:-1] + (k,), jnp.int32))
  with jax.named_scope("native_top_k"):  # the op's name in profiles (benchmarks/accelerator.py --profile)
    return jax.ffi.ffi_call(_TARGET, out, vmap_method="broadcast_all")(x)


@top_k.defjvp
def _top_k_jvp(k, primals, tangents):
  (x,), (x_dot,) = primals, tangents
  vals, idx = top_k(x, k)
  return (vals, idx), (jnp.take_along_axis(x_dot, idx, axis=-1), np.zeros(idx.shape, jax.dtypes.float0))

