"""Test setup: 8 simulated CPU devices, rank promotion as an error, shared fixtures.

The device count must be set before jax initialises its backend, hence at import time here.

Randomness: a test that needs random draws beyond fixed literal seeds (e.g. the moment of a SIGKILL)
takes the ``rng`` fixture (or ``test_seed``), never ``random``/``np.random`` unseeded or the clock.
The seed is the run's ``--test-seed`` / ``$SOFTSAE_TEST_SEED`` (root conftest.py, shown in the report
header) and is printed in the test's captured output, so a failure says how to replay it.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Build the native kernels (softsae_jax.native) once, before any test starts a subprocess that would
# otherwise compile them under its own timeout.
from softsae_jax import native  # noqa: E402

native.available()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")


@pytest.fixture(scope="session")
def repo_root():
  return REPO


@pytest.fixture
def test_seed(request):
  """The integer seed for this test's random draws (printed; replay with SOFTSAE_TEST_SEED=<it>)."""
  seed = int(request.config.getoption("test_seed"))
  request.node.user_properties.append(("test_seed", seed))
  print(f"test seed: {seed} (replay: SOFTSAE_TEST_SEED={seed} pytest '{request.node.nodeid}')")
  return seed


@pytest.fixture
def rng(test_seed):
  """A NumPy Generator seeded with ``test_seed``, e.g. ``time.sleep(rng.uniform(0.0, 1.5))``."""
  return np.random.default_rng(test_seed)
