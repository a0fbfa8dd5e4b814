"""Repository-wide pytest setup (loaded before tests/conftest.py).

* The seed of the tests' random draws: ``--test-seed N``, else ``$SOFTSAE_TEST_SEED``, else a fixed
  default; printed in the report header. The ``test_seed`` and ``rng`` fixtures (tests/conftest.py)
  derive each test's own seed from it.
* ``--doctest-modules`` (pyproject.toml) also collects the package: without torch or transformers
  (the ``bridge`` extra) the bridge modules are left out of that collection instead of failing it.
"""

import importlib.util
import os

import pytest

SEED_ENV = "SOFTSAE_TEST_SEED"
DEFAULT_SEED = 20240229
BRIDGE_DEPS = ("torch", "transformers")


def _env_seed() -> int:
  raw = os.environ.get(SEED_ENV, "").strip()
  if not raw:
    return DEFAULT_SEED
  try:
    return int(raw, 0)
  except ValueError:
    raise pytest.UsageError(f"{SEED_ENV} must be an integer, got {raw!r}") from None


def _has(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


_MISSING = [m for m in BRIDGE_DEPS if not _has(m)]
collect_ignore_glob = ["softsae_jax/bridge/*"] if _MISSING else []
# softsae_jax/torch_module.py is torch-only (no jax): without torch it is left out of the doctest collection.
if not _has("torch"):
  collect_ignore_glob.append("softsae_jax/torch_module.py")


def pytest_addoption(parser):
  parser.addoption("--test-seed", type=int, default=None, metavar="N",
                   help=f"base seed of the tests' random draws (default: ${SEED_ENV}, else {DEFAULT_SEED})")


def pytest_configure(config):
  if config.getoption("test_seed") is None:
    config.option.test_seed = _env_seed()


def pytest_report_header(config):
  lines = [f"softsae test seed: {config.getoption('test_seed')} "
           f"(replay with {SEED_ENV}=<seed> or --test-seed <seed>)"]
  if _MISSING:
    lines.append(f"softsae doctests: softsae_jax/bridge/* not collected ({', '.join(_MISSING)} not installed)")
  return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  """The seed again at the end, where `pytest -q` (make test) shows it too."""
  terminalreporter.write_line(f"softsae test seed: {config.getoption('test_seed')}")


@pytest.fixture(autouse=True)
def _doctests_write_under_tmp_path(request):
  """Docstring examples run in a fresh tmp_path, and tempfile's files go there too (not into /tmp)."""
  if not isinstance(request.node, pytest.DoctestItem):
    yield
    return
  import tempfile

  tmp_path = request.getfixturevalue("tmp_path")
  monkeypatch = request.getfixturevalue("monkeypatch")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  yield
