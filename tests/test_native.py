"""softsae_jax.native: the jax.ffi top-k kernel is lax.top_k bit for bit, differentiates and batches
like it, and a machine that cannot build it falls back to the pure-XLA path with one warning."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softsae_jax import native, topk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _need_native():
  if not native.available():
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
      pytest.fail(f"the native kernel must build in CI: {native._load()}")
    pytest.skip(f"native kernel unavailable here: {native._load()}")


def _cases(rng, f):
  x = rng.normal(size=(40, f)).astype(np.float32)
  relu = np.maximum(x - 0.5, 0.0)
  relu[::2] *= -1.0  # -0.0 zeros in every other row
  zeros = np.zeros((6, f), np.float32)
  zeros[:, ::7] = -0.0
  zeros[1, f // 2], zeros[2, f // 3:] = 1.0, 2.0
  odd = x[:8].copy()
  odd[0, [0, min(3, f - 1), f - 1]] = np.nan
  odd[1, :] = -np.inf
  odd[2, f // 2] = np.inf
  odd[3, : f // 2] = -np.nan  # NaN with the sign bit set: below -inf in XLA's TopK order
  odd[4, :] = np.nan
  return (x, relu, zeros, np.round(x * 2) / 2, odd, x.reshape(2, 20, f))


@pytest.mark.parametrize("f,k", [(4096, 32), (4096, 80), (1000, 37), (33, 1), (33, 32), (33, 33), (16, 16),
                                 (17, 2), (256, 200), (5, 3), (1, 1), (15, 15)])
def test_native_top_k_is_lax_top_k_bit_for_bit(f, k):
  """Values (as bits) and indices equal lax.top_k's: widths off the 16-entry chunks, k = 1, k = F,
  k above the number of chunks, ReLU zeros of both signs, ties, NaN of both signs, infinities, leading
  dims."""
  _need_native()
  rng = np.random.default_rng(f * 1000 + k)
  for case in _cases(rng, f):
    want_v, want_i = jax.jit(lambda a: jax.lax.top_k(a, k))(case)
    got_v, got_i = jax.jit(lambda a: native.top_k(a, k))(case)
    np.testing.assert_array_equal(np.asarray(got_v).view(np.int32), np.asarray(want_v).view(np.int32))
    np.testing.assert_array_equal(got_i, want_i)


def test_native_top_k_many_rows_on_all_threads():
  """Enough rows for every intra-op thread to take blocks (16 rows each), a count not a multiple of
  16, repeated calls: every row is written, and written right."""
  _need_native()
  x = jax.random.normal(jax.random.key(3), (1021, 512))
  f = jax.jit(lambda a: native.top_k(a, 24))
  want = jax.lax.top_k(x, 24)
  for _ in range(5):
    got = f(x)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_native_top_k_small_and_empty_calls():
  """Many calls with a few blocks each (late pool tasks find no work left), and no rows at all."""
  _need_native()
  f = jax.jit(lambda a: native.top_k(a, 3))
  for rows in (1, 15, 16, 17, 33, 0) * 20:
    x = jax.random.normal(jax.random.key(rows), (rows, 40))
    got, want = f(x), jax.lax.top_k(x, 3)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_native_top_k_gradient_and_vmap_match_lax():
  _need_native()
  x = jax.random.normal(jax.random.key(1), (3, 9, 300))

  def loss(fn, a):
    v, i = fn(a, 7)
    return jnp.sum(v ** 2 * (1.0 + i.astype(jnp.float32)))

  np.testing.assert_array_equal(jax.grad(lambda a: loss(native.top_k, a))(x),
                                jax.grad(lambda a: loss(jax.lax.top_k, a))(x))
  got = jax.vmap(jax.vmap(lambda a: native.top_k(a, 5)))(x)
  want = jax.lax.top_k(x, 5)
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(got[0], want[0])
  _, tangent = jax.jvp(lambda a: native.top_k(a, 4)[0], (x,), (jnp.ones_like(x),))
  np.testing.assert_array_equal(tangent, np.ones((3, 9, 4), np.float32))


def test_topk_top_k_uses_the_native_kernel_on_the_cpu():
  _need_native()
  hlo = jax.jit(lambda a: topk.top_k(a, 32)).lower(jnp.zeros((8, 4096), jnp.float32)).as_text()
  assert native._TARGET in hlo
  # not for other dtypes (lax.top_k itself)
  hlo = jax.jit(lambda a: topk.top_k(a, 32)).lower(jnp.zeros((8, 4096), jnp.bfloat16)).as_text()
  assert native._TARGET not in hlo


def test_cxx_may_carry_words_of_its_own(tmp_path):
  """CXX="env g++"-style commands (ccache, a wrapper) are split into the command and its words."""
  _need_native()
  wrapper = f"env {native._compiler()[0]}"
  out = _probe(tmp_path, CXX=wrapper)
  assert out == {"ok": True, "same": [True, True], "warnings": []}
  (lib,) = (tmp_path / "cache").glob("cpu_kernels-*.so")
  assert lib.stat().st_mode & 0o044 == 0o044  # readable by others: a shared cache serves everyone


def test_native_top_k_rejects_what_it_cannot_do():
  _need_native()
  with pytest.raises(ValueError, match="float32 with 1 <= k"):
    native.top_k(jnp.zeros((2, 4), jnp.float32), 5)
  with pytest.raises(ValueError, match="float32 with 1 <= k"):
    native.top_k(jnp.zeros((2, 4), jnp.bfloat16), 2)


_PROBE = """
import warnings, json, jax, numpy as np
from softsae_jax import native, topk
with warnings.catch_warnings(record=True) as w:
  warnings.simplefilter("always")
  ok = native.available(); native.available()
  x = jax.random.normal(jax.random.key(0), (16, 1024))
  same = [np.array_equal(a, b) for a, b in zip(jax.jit(lambda a: topk.top_k(a, 8))(x), jax.lax.top_k(x, 8))]
print(json.dumps({"ok": ok, "same": same, "warnings": [str(m.message) for m in w if "native" in str(m.message)]}))
"""


def _probe(tmp_path, **env):
  import json
  run_env = {k: v for k, v in os.environ.items() if k not in ("CXX", native.ENV_SWITCH)}
  run_env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", SOFTSAE_CACHE_DIR=str(tmp_path / "cache"))
  if native._compiler():  # the compiler this process found, unless a test names another
    run_env["CXX"] = " ".join(native._compiler())
  run_env.update(env)
  proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=run_env, cwd=REPO,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cxx,why", [("/nonexistent/c++", "no C++ compiler found"), ("false", "exited with 1")])
def test_without_a_working_compiler_top_k_falls_back_with_one_warning(tmp_path, cxx, why):
  out = _probe(tmp_path, CXX=cxx)
  assert out["ok"] is False and out["same"] == [True, True]
  assert len(out["warnings"]) == 1 and why in out["warnings"][0], out["warnings"]
  assert "SOFTSAE_NATIVE=off" in out["warnings"][0]
  assert not list((tmp_path / "cache").glob("*.so"))


def test_native_off_builds_nothing_and_says_nothing(tmp_path):
  out = _probe(tmp_path, SOFTSAE_NATIVE="off")
  assert out == {"ok": False, "same": [True, True], "warnings": []}
  assert not (tmp_path / "cache").exists()


def test_build_goes_to_the_cache_once(tmp_path):
  _need_native()
  out = _probe(tmp_path)
  assert out == {"ok": True, "same": [True, True], "warnings": []}
  (lib,) = (tmp_path / "cache").glob("cpu_kernels-*.so")
  built = lib.stat().st_mtime_ns
  assert not list((tmp_path / "cache").glob("*.tmp"))
  assert _probe(tmp_path)["ok"] is True
  assert lib.stat().st_mtime_ns == built  # reused, not rebuilt
