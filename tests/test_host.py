"""softsae_jax.host: glibc malloc keeps freed memory (checked in fresh processes), or is left alone."""

import os
import subprocess
import sys
import textwrap

import pytest

from softsae_jax import host

# In a fresh process: malloc and touch a 256 MiB block, free it, and report how much of it is still
# resident. glibc's defaults serve such a block by mmap and unmap it on free (nothing stays); with
# reuse_freed_memory() it comes from the heap and stays, ready for the next allocation of that size.
_PROBE = textwrap.dedent("""
    import ctypes, sys
    from softsae_jax import host
    said = host.reuse_freed_memory() if sys.argv[1] == "tune" else "untouched"
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    n = 256 << 20
    before = rss()
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
    print(said)
    print((rss() - before) / n)
""")


def _glibc() -> bool:
  if not sys.platform.startswith("linux"):
    return False
  import ctypes

  return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


def _probe(mode: str, **env) -> tuple[str, float]:
  clean = {k: v for k, v in os.environ.items() if k not in host.USER_SETTINGS and k != host.ENV}
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                       check=True, timeout=60).stdout.split("\n")
  return out[0], float(out[1])


@pytest.mark.skipif(not _glibc(), reason="glibc malloc only")
def test_freed_memory_stays_for_reuse_only_when_tuned():
  said, kept = _probe("tune")
  assert said == "glibc malloc keeps freed memory"
  assert kept > 0.9  # the freed block is still resident: the next step reuses it without page faults
  said, kept = _probe("plain")
  assert kept < 0.1  # glibc's default unmapped it


@pytest.mark.skipif(not _glibc(), reason="glibc malloc only")
@pytest.mark.parametrize("env,why", [({"SOFTSAE_MALLOC": "system"}, "SOFTSAE_MALLOC=system"),
                                     ({"MALLOC_ARENA_MAX": "4"}, "MALLOC_ARENA_MAX is set"),
                                     ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "GLIBC_TUNABLES is set")])
def test_left_alone_when_the_user_chose(env, why):
  said, kept = _probe("tune", **env)
  assert said == f"malloc left as is ({why})"
  assert kept < 0.1


def test_the_environment_equivalent_names_the_same_settings():
  assert host.reuse_freed_memory({"SOFTSAE_MALLOC": "System"}) == "malloc left as is (SOFTSAE_MALLOC=system)"
  assert host.reuse_freed_memory({"LD_PRELOAD": "libjemalloc.so"}) == "malloc left as is (LD_PRELOAD is set)"
  assert set(host.GLIBC_ENV) <= set(host.USER_SETTINGS)
  assert host.GLIBC_ENV["MALLOC_TRIM_THRESHOLD_"] == str(host.TRIM_THRESHOLD)
