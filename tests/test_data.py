"""Shard validation, the deterministic shuffled loader, non-finite rows, config parsing, checkpoints."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softsae_jax import config as config_lib
from softsae_jax.config import ConfigError
from softsae_jax.data import BatchSource, NonFiniteError, estimate_norm_factor, finite_rows, prefetch, read_rows
from softsae_jax.shards import DataError, ShardWriter, open_dataset

D = 4


def write(path, rows=(10, 7, 13), dtype="float32", seed=0):
  rng = np.random.default_rng(seed)
  w = ShardWriter(str(path), D, dtype)
  x = rng.normal(size=(sum(rows), D)).astype(dtype)
  lo = 0
  for r in rows:
    w.rows_per_shard = r
    w.add(x[lo:lo + r], tokens=np.arange(lo, lo + r))
    lo += r
  w.close()
  return x


def test_writer_roundtrip_and_read_rows(tmp_path):
  x = write(tmp_path / "d")
  ds = open_dataset(str(tmp_path / "d"))
  assert ds.n_rows == 30 and [s.rows for s in ds.shards] == [10, 7, 13]
  idx = np.array([29, 0, 12, 10, 9, 17, 3])
  np.testing.assert_array_equal(read_rows(ds, idx), x[idx])
  assert ds.locate(12) == ("shard_00001.npy", 2)
  np.testing.assert_array_equal(np.concatenate([ds.side("tokens", i) for i in range(3)]), np.arange(30))
  assert isinstance(ds.mmap(0), np.memmap)


def _corrupt(tmp_path, how):
  d = tmp_path / how
  write(d)
  m = json.loads((d / "manifest.json").read_text())
  if how == "width":
    m["d_model"] = 5
  elif how == "rows":
    m["shards"][1]["rows"] = 8
  elif how == "missing_shard":
    os.remove(d / "shard_00002.npy")
  elif how == "truncated":
    data = (d / "shard_00001.npy").read_bytes()
    (d / "shard_00001.npy").write_bytes(data[:-9])
  elif how == "garbage":
    (d / "shard_00000.npy").write_bytes(b"not a numpy file at all")
  elif how == "dtype":
    m["dtype"] = "float16"
  elif how == "incomplete":
    m["complete"] = False
  elif how == "format":
    m["format"] = "something/2"
  (d / "manifest.json").write_text(json.dumps(m))
  return str(d)


@pytest.mark.parametrize("how,pattern", [
    ("width", r"shard_00000.npy: width 4 does not match manifest d_model=5"),
    ("rows", r"shard_00001.npy: has 7 rows but the manifest says 8"),
    ("missing_shard", r"shard .*shard_00002.npy listed in the manifest is missing"),
    ("truncated", r"shard .*shard_00001.npy is unreadable or truncated"),
    ("garbage", r"shard .*shard_00000.npy is unreadable or truncated"),
    ("dtype", r"dtype float32 does not match manifest dtype float16"),
    ("incomplete", r"did not finish"),
    ("format", r"expected \"format\": \"softsae-activations/1\""),
])
def test_bad_datasets_give_one_line_errors(tmp_path, how, pattern):
  d = _corrupt(tmp_path, how)
  with pytest.raises(DataError, match=pattern) as e:
    open_dataset(d)
  assert "\n" not in str(e.value)


def test_missing_dir_and_manifest(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    open_dataset(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="manifest.json not found"):
    open_dataset(str(tmp_path / "empty"))
  (tmp_path / "badjson").mkdir()
  (tmp_path / "badjson" / "manifest.json").write_text("{oops")
  with pytest.raises(DataError, match="not valid JSON"):
    open_dataset(str(tmp_path / "badjson"))


def test_shuffle_is_deterministic_global_and_per_epoch(tmp_path):
  write(tmp_path / "d", rows=(10, 10, 10))
  ds = open_dataset(str(tmp_path / "d"))
  a = BatchSource(ds, 6, seed=1)
  b = BatchSource(ds, 6, seed=1)
  c = BatchSource(ds, 6, seed=2)
  epoch0 = np.concatenate([a.indices(s) for s in range(5)])
  epoch1 = np.concatenate([a.indices(s) for s in range(5, 10)])
  assert sorted(epoch0) == list(range(30)) and sorted(epoch1) == list(range(30))
  assert list(epoch0) != list(epoch1)  # reshuffled each epoch
  assert list(epoch0) != list(range(30))
  np.testing.assert_array_equal(a.indices(7), b.indices(7))
  assert list(c.indices(0)) != list(a.indices(0))
  # A batch reads exactly those rows.
  x, valid = a.batch(3)
  np.testing.assert_array_equal(x, read_rows(ds, a.indices(3)))
  assert valid.all()
  assert a.state(4) == {"seed": 1, "step": 4, "rows_read": 24, "epoch": 0, "n_rows": 30}


@pytest.mark.parametrize("n_rows", [1, 3, 30, 1000, 16384, 16385, 65537, 131073, 100_003, 2 ** 20 + 1, 10 ** 7])
def test_shuffle_is_grains_permutation_bit_for_bit(n_rows):
  """The vectorised order (softsae_jax.shuffle) is grain's range(N).shuffle(seed).repeat() position for
  position, across epoch boundaries, with and without the epoch table (N <= 2**14), for seeds at both
  ends of the 32-bit range (the epoch's seed wraps), N = 2**20 + 1 included (grain's power-of-two
  quirk), so checkpoints written with grain's per-row order resume on the same batches."""
  grain = pytest.importorskip("grain")
  from softsae_jax.shuffle import shuffled_rows

  rng = np.random.default_rng(n_rows)
  pos = np.unique(np.concatenate([np.arange(min(3 * n_rows, 2500)), rng.integers(0, 4 * n_rows, 700),
                                  n_rows * np.arange(1, 4) - 1, n_rows * np.arange(1, 4)]))
  for seed in (0, 12345, 2 ** 32 - 2):
    ref = grain.MapDataset.range(n_rows).shuffle(seed=seed).repeat(None)
    np.testing.assert_array_equal(shuffled_rows(pos, n_rows, seed), [ref[int(p)] for p in pos])
  if n_rows <= 2 ** 21:  # an epoch is a permutation, but for grain's quirk at N = 2**b + 1, b even >= 16
    epoch = shuffled_rows(np.arange(n_rows), n_rows, 0)
    assert len(np.unique(epoch)) == n_rows - (n_rows in (2 ** 16 + 1, 2 ** 20 + 1))


def test_each_process_reads_its_rows(tmp_path):
  """A process reads only its row range of each global batch; the ranges of the processes tile it, and
  ``whole=True`` (b_dec's batch 0) reads all of it on every process."""
  write(tmp_path / "d", rows=(10, 10, 10))
  ds = open_dataset(str(tmp_path / "d"))
  full = BatchSource(ds, 8, seed=0).indices(2)
  parts = [BatchSource(ds, 8, seed=0, rows=slice(2 * p, 2 * p + 2)).batch(2)[0] for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), read_rows(ds, full))
  np.testing.assert_array_equal(BatchSource(ds, 8, seed=0, rows=slice(0, 2)).batch(2, whole=True)[0],
                                read_rows(ds, full))


def test_process_rows_and_to_global_on_a_mesh():
  """sharding.process_rows gives a single process every row; to_global places each device's rows."""
  import jax

  from softsae_jax import sharding
  from softsae_jax.data import to_global

  mesh = sharding.make_mesh(4, 2)
  rows_sh, mask_sh = sharding.batch_shardings(mesh)
  assert sharding.process_rows(rows_sh, 16) == slice(0, 16)
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  g = to_global(x, rows_sh, (16, 3))
  np.testing.assert_array_equal(np.asarray(g), x)
  for shard in g.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), x[shard.index])
  v = to_global(np.arange(16) % 2 == 0, mask_sh, (16,))
  assert v.sharding.is_equivalent_to(mask_sh, 1) and bool(np.asarray(v)[0])


def test_nonfinite_rows_named_or_skipped(tmp_path):
  d = tmp_path / "d"
  x = write(d, rows=(10, 10))
  arr = np.load(d / "shard_00001.npy")
  arr[4, 2] = np.nan
  np.save(d / "shard_00001.npy", arr)
  ds = open_dataset(str(d))
  src = BatchSource(ds, 20, seed=0)
  with pytest.raises(NonFiniteError, match=r"shard_00001.npy row 4 \(global row 14\)"):
    src.batch(0)
  xs, valid = BatchSource(ds, 20, seed=0, skip_nonfinite=True).batch(0)
  assert (~valid).sum() == 1
  chex.assert_tree_all_finite(xs)
  assert BatchSource(ds, 20, seed=0, skip_nonfinite=True).indices(0)[~valid][0] == 14
  del x


def test_norm_factor_and_prefetch(tmp_path):
  x = write(tmp_path / "d")
  ds = open_dataset(str(tmp_path / "d"))
  nf = estimate_norm_factor(ds, 1000, False)
  np.testing.assert_allclose(nf, np.sqrt(np.mean(np.sum(x.astype(np.float64) ** 2, 1))), rtol=1e-6)
  assert list(prefetch(lambda s: s * 2, range(5), 2)) == [0, 2, 4, 6, 8]

  def boom(s):
    if s == 3:
      raise DataError("bad row")
    return s

  got = []
  with pytest.raises(DataError, match="bad row"):
    for v in prefetch(boom, range(6), 2):
      got.append(v)
  assert got == [0, 1, 2]


def test_writer_resume(tmp_path):
  d = str(tmp_path / "d")
  w = ShardWriter(d, D, "float16", rows_per_shard=5)
  w.add(np.ones((12, D)))  # two shards flushed, 2 rows buffered (lost on a kill)
  w2 = ShardWriter.resume(d)
  assert w2.n_rows == 10
  w2.add(np.zeros((3, D)))
  w2.close()
  ds = open_dataset(d)
  assert ds.n_rows == 13 and ds.dtype == "float16"


# --- config ------------------------------------------------------------------------------------


def test_overrides_typed_and_unknown_keys():
  cfg = config_lib.apply_overrides(config_lib.Config(), [
      "sae.arch=topk", "sae.k=16", "train.lr=3e-4", "data.skip_nonfinite=true", "sae.k_max=none",
      "sae.matryoshka_fractions=0.5,0.5"])
  assert cfg.sae.arch == "topk" and cfg.sae.k == 16 and cfg.train.lr == 3e-4 and cfg.data.skip_nonfinite
  assert cfg.sae.matryoshka_fractions == (0.5, 0.5)
  with pytest.raises(ConfigError, match="unknown config key 'sae.kk'"):
    config_lib.apply_overrides(config_lib.Config(), ["sae.kk=3"])
  with pytest.raises(ConfigError, match="unknown config section 'model'"):
    config_lib.apply_overrides(config_lib.Config(), ["model.k=3"])
  with pytest.raises(ConfigError, match="train.steps: expected an integer, got 'ten'"):
    config_lib.apply_overrides(config_lib.Config(), ["train.steps=ten"])
  with pytest.raises(ConfigError, match="sae.arch must be one of"):
    config_lib.apply_overrides(config_lib.Config(), ["sae.arch=vae"])
  with pytest.raises(ConfigError, match="data.skip_nonfinite: expected true or false"):
    config_lib.apply_overrides(config_lib.Config(), ["data.skip_nonfinite=maybe"])
  for key in ("train.seed", "data.seed"):  # the data order's shuffle takes a 32-bit seed
    for bad in ("-1", str(2 ** 32)):
      with pytest.raises(ConfigError, match=rf"{key} must be in \[0, 2\*\*32\)"):
        config_lib.apply_overrides(config_lib.Config(), [f"{key}={bad}"])


def test_impossible_k_and_roundtrip():
  with pytest.raises(ConfigError, match=r"sae.k \(64\) must be < sae.n_latents \(64\)"):
    config_lib.apply_overrides(config_lib.Config(), ["sae.k=64", "sae.n_latents=64"])
  with pytest.raises(ConfigError, match=r"sae.k \(32\) must be < sae.n_latents \(32\)"):
    config_lib.Config(sae=config_lib.SaeConfig(expansion=1)).resolve(32)
  cfg = config_lib.Config().resolve(48)
  assert cfg.sae.n_latents == 8 * 48 and cfg.sae.k_max == 64
  again = config_lib.from_dict(json.loads(cfg.to_json()))
  assert again == cfg and config_lib.diff(cfg, again) == []
  with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
    config_lib.from_dict({"train": {"stepz": 3}})


def test_config_files_load(repo_root):
  import glob

  files = sorted(glob.glob(os.path.join(repo_root, "configs", "*.py")))
  assert files, "configs/ should hold at least one config file"
  for f in files:
    assert isinstance(config_lib.load_config_file(f), config_lib.Config)


# --- checkpoint ----------------------------------------------------------------------------------


def test_checkpoint_roundtrip_into_a_different_template(tmp_path):
  from softsae_jax.checkpoint import Checkpointer, abstract_like
  from softsae_jax.optim import make_optimizer
  from softsae_jax.train import init_train_state

  cfg = config_lib.Config(sae=config_lib.SaeConfig(k=2, n_latents=16)).resolve(4)
  tx = make_optimizer(cfg)
  a = init_train_state(jax.random.key(1), cfg, tx)._replace(step=jnp.int32(7))  # softsae: params.extra too
  b = init_train_state(jax.random.key(2), cfg, tx)
  assert bool(jnp.any(a.params.w_enc != b.params.w_enc))  # the round trip can fail
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(7, a, {"step": 7, "seed": 0}, cfg.to_dict())
  ck.close()
  ck = Checkpointer(str(tmp_path / "ck"), read_only=True)
  assert ck.latest_step() == 7
  repl = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored, data = ck.restore(7, abstract_like(b, repl))
  assert data == {"step": 7, "seed": 0}
  chex.assert_trees_all_equal(restored, a)  # same structure, every leaf equal
  meta_cfg, _ = ck.restore_meta(7)
  assert config_lib.from_dict(meta_cfg) == cfg


def test_finite_rows_is_isfinite_for_every_float16_and_other_dtypes():
  """The float16 check from the exponent bits agrees with np.isfinite on all 65536 bit patterns."""
  every_B = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
  np.testing.assert_array_equal(finite_rows(every_B.reshape(-1, 1)), np.isfinite(every_B))
  x_ND = np.random.default_rng(0).integers(0, 2 ** 16, size=(4096, 5), dtype=np.uint16).view(np.float16)
  np.testing.assert_array_equal(finite_rows(x_ND), np.isfinite(x_ND).all(axis=1))
  for dt in (np.float32, np.float64):
    y_ND = x_ND.astype(dt)
    np.testing.assert_array_equal(finite_rows(y_ND), np.isfinite(y_ND).all(axis=1))
