"""``softsae bench headroom``: per-token allocation of one dictionary's top-j latents at matched mean L0.

Known answers: the oracle against brute force over every allocation (exact when the errors are
convex in j, bracketed by its dual bound otherwise); orthonormal atoms with rows needing one or
three of them (at mean L0 2 the oracle and the global threshold reconstruct every row, fixed k = 2
does not); the fixed-k and k-hat FVU equal what ``softsae eval`` reports for a TopK / SoftSAE
workdir; a bad input ends as one ``error:`` line.
"""

import itertools
import json

import numpy as np
import pytest

from softsae_jax import handmade, synthetic
from softsae_jax.bench.headroom import (Curves, fixed_fvu, headroom, oracle_allocation, resolve_k_max,
                                        threshold_allocation)
from softsae_jax.cli import main
from softsae_jax.config import Config, ConfigError, SaeConfig
from softsae_jax.shards import ShardWriter
from softsae_jax.types import Params


def run_cli(*args):
  return main([str(a) for a in args])


def write_acts(path, x_ND):
  w = ShardWriter(str(path), x_ND.shape[1], "float32", rows_per_shard=700)
  w.add(x_ND)
  w.close()
  return str(path)


def lower_hull(e_J):
  """The lower convex hull of (j, e(j)) at every integer j (reference: Andrew's monotone chain)."""
  pts = []
  for j in range(len(e_J)):
    while len(pts) >= 2 and ((e_J[pts[-1]] - e_J[pts[-2]]) * (j - pts[-1])
                             >= (e_J[j] - e_J[pts[-1]]) * (pts[-1] - pts[-2])):
      pts.pop()
    pts.append(j)
  return np.interp(np.arange(len(e_J)), pts, e_J[pts])


# --- the allocations on hand-made error tables ------------------------------------------------------


@pytest.mark.parametrize("convex", [True, False])
def test_oracle_against_brute_force(convex):
  rng = np.random.default_rng(0)
  n, jn = 4, 4
  for _ in range(40):
    if convex:  # decreasing marginal gains: water-filling is exact
      g_NK = -np.sort(-rng.exponential(1.0, (n, jn - 1)), axis=1)
      e_NJ = np.concatenate([g_NK.sum(1, keepdims=True), g_NK.sum(1, keepdims=True) - np.cumsum(g_NK, 1)], 1)
    else:  # any errors, some rising with j
      e_NJ = rng.uniform(0.0, 1.0, (n, jn))
    hull_gap = max(float((e - lower_hull(e)).max()) for e in e_NJ)
    for budget in range(n * (jn - 1) + 1):
      best = min(sum(e_NJ[t, c[t]] for t in range(n))
                 for c in itertools.product(range(jn), repeat=n) if sum(c) == budget)
      o = oracle_allocation(e_NJ, budget)
      assert o.j_N.sum() == budget and o.j_N.min() >= 0 and o.j_N.max() <= jn - 1
      assert o.err == pytest.approx(float(e_NJ[np.arange(n), o.j_N].sum()))
      assert o.bound <= best + 1e-9 <= o.err + 2e-9
      assert o.err - o.bound <= hull_gap + 1e-9
      if convex:
        assert o.err == pytest.approx(best, abs=1e-9) and o.bound == pytest.approx(best, abs=1e-9)


def test_oracle_is_not_greedy_on_raw_marginal_gains():
  # row 0: first atom almost useless, second decisive; greedy on raw gains gives both atoms to row 1
  e_NJ = np.array([[10.0, 9.9, 0.0], [5.0, 1.0, 0.5]])
  o = oracle_allocation(e_NJ, 2)
  assert o.j_N.tolist() == [2, 0] and o.err == 5.0 and o.bound == pytest.approx(5.0)


def test_oracle_large_random_table_is_tight_and_fast():
  rng = np.random.default_rng(1)
  g_NK = rng.exponential(1.0, (20000, 16)) * rng.uniform(0.2, 1.0, (20000, 16))  # gains not monotone in j
  e_NJ = np.concatenate([np.zeros((20000, 1)), np.cumsum(g_NK[:, ::-1], 1)], 1)[:, ::-1].astype(np.float32)
  o = oracle_allocation(e_NJ, 20000 * 5)
  assert o.j_N.sum() == 100000
  # the gap is the hull gap of the one row filled partly: at most one row's error range
  assert 0 <= o.err - o.bound <= min(float(e_NJ.max()), 1e-4 * o.err)
  fixed = float(e_NJ[:, 5].sum(dtype=np.float64))
  assert o.err < fixed


def test_threshold_and_fixed():
  top_NK = np.array([[5.0, 1.0, 0.5], [3.0, 2.0, 0.0]], np.float32)
  assert threshold_allocation(top_NK, 0)[0].tolist() == [0, 0]
  assert threshold_allocation(top_NK, 6)[0].tolist() == [3, 3]
  j_N, tau = threshold_allocation(top_NK, 4)
  assert j_N.tolist() == [2, 2] and tau == 1.0
  assert fixed_fvu(np.array([1.0, 0.5, 0.3]), 2) == 0.3
  assert fixed_fvu(np.array([1.0, 0.5, 0.3]), 1.5) == pytest.approx(0.4)


def test_headroom_rows_on_a_table():
  rng = np.random.default_rng(2)
  g_NK = -np.sort(-rng.exponential(1.0, (300, 8)), axis=1)
  e_NJ = np.concatenate([np.zeros((300, 1)), np.cumsum(g_NK[:, ::-1], 1)], 1)[:, ::-1].astype(np.float32)
  top_NK = np.sqrt(g_NK).astype(np.float32)
  khat_N = rng.uniform(1.0, 6.0, 300)
  res = headroom(Curves(e_NJ, top_NK, khat_N, float(e_NJ[:, 0].sum()) * 1.5, {}, 0), [2, 3.5])
  fvu_J = np.asarray(res["fvu_by_j"])
  assert len(fvu_J) == 9 and np.all(np.diff(fvu_J) <= 0)
  r2, r35, rk = res["rows"]
  assert [r["source"] for r in res["rows"]] == ["target", "target", "k-hat"]
  assert r2["budget"] == 600 and r2["fixed"]["fvu"] == pytest.approx(fvu_J[2]) and not r2["fixed"]["interpolated"]
  assert r35["fixed"]["interpolated"] and r35["fixed"]["fvu"] == pytest.approx((fvu_J[3] + fvu_J[4]) / 2)
  for r in res["rows"]:
    assert r["oracle"]["l0_mean"] == r["threshold"]["l0_mean"] == r["l0_mean"] == r["budget"] / 300
    assert r["oracle"]["fvu_bound"] <= r["oracle"]["fvu"] + 1e-12
    assert r["oracle"]["fvu"] <= min(r["fixed"]["fvu"], r["threshold"]["fvu"]) + 1e-12
    assert sum(r["oracle"]["j_hist"]) == 300
  j_k = np.floor(khat_N).astype(int)
  assert rk["budget"] == j_k.sum() and rk["khat"]["l0_mean"] == pytest.approx(j_k.mean())
  assert rk["khat"]["fvu"] == pytest.approx(e_NJ[np.arange(300), j_k].sum(dtype=np.float64) / (e_NJ[:, 0].sum() * 1.5))
  assert rk["oracle"]["fvu"] <= rk["khat"]["fvu"]
  assert rk["ratios"]["khat_over_fixed"] == pytest.approx(rk["khat"]["fvu"] / rk["fixed"]["fvu"])


def test_k_max_default_and_checks():
  topk = Config(sae=SaeConfig(arch="topk", d_in=8, n_latents=64, k=4)).resolve(8)
  soft = Config(sae=SaeConfig(arch="softsae", d_in=8, n_latents=64, k=4, k_max=20)).resolve(8)
  assert resolve_k_max(topk, None) == 16 and resolve_k_max(soft, None) == 20 and resolve_k_max(topk, 64) == 64
  narrow = Config(sae=SaeConfig(arch="topk", d_in=8, n_latents=10, k=4)).resolve(8)
  assert resolve_k_max(narrow, None) == 10
  with pytest.raises(ConfigError, match="exceeds the run's n_latents 64"):
    resolve_k_max(topk, 65)
  with pytest.raises(ConfigError, match="below the run's k-hat bound sae.k_max=20"):
    resolve_k_max(soft, 19)


# --- hand-made workdirs through the CLI -----------------------------------------------------------


D, F = 16, 16


@pytest.fixture(scope="module")
def orthonormal(tmp_path_factory):
  """A TopK k=2 workdir whose atoms are orthonormal and whose encoder is their transpose, and rows made
  of one atom or of three (coefficients in [1, 2]): pre-activations are exactly the coefficients."""
  tmp = tmp_path_factory.mktemp("headroom")
  rng = np.random.default_rng(0)
  q_FD = np.linalg.qr(rng.normal(size=(D, D)))[0].astype(np.float32)
  params = Params(w_enc=q_FD.T.copy(), b_enc=np.zeros(F, np.float32), w_dec=q_FD, b_dec=np.zeros(D, np.float32))
  cfg = Config(sae=SaeConfig(arch="topk", d_in=D, n_latents=F, k=2)).resolve(D)
  wd = handmade.write_workdir(str(tmp / "topk"), cfg, params)
  n = 1000
  c_NF = np.zeros((n, F), np.float32)
  for t in range(n):
    atoms = rng.choice(F, 1 if t % 2 else 3, replace=False)
    c_NF[t, atoms] = rng.uniform(1.0, 2.0, len(atoms))
  acts = write_acts(tmp / "acts", c_NF @ q_FD)
  return wd, acts, c_NF


def test_orthonormal_oracle_and_threshold_exact_fixed_not(orthonormal, tmp_path, capsys):
  wd, acts, c_NF = orthonormal
  out = tmp_path / "h.json"
  assert run_cli("bench", "headroom", "--workdir", wd, "--data", acts, "--ks", "2", "--out", out,
                 "--batch-size", 256) == 0
  table = capsys.readouterr().out
  assert "| mean L0 | at | fixed k | oracle |" in table
  res = json.loads(out.read_text())
  assert res["k_max"] == 8 and res["data"]["n_rows"] == 1000 and res["run"]["arch"] == "topk"
  (row,) = res["rows"]
  # known answer: fixed k = 2 loses the smallest coefficient of every three-atom row
  x_ND = c_NF.astype(np.float64)
  total = float(((x_ND - x_ND.mean(0)) ** 2).sum())
  dropped = float(sum(np.sort(c[c > 0])[0] ** 2 for c in c_NF[::2].astype(np.float64)))
  assert row["fixed"]["fvu"] == pytest.approx(dropped / total, rel=1e-4)
  assert row["oracle"]["fvu"] < 1e-6 and row["threshold"]["fvu"] < 1e-6
  assert row["oracle"]["j_hist"][:4] == [0, 500, 0, 500] and row["threshold"]["j_hist"][:4] == [0, 500, 0, 500]
  assert 1.0 - 1e-5 <= row["threshold"]["tau"] <= 2.0  # the smallest coefficient of all rows
  assert row["ratios"]["oracle_over_fixed"] < 1e-4
  assert res["fvu_by_j"][3] < 1e-6 and res["fvu_by_j"][0] == pytest.approx(float((x_ND ** 2).sum()) / total, rel=1e-4)
  assert res["model"]["fvu"] == pytest.approx(row["fixed"]["fvu"], rel=1e-5)
  assert "khat" not in row and "k-hat |" not in table


def test_fixed_and_khat_equal_softsae_eval(tmp_path, capsys):
  """TopK at its k and SoftSAE at floor(k-hat): the headroom rows equal ``softsae eval``, with a norm factor
  (and for BatchTopK the run's own threshold rule, as eval)."""
  import jax

  from softsae_jax import archs

  rng = np.random.default_rng(3)
  mix = synthetic.make_mixture(800, D, 48, k_values=(1, 2, 4, 8), seed=0)
  acts = write_acts(tmp_path / "acts", 3.0 * mix.x_ND.astype(np.float32) + rng.normal(size=D).astype(np.float32))
  for arch in ("topk", "softsae", "batchtopk"):
    cfg = Config(sae=SaeConfig(arch=arch, d_in=D, n_latents=48, k=4)).resolve(D)
    p = archs.init_params(jax.random.key(1), cfg.sae)
    p = p._replace(b_enc=p.b_enc + 0.05, b_dec=jax.numpy.asarray(rng.normal(size=D) * 0.1, jax.numpy.float32))
    wd = handmade.write_workdir(str(tmp_path / arch), cfg, p, norm_factor=2.5,
                                arch_state=0.3 if arch == "batchtopk" else None)
    assert run_cli("eval", "--workdir", wd, "--data", acts, "--out", tmp_path / f"{arch}-eval.json") == 0
    ev = json.loads((tmp_path / f"{arch}-eval.json").read_text())
    out = tmp_path / f"{arch}-h.json"
    assert run_cli("bench", "headroom", "--workdir", wd, "--data", acts, "--ks", "4,2.5", "--out", out) == 0
    res = json.loads(out.read_text())
    assert res["model"]["fvu"] == pytest.approx(ev["fvu"], rel=1e-9)
    if arch == "batchtopk":  # its own rule is its learned threshold, recorded next to the bench's
      assert res["run"]["threshold"] == pytest.approx(0.3) and res["model"]["l0_mean"] == ev["l0_mean"]
    elif arch == "topk":
      assert res["k_max"] == 16 and res["fvu_by_j"][4] == pytest.approx(ev["fvu"], rel=1e-4)
      assert res["rows"][0]["fixed"]["fvu"] == pytest.approx(ev["fvu"], rel=1e-4)
      assert res["rows"][1]["fixed"]["interpolated"] and res["rows"][1]["l0_mean"] == 2.5
    else:
      kh = res["rows"][-1]
      assert res["k_max"] == 16 and kh["source"] == "k-hat"
      assert kh["khat"]["fvu"] == pytest.approx(ev["fvu"], rel=1e-4)
      assert kh["khat"]["active_l0_mean"] == pytest.approx(ev["l0_mean"])
      assert kh["khat"]["k_hat_mean"] == pytest.approx(ev["k_hat_mean"], rel=1e-6)
      assert kh["oracle"]["fvu"] <= kh["khat"]["fvu"] and "k-hat/fixed" in capsys.readouterr().out
  capsys.readouterr()


@pytest.mark.parametrize("case,args,pattern", [
    ("no workdir", ["--workdir", "{tmp}/nowork"], "nowork does not exist"),
    ("target above K_max", ["--ks", "9", "--k-max", "8"], "--ks 9 exceeds --k-max 8"),
    ("K_max above F", ["--k-max", "17"], "--k-max 17 exceeds the run's n_latents 16"),
    ("no data", ["--data", "{tmp}/noacts"], "noacts does not exist"),
])
def test_bad_input_is_one_error_line(case, args, pattern, orthonormal, tmp_path, capsys):
  wd, acts, _ = orthonormal
  flags = {"--workdir": wd, "--data": acts}
  extra = []
  for flag, value in zip(args[::2], args[1::2]):
    value = value.format(tmp=tmp_path)
    if flag in flags:
      flags[flag] = value
    else:
      extra += [flag, value]
  argv = ["bench", "headroom", "--out", tmp_path / "h.json", *extra,
          *itertools.chain.from_iterable(flags.items())]
  assert run_cli(*argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], err
  assert not (tmp_path / "h.json").exists()


def test_bad_flag_value_is_one_argparse_line(capsys):
  with pytest.raises(SystemExit) as exc:
    main(["bench", "headroom", "--workdir", "w", "--data", "d", "--ks", "4,0"])
  assert exc.value.code == 2
  assert capsys.readouterr().err.splitlines() == [
      "softsae bench headroom: error: argument --ks: expected a comma-separated list of positive numbers, got '4,0'"]


# --- a trained run, end to end ----------------------------------------------------------------------


@pytest.mark.slow
def test_trained_softsae_end_to_end(tmp_path, capsys):
  mix = synthetic.make_mixture(6000, D, 48, k_values=(1, 2, 4, 8), seed=0)
  train = write_acts(tmp_path / "train", mix.x_ND[:5000].astype(np.float32))
  held = write_acts(tmp_path / "held", mix.x_ND[5000:].astype(np.float32))
  wd = tmp_path / "softsae"
  assert run_cli("train", "--data", train, "--workdir", wd, "--set", "train.batch_size=256", "--set", "sae.k=4",
                 "--set", "sae.expansion=3", "--set", "train.steps=150", "--quiet") == 0
  assert run_cli("eval", "--workdir", wd, "--data", held, "--out", tmp_path / "eval.json") == 0
  ev = json.loads((tmp_path / "eval.json").read_text())
  capsys.readouterr()
  assert run_cli("bench", "headroom", "--workdir", wd, "--data", held) == 0
  table = capsys.readouterr().out
  res = json.loads((wd / "headroom.json").read_text())
  assert res["k_max"] == 16 and res["targets"] == [4.0] and res["data"]["n_rows"] == 1000
  assert "softsae bench headroom --workdir" in res["meta"]["command"]
  target, kh = res["rows"]
  assert kh["khat"]["fvu"] == pytest.approx(ev["fvu"], rel=1e-4)
  for r in res["rows"]:
    assert r["oracle"]["fvu_bound"] <= r["oracle"]["fvu"] + 1e-9
    assert r["oracle"]["fvu"] <= min(r["fixed"]["fvu"], r["threshold"]["fvu"]) + 1e-9
  assert kh["oracle"]["fvu"] <= kh["khat"]["fvu"]
  print(table)


def test_synthetic_truth_is_compared_when_the_data_has_it(orthonormal, tmp_path, capsys):
  """A dataset with a ``true_k`` side file (as `softsae bench synthetic` writes) gets each allocation's
  Spearman with the true k and its mean per true k; here the oracle and the threshold recover it exactly."""
  import shutil

  wd, acts, c_NF = orthonormal
  data = tmp_path / "acts_truth"
  shutil.copytree(acts, data)
  man = json.loads((data / "manifest.json").read_text())
  true_k_N, lo = (c_NF > 0).sum(1).astype(np.int32), 0
  for i, entry in enumerate(man["shards"]):
    np.save(data / f"true_k_{i:05d}.npy", true_k_N[lo:lo + entry["rows"]])
    entry["true_k"], lo = f"true_k_{i:05d}.npy", lo + entry["rows"]
  (data / "manifest.json").write_text(json.dumps(man))
  out = tmp_path / "h.json"
  assert run_cli("bench", "headroom", "--workdir", wd, "--data", data, "--ks", "2", "--out", out) == 0
  assert "Spearman with the true k at mean L0 2.00: oracle 1" in capsys.readouterr().out
  (row,) = json.loads(out.read_text())["rows"]
  assert row["oracle"]["spearman_true_k"] == pytest.approx(1.0)
  assert row["oracle"]["mean_by_true_k"] == {"1": 1.0, "3": 3.0}
  assert row["threshold"]["spearman_true_k"] == pytest.approx(1.0)
  # and without the side file, nothing of the kind
  assert run_cli("bench", "headroom", "--workdir", wd, "--data", acts, "--ks", "2", "--out", out) == 0
  assert "true k" not in capsys.readouterr().out
  assert "spearman_true_k" not in json.loads(out.read_text())["rows"][0]["oracle"]
