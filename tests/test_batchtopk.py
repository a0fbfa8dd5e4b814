"""BatchTopK / Matryoshka training selection with masked rows (``data.skip_nonfinite``).

A masked row (valid 0) reaches the arch as zeros; its pre-activations ReLU(b_enc - b_dec W_enc) are not
zero and used to compete for the batch's k*B slots, taking latents from the valid rows. The selection
must be the batch top-k of the valid rows alone, at k per valid row, on one device and latent-sharded.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from softsae_jax import archs, parallel, sharding
from softsae_jax import config as config_lib
from softsae_jax.sae import batch_topk, pre_acts
from softsae_jax.train import schedules

D, F, B, K = 8, 32, 16, 3
MASKED = np.array([2, 5, 11])


def setup(arch, seed):
  cfg = config_lib.Config(sae=config_lib.SaeConfig(arch=arch, k=K, n_latents=F),
                          train=config_lib.TrainConfig(steps=50, batch_size=B)).resolve(D)
  rng = np.random.default_rng(seed)
  params = archs.init_params(jax.random.key(seed), cfg.sae)
  # A b_dec far from the data: a zeroed row's pre-activations are then the largest of the batch.
  params = params._replace(b_dec=jnp.asarray(3.0 * rng.normal(size=D), jnp.float32))
  valid_B = np.ones(B, np.float32)
  valid_B[MASKED] = 0.0
  x_BD = rng.normal(size=(B, D)).astype(np.float32) * valid_B[:, None]  # as train._batch zeroes them
  return cfg, params, jnp.asarray(x_BD), jnp.asarray(valid_B)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_masked_rows_take_no_part_in_the_batch_selection(arch, test_seed):
  cfg, params, x_BD, valid_B = setup(arch, test_seed)
  keep = np.flatnonzero(np.asarray(valid_B))
  pre_BF = pre_acts(params, x_BD, cfg.sae)
  assert np.any(np.asarray(batch_topk(pre_BF, K))[MASKED] > 0)  # unmasked, they would take slots
  terms = archs.get(arch).train_terms(params, x_BD, valid_B, schedules(cfg, 10), cfg, None)
  acts_BF = np.asarray(terms.acts_BF)
  np.testing.assert_array_equal(acts_BF[MASKED], 0.0)
  np.testing.assert_array_equal(acts_BF[keep], batch_topk(pre_BF[keep], K))  # k per valid row
  # Every row valid: unchanged, the k*B largest of the batch.
  terms = archs.get(arch).train_terms(params, x_BD, jnp.ones(B), schedules(cfg, 10), cfg, None)
  np.testing.assert_array_equal(terms.acts_BF, batch_topk(pre_BF, K))


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_masked_rows_take_no_part_in_the_sharded_batch_selection(arch, test_seed):
  """On a (2, 2) mesh (rows and latents split) the same selection as one device."""
  cfg, params, x_BD, valid_B = setup(arch, test_seed)
  mesh = sharding.make_mesh(2, 2, devices=jax.devices()[:4])
  put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
  sched = schedules(cfg, 10)
  ref = archs.get(arch).train_terms(params, x_BD, valid_B, sched, cfg, None).acts_BF
  p_sh = params._replace(w_enc=put(params.w_enc, P(None, "model")), b_enc=put(params.b_enc, P("model")),
                         w_dec=put(params.w_dec, P("model", None)))
  got = jax.jit(lambda p, x, v: archs.get(arch).train_terms(p, x, v, sched, cfg, mesh).acts_BF)(
      p_sh, put(x_BD, P("data", None)), put(valid_B, P("data")))
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows,n_valid", [(16, 13), (1000, 127), (1000, 502), (1020, 341)])
def test_batch_topk_count_keeps_round_count_times_rows(rows, n_valid, test_seed):
  """count = k * n_valid / rows keeps exactly k * n_valid entries, on one device and sharded alike,
  also where float32 rounds count * rows to just below or above that integer."""
  rng = np.random.default_rng(test_seed)
  pre_BF = jnp.asarray(rng.uniform(0.01, 1.0, size=(rows, 8)), jnp.float32)  # no zeros, no ties
  c = jnp.float32(K) * (jnp.float32(n_valid) / jnp.float32(rows))
  local = np.asarray(parallel.batch_topk(pre_BF, K, None, count=c))
  assert int((local > 0).sum()) == K * n_valid
  mesh = sharding.make_mesh(2, 2, devices=jax.devices()[:4])
  got = jax.jit(lambda p, c: parallel.batch_topk(p, K, mesh, count=c))(
      jax.device_put(pre_BF, NamedSharding(mesh, P("data", "model"))), c)
  np.testing.assert_array_equal(np.asarray(got), local)
