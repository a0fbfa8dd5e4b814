"""Sweeps: several SAEs (k x seed) in one compiled step, each member the model its own config trains alone;
`softsae train --set sweep.*` and `softsae sweep-split` end to end."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softsae_jax import config as config_lib
from softsae_jax import synthetic
from softsae_jax.cli import main
from softsae_jax.optim import make_optimizer
from softsae_jax.shards import ShardWriter
from softsae_jax.sweep import member_state
from softsae_jax.train import init_sweep_state, init_train_state, sweep_train_step, train_step

D, F = 32, 256


def _cfg(arch, sweep, steps=20, **sae):
  cfg = config_lib.Config(
      sae=config_lib.SaeConfig(arch=arch, d_in=D, n_latents=F, k=8, dead_tokens=300, **sae),
      train=config_lib.TrainConfig(steps=steps, batch_size=64, hard_frac=0.2, k_anneal_frac=0.2,
                                   alpha_anneal_frac=0.2),
      sweep=sweep)
  return cfg.resolve(D)


def _batches(rng, n):
  return rng.standard_normal((n, 64, D)).astype(np.float32)


def _max_param_diff(sweep_state, index, state):
  d = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a[index] - b))), sweep_state.params, state.params)
  return max(jax.tree.leaves(d))


@pytest.mark.parametrize("arch,sweep", [
    ("topk", config_lib.SweepConfig(k=(2, 4, 8, 16))),  # the acceptance's 4-member TopK sweep
    ("softsae", config_lib.SweepConfig(k=(4, 8), seed=(0, 3))),
    ("batchtopk", config_lib.SweepConfig(k=(4, 8))),
    ("matryoshka", config_lib.SweepConfig(k=(4, 8))),
    ("jumprelu", config_lib.SweepConfig(seed=(1, 2))),
])
def test_each_member_matches_its_separate_run(arch, sweep, rng):
  cfg = _cfg(arch, sweep)
  tx = make_optimizer(cfg)
  xs = _batches(rng, cfg.train.steps)
  valid = jnp.ones((64,), bool)
  b_dec = xs[0].mean(axis=0)
  traces = []

  def step(state, x, v):
    traces.append(1)
    return sweep_train_step(state, x, v, cfg=cfg, tx=tx)

  jitted = jax.jit(step)
  state = init_sweep_state(cfg, tx, b_dec_D=b_dec, norm_factor=1.0)
  for x in xs:
    state, metrics = jitted(state, x, valid)
  assert len(traces) == 1  # one compiled step for every member, every step
  members = cfg.members()
  assert metrics.fvu.shape == (len(members),)
  aux_active = False
  for m in members:
    mcfg = m.config
    mtx = make_optimizer(mcfg)
    one = init_train_state(jax.random.key(mcfg.train.seed), mcfg, mtx, b_dec_D=b_dec, norm_factor=1.0)
    one_step = jax.jit(lambda s, x, v, c=mcfg, t=mtx: train_step(s, x, v, cfg=c, tx=t))
    for x in xs:
      one, one_metrics = one_step(one, x, valid)
    assert _max_param_diff(state, m.index, one) <= 1e-5, m.name
    np.testing.assert_allclose(metrics.l0_mean[m.index], one_metrics.l0_mean, rtol=1e-5)
    aux_active |= float(one_metrics.aux_loss) > 0
  if arch != "jumprelu":
    assert aux_active  # AuxK ran for some member (dead_tokens is small), through the hoisted cond


def test_member_configs_and_bad_sweeps():
  cfg = _cfg("softsae", config_lib.SweepConfig(k=(4, 16), seed=(5,)))
  assert [m.name for m in cfg.members()] == ["k4-seed5", "k16-seed5"]
  # Each member's k_max is its own default (2k), not the sweep's base k's.
  assert [m.config.sae.kmax for m in cfg.members()] == [8, 32]
  assert cfg.members()[0].config.data_seed == 0 and cfg.members()[0].config.train.seed == 5
  with pytest.raises(config_lib.ConfigError, match="sweep.k: sae.arch=relu has no k"):
    _cfg("relu", config_lib.SweepConfig(k=(4, 8)))
  with pytest.raises(config_lib.ConfigError, match="repeated"):
    config_lib.SweepConfig(k=(4, 4))
  with pytest.raises(config_lib.ConfigError, match="mesh.model=1"):
    dataclasses.replace(_cfg("topk", config_lib.SweepConfig()), sweep=config_lib.SweepConfig(seed=(0, 1)),
                        mesh=config_lib.MeshConfig(model=2)).resolve(D)
  with pytest.raises(config_lib.ConfigError, match="k"):
    _cfg("topk", config_lib.SweepConfig(k=(4, F + 1)))


def test_sweep_hlo_keeps_the_soft_topk_conditionals(rng):
  """The members reach the soft top-k as extra rows: its fast path stays behind a `cond` (a plain vmap
  would turn every cond into a select that runs the full-sort fallback each step)."""
  cfg = _cfg("softsae", config_lib.SweepConfig(k=(4, 8)))
  tx = make_optimizer(cfg)
  state = init_sweep_state(cfg, tx, b_dec_D=np.zeros(D, np.float32), norm_factor=1.0)
  hlo = jax.jit(lambda s, x, v: sweep_train_step(s, x, v, cfg=cfg, tx=tx)).lower(
      state, _batches(rng, 1)[0], jnp.ones((64,), bool)).as_text()
  # A sweep's soft phase is the dense one: compare with the single step's dense soft phase (the
  # candidates' phase, sae.sparse_soft, adds conds of its own).
  single = _cfg("softsae", config_lib.SweepConfig(), sparse_soft=False)
  stx = make_optimizer(single)
  one = init_train_state(jax.random.key(0), single, stx)
  hlo1 = jax.jit(lambda s, x, v: train_step(s, x, v, cfg=single, tx=stx)).lower(
      one, _batches(rng, 1)[0], jnp.ones((64,), bool)).as_text()
  assert hlo.count("stablehlo.case") == hlo1.count("stablehlo.case") > 0


# --- the command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("sweep") / "acts"
  mix = synthetic.make_mixture(4000, 16, 48, k_values=(1, 2, 4, 8), seed=0)
  w = ShardWriter(str(d), 16, "float16", rows_per_shard=5000)
  w.add(mix.x_ND)
  w.close()
  return str(d)


COMMON = ["--set", "train.batch_size=128", "--set", "sae.expansion=4", "--set", "train.steps=30",
          "--set", "train.log_every=10", "--set", "train.checkpoint_every=30", "--quiet"]


@pytest.mark.slow
def test_cli_sweep_then_split_then_eval(data, tmp_path, capsys):
  wd, out = str(tmp_path / "sweep"), str(tmp_path / "members")
  assert main(["train", "--data", data, "--workdir", wd, *COMMON, "--set", "sae.arch=topk",
               "--set", "sweep.k=2,4", "--set", "sweep.seed=0,1"]) == 0
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [(r["k"], r["seed"]) for r in lines] == [(2, 0), (2, 1), (4, 0), (4, 1)]
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    recs = [json.loads(l) for l in f]
  assert len(recs) == 3 * 4 and {r["member"] for r in recs} == {0, 1, 2, 3}
  # eval refuses the stacked workdir with the command that fixes it
  assert main(["eval", "--workdir", wd, "--data", data]) == 1
  assert "softsae sweep-split" in capsys.readouterr().err
  assert main(["sweep-split", "--workdir", wd, "--out", out]) == 0
  names = sorted(os.listdir(out))
  assert names == ["k2-seed0", "k2-seed1", "k4-seed0", "k4-seed1"]
  # the member's workdir is an ordinary finished run of its own config
  member = os.path.join(out, "k4-seed1")
  with open(os.path.join(member, "config.json")) as f:
    mcfg = config_lib.from_dict(json.load(f))
  assert (mcfg.sae.k, mcfg.train.seed, mcfg.data_seed, bool(mcfg.sweep)) == (4, 1, 0, False)
  with open(os.path.join(member, "metrics.jsonl")) as f:
    mrecs = [json.loads(l) for l in f]
  assert [r["step"] for r in mrecs] == [10, 20, 30] and "member" not in mrecs[0]
  ev = str(tmp_path / "ev.json")
  assert main(["eval", "--workdir", member, "--data", data, "--out", ev]) == 0
  with open(ev) as f:
    assert json.load(f)["l0_mean"] <= 4.0
  capsys.readouterr()
  assert main(["train", "--data", data, "--workdir", member, *COMMON, "--set", "sae.arch=topk",
               "--set", "sae.k=4", "--set", "train.seed=1", "--set", "data.seed=0"]) == 0
  assert "already finished" in capsys.readouterr().err
  # the same member trained alone ends at the same model
  alone = str(tmp_path / "alone")
  assert main(["train", "--data", data, "--workdir", alone, *COMMON, "--set", "sae.arch=topk",
               "--set", "sae.k=4", "--set", "train.seed=1", "--set", "data.seed=0"]) == 0
  ev2 = str(tmp_path / "ev2.json")
  assert main(["eval", "--workdir", alone, "--data", data, "--out", ev2]) == 0
  with open(ev) as f1, open(ev2) as f2:
    a, b = json.load(f1), json.load(f2)
  assert abs(a["fvu"] - b["fvu"]) <= 1e-4 * a["fvu"]
  # split again into the same place: refused, nothing touched
  assert main(["sweep-split", "--workdir", wd, "--out", out]) == 1
  assert "already exists" in capsys.readouterr().err
  # a plain run is not a sweep
  assert main(["sweep-split", "--workdir", alone, "--out", str(tmp_path / "x")]) == 1
  assert "not a sweep" in capsys.readouterr().err


def test_member_state_slices_only_member_leaves():
  cfg = _cfg("batchtopk", config_lib.SweepConfig(k=(4, 8)))
  tx = make_optimizer(cfg)
  state = init_sweep_state(cfg, tx, b_dec_D=np.zeros(D, np.float32), norm_factor=2.0)
  one = member_state(state, 1)
  ref = init_train_state(jax.random.key(0), cfg.members()[1].config, tx, norm_factor=2.0)
  assert jax.tree.structure(one) == jax.tree.structure(ref)
  assert jax.tree.map(jnp.shape, one) == jax.tree.map(jnp.shape, ref)
  assert float(one.norm_factor) == 2.0 and int(one.step) == 0
