"""The host process's memory allocator: glibc malloc set to keep freed memory for reuse.

Why: XLA:CPU allocates every run of an executable's temporaries afresh, and by default glibc hands
large freed blocks back to the operating system (blocks above the mmap threshold, the heaps of the
per-thread arenas that XLA's worker threads allocate from, the trimmed top of the main heap). The
next training step then page-faults on the same memory again and the kernel zeroes every page: on a
2-core CPU a third of a TopK step's time (d = 384, F = 4096, B = 1024) was spent in the kernel,
and keeping the memory made the TopK and SoftSAE steps 1.7-1.9x faster at d = 384 and 2.5-2.7x at
d = 768 (docs/benchmarks.md, "Host memory").

:func:`reuse_freed_memory` sets, through ``mallopt``: one arena for all threads (``M_ARENA_MAX``),
no blocks served by ``mmap`` (``M_MMAP_MAX`` = 0), and no trimming below 2 GiB of free heap
(``M_TRIM_THRESHOLD``). All three are needed: any one left at glibc's default keeps most of the
page faults. The cost is that the process's resident memory stays at its high-water mark. The
``softsae`` command calls it before any JAX computation; a library user may call it the same way
(before the first computation: XLA's threads take their arena at their first allocation) or set
glibc's own variables (``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``).

It leaves the allocator alone where the C library is not glibc, where ``SOFTSAE_MALLOC=system``,
and where the environment already tunes malloc (glibc's ``MALLOC_*`` variables or ``GLIBC_TUNABLES``)
or preloads another allocator (``LD_PRELOAD``, e.g. jemalloc or tcmalloc).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

ENV = "SOFTSAE_MALLOC"  # "system": leave malloc as the C library set it up
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes a C int: the largest, 2 GiB
# The variables that mean the user (or a launcher) already chose how malloc behaves.
USER_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                 "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")
# The same settings as environment variables, for a process that does not call this module.
GLIBC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def reuse_freed_memory(environ: Mapping[str, str] | None = None) -> str:
  """Sets glibc malloc to keep freed memory for reuse (one arena, no mmap'd blocks, no trimming).

  Returns what it did, one phrase for a log line: ``"glibc malloc keeps freed memory"`` or
  ``"malloc left as is (<why>)"``. Idempotent; never raises.
  """
  env = os.environ if environ is None else environ
  if env.get(ENV, "").strip().lower() == "system":
    return f"malloc left as is ({ENV}=system)"
  preset = [name for name in USER_SETTINGS if env.get(name)]
  if preset:
    return f"malloc left as is ({preset[0]} is set)"
  if not sys.platform.startswith("linux"):
    return f"malloc left as is (not glibc: {sys.platform})"
  try:
    libc = ctypes.CDLL(None)
    version = libc.gnu_get_libc_version
    version.restype = ctypes.c_char_p
    glibc = version().decode()
    mallopt = libc.mallopt
  except (AttributeError, OSError):
    return "malloc left as is (the C library is not glibc)"
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  done = [mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
  if not all(done):
    return f"malloc left partly as is (glibc {glibc} refused a mallopt setting)"
  return "glibc malloc keeps freed memory"
