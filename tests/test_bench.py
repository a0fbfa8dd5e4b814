"""softsae bench (the package softsae_jax/bench/): metric functions on hand-made inputs, the pareto sweep
points, and the tiny preset and pareto (with a JumpReLU coefficient sweep) end to end through the CLI."""

import json
import math
import os

import numpy as np
import pytest

from softsae_jax import bench, cli
from softsae_jax import synthetic as syn
from softsae_jax import stats as rank_stats
from softsae_jax.bench import metrics, output, protocols, runs
from softsae_jax.config import Config
from softsae_jax.shards import open_dataset


def test_package_reexports():
  # The names other code and docs import from softsae_jax.bench, and the CLI hooks cli.COMMANDS names.
  assert (bench.kl_int, bench.wasserstein_int, bench.dictionary_recovery) == (
      metrics.kl_int, metrics.wasserstein_int, metrics.dictionary_recovery)
  assert (bench.class_means, bench.increasing, bench.KL_SMOOTHING) == (
      metrics.class_means, metrics.increasing, metrics.KL_SMOOTHING)
  assert (bench.rankdata, bench.spearman, bench.pearson) == (rank_stats.rankdata, rank_stats.spearman,
                                                               rank_stats.pearson)
  assert bench.make_config is runs.make_config and bench.BENCH_PRESETS is protocols.BENCH_PRESETS
  assert bench.pareto_markdown is output.pareto_markdown and bench.synthetic_markdown is output.synthetic_markdown
  command = next(c for c in cli.COMMANDS if c.name == "bench")
  assert callable(getattr(bench, command.add_arguments)) and callable(getattr(bench, command.run))


# --------------------------------------------------------------------------------------------------
# Metric functions.


def test_rankdata_averages_ties():
  assert bench.rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
  assert bench.rankdata([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]
  assert bench.rankdata([]).tolist() == []


def test_spearman_hand_values():
  assert bench.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
  assert bench.spearman([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
  # x ranks 1,2,3,4; y = [1, 3, 2, 4] -> d = 0, -1, 1, 0: 1 - 6*2/(4*15) = 0.8.
  assert bench.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
  # With ties: y ranks [1.5, 1.5, 3, 4] against x ranks [1, 2, 3, 4]: Pearson of the ranks.
  ry = np.array([1.5, 1.5, 3, 4])
  rx = np.arange(1.0, 5.0)
  expected = np.corrcoef(rx, ry)[0, 1]
  assert bench.spearman([1, 2, 3, 4], [7, 7, 8, 9]) == pytest.approx(expected)
  assert math.isnan(bench.spearman([1, 2, 3], [5, 5, 5]))  # constant: undefined


def test_spearman_matches_scipy():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  x = rng.integers(0, 5, 200)
  y = x + rng.integers(0, 3, 200)
  assert bench.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
  assert bench.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)


def test_pearson_hand_value():
  # x = [0, 1, 2], y = [0, 1, 5]: cov = 5/... -> r = 5 / sqrt(2 * 14) (centred sums).
  assert bench.pearson([0, 1, 2], [0, 1, 5]) == pytest.approx(5 / math.sqrt(2 * 14))


def test_kl_int_hand_values():
  assert metrics.kl_int([2, 4, 4, 8], [2, 4, 4, 8]) == 0.0
  # P from [0, 1], Q from [0, 0], pseudo-count 0.5: p = (1/2, 1/2), q = (5/6, 1/6).
  assert metrics.kl_int([0, 1], [0, 0]) == pytest.approx(0.5 * math.log(0.6) + 0.5 * math.log(3.0))
  assert metrics.kl_int([0, 1], [0, 0], smoothing=0.0) == math.inf
  # Always >= 0, and finite for disjoint supports thanks to the pseudo-count.
  assert 0.0 < metrics.kl_int([2] * 10, [8] * 10) < math.inf
  with pytest.raises(ValueError):
    metrics.kl_int([1.5], [1])


def test_wasserstein_int_hand_values():
  assert metrics.wasserstein_int([2, 2], [4, 4]) == pytest.approx(2.0)
  assert metrics.wasserstein_int([0, 4], [2, 2]) == pytest.approx(2.0)
  assert metrics.wasserstein_int([1, 2, 3], [3, 2, 1]) == 0.0
  assert metrics.wasserstein_int([2] * 10, [3] * 10) < metrics.wasserstein_int([2] * 10, [8] * 10)


def test_wasserstein_real_hand_values():
  # A shift by c moves every unit of mass by c; a permutation moves nothing.
  assert metrics.wasserstein_real([2, 4, 8, 16], [2.5, 4.5, 8.5, 16.5]) == pytest.approx(0.5)
  assert metrics.wasserstein_real([2, 4, 8, 16], [1.0, 3.0, 7.0, 15.0]) == pytest.approx(1.0)
  assert metrics.wasserstein_real([1, 2, 3], [3.0, 1.0, 2.0]) == 0.0
  # Different sample sizes: half the mass moves by 2.
  assert metrics.wasserstein_real([0, 0], [0, 0, 2, 2]) == pytest.approx(1.0)
  # On integers it is wasserstein_int.
  rng = np.random.default_rng(0)
  a, b = rng.integers(1, 17, 300), rng.integers(0, 12, 200)
  assert metrics.wasserstein_real(a, b) == pytest.approx(metrics.wasserstein_int(a, b), abs=1e-12)
  for bad in ([], [1.0, float("nan")]):
    with pytest.raises(ValueError):
      metrics.wasserstein_real([1, 2], bad)


def test_kl_nearest_int_hand_values():
  assert metrics.kl_nearest_int([2, 4, 8, 16], [2.0, 4.0, 8.0, 16.0]) == 0.0
  assert metrics.kl_nearest_int([2, 4, 8], [2.4, 3.6, 8.49]) == 0.0  # binned at the nearest integer
  assert metrics.kl_nearest_int([2, 4], [2.6, 2.6]) == pytest.approx(metrics.kl_int([2, 4], [3, 3]))
  assert metrics.kl_nearest_int([2, 4], [2.6, 2.6]) > 0.0
  with pytest.raises(ValueError):
    metrics.kl_nearest_int([2], [float("nan")])


def test_mean_sd():
  assert metrics.mean_sd([0.2, 0.4, 0.6]) == {"mean": pytest.approx(0.4), "sd": pytest.approx(0.2), "n": 3}
  assert metrics.mean_sd([1.0, None, 3.0]) == {"mean": 2.0, "sd": pytest.approx(math.sqrt(2)), "n": 2}
  assert metrics.mean_sd([5.0]) == {"mean": 5.0, "sd": None, "n": 1}
  assert metrics.mean_sd([None]) == {"mean": None, "sd": None, "n": 0}


def test_dictionary_recovery_known_atoms():
  eye = np.eye(5)
  assert metrics.dictionary_recovery(eye, eye) == {"mean_max_cos": 1.0, "frac_recovered": 1.0}
  # Permuted, rescaled, with extra learned atoms: still 1.0.
  rng = np.random.default_rng(0)
  learned = np.concatenate([3.0 * eye[::-1], rng.standard_normal((7, 5))])
  assert metrics.dictionary_recovery(eye, learned)["mean_max_cos"] == pytest.approx(1.0)
  # Signed: a negated dictionary is not a match; an orthogonal one scores 0.
  assert metrics.dictionary_recovery(eye[:2], -eye[:2])["mean_max_cos"] == pytest.approx(0.0)
  assert metrics.dictionary_recovery(eye[:1], eye[1:2]) == {"mean_max_cos": 0.0, "frac_recovered": 0.0}
  # Half the atoms found exactly, the other half at 45 degrees.
  learned = np.stack([eye[0], eye[1], (eye[2] + eye[4]) / np.sqrt(2), (eye[3] + eye[4]) / np.sqrt(2)])
  rec = metrics.dictionary_recovery(eye[:4], learned)
  assert rec["mean_max_cos"] == pytest.approx((2 + 2 / np.sqrt(2)) / 4)
  assert rec["frac_recovered"] == 0.5


def test_class_means_and_increasing():
  means = metrics.class_means([1.0, 3.0, 5.0, 6.0, 10.0], [2, 2, 4, 4, 16])
  assert means == {"2": 2.0, "4": 5.5, "16": 10.0}
  assert metrics.increasing(means)
  assert not metrics.increasing({"2": 2.0, "4": 1.0})


def test_norm_control():
  x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
  c = protocols.norm_control(x, np.array([1, 2, 4, 4]))
  assert c["spearman_norm_true"] == pytest.approx(bench.spearman([1, 2, 3, 4], [1, 2, 4, 4]))
  assert c["norm_by_class"] == {"1": 1.0, "2": 2.0, "4": 3.5}
  # Constant norms: the control is undefined (None in the JSON), not a number.
  assert protocols.norm_control(np.eye(3), np.array([1, 2, 4]))["spearman_norm_true"] is None


def test_unitnorm_bench_presets():
  assert protocols.DEFAULT_PRESET == "small-unitnorm" and bench.DEFAULT_PRESET == protocols.DEFAULT_PRESET
  for name in ("tiny", "small", "full"):
    base, unit = protocols.BENCH_PRESETS[name], protocols.BENCH_PRESETS[f"{name}-unitnorm"]
    assert {k: v for k, v in unit.items() if k != "data"} == {k: v for k, v in base.items() if k != "data"}
    for kind in protocols.KINDS:
      assert unit["data"][kind] == {**base["data"][kind], "normalize_rows": True}
  assert protocols.BENCH_PRESETS["small-unitnorm"]["data"] == syn.PRESETS["small-unitnorm"]
  args = cli.build_parser().parse_args(["bench", "synthetic"])
  assert (args.preset, args.seed, args.seeds) == ("small-unitnorm", 0, None)
  assert cli.build_parser().parse_args(["bench", "synthetic", "--seeds", "0,1,2"]).seeds == [0, 1, 2]


def _seed_block(seed: int, spearman: float, fvu: float, ip_fvu: float) -> dict:
  """A hand-built ``bench synthetic`` results block (one kind) with the keys seed_metrics reads."""
  soft = {"fvu": fvu, "l0_mean": 6.5, "k_hat_mean": 7.0, "spearman_khat_true": spearman, "kl_khat_true": 1.0 + seed,
          "w1_khat_true": 0.5, "kl_l0_true": 2.0, "w1_l0_true": 1.5, "khat_by_class": {"2": 3.0 + seed, "16": 12.0},
          "l0_by_class": {"2": 2.5, "16": 11.0}, "dict_recovery": {"mean_max_cos": 0.9}, "dead_fraction": 0.0}
  return {"target_k": 8, "matched_k": 6, "topk_matched": "topk@k6", "topk_interpolated": {"fvu": ip_fvu},
          "data": {"spearman_norm_true": 0.01 * seed},
          "acceptance": {"spearman_khat_true_ge_0.8": spearman >= 0.8, "fvu_le_topk_at_matched_l0": True},
          "models": {"softsae@k8": soft, "topk@k6": {"fvu": 0.3}, "batchtopk@k6": {"fvu": 0.4, "l0_mean": 6.6},
                     "matryoshka@k6": {"fvu": 0.5, "l0_mean": 6.3}}}


def test_aggregate_seeds_mean_and_sd():
  per_seed = {s: {"mixture": _seed_block(s, sp, fvu, 0.25)}
              for s, sp, fvu in ((0, 0.7, 0.20), (1, 0.8, 0.22), (2, 0.9, 0.24))}
  agg = protocols.aggregate_seeds(per_seed, ["mixture"])["mixture"]
  ms = agg["mean_sd"]
  assert agg["seeds"] == [0, 1, 2] and set(agg["per_seed"]) == {"0", "1", "2"}
  assert ms["spearman_khat_true"] == {"mean": pytest.approx(0.8), "sd": pytest.approx(0.1), "n": 3}
  assert ms["softsae_fvu"]["mean"] == pytest.approx(0.22) and ms["softsae_fvu"]["sd"] == pytest.approx(0.02)
  assert ms["softsae_vs_topk_interpolated"]["mean"] == pytest.approx(0.22 / 0.25 - 1)
  assert ms["khat_by_class.2"] == {"mean": pytest.approx(4.0), "sd": pytest.approx(1.0), "n": 3}
  assert ms["khat_by_class.16"]["sd"] == 0.0 and ms["kl_khat_true"]["mean"] == pytest.approx(2.0)
  assert ms["spearman_norm_true"]["mean"] == pytest.approx(0.01)
  assert ms["batchtopk_fvu"]["mean"] == pytest.approx(0.4)
  assert agg["acceptance"] == {"spearman_khat_true_ge_0.8": 2, "fvu_le_topk_at_matched_l0": 3}
  # A metric missing in one seed (older results) is left out of its mean, not counted as 0.
  del per_seed[2]["mixture"]["models"]["softsae@k8"]["kl_khat_true"]
  ms = protocols.aggregate_seeds(per_seed, ["mixture"])["mixture"]["mean_sd"]
  assert ms["kl_khat_true"] == {"mean": pytest.approx(1.5), "sd": pytest.approx(math.sqrt(0.5)), "n": 2}
  # The Markdown summary shows mean ± sd and every seed.
  summary = {"mixture": protocols.aggregate_seeds(per_seed, ["mixture"])["mixture"],
             "meta": {"command": "softsae bench synthetic --seeds 0,1,2", "date": "today", "host": "h",
                      "total_seconds": 1.0, "overrides": [], "preset": "tiny-unitnorm", "seeds": [0, 1, 2],
                      "kinds": ["mixture"]}}
  md = output.seed_summary_markdown(summary)
  assert "| Spearman(k-hat, true) | 0.800 ± 0.100 | 0.700 | 0.800 | 0.900 |" in md
  assert "| k-hat | 4.00 ± 1.00 | 12.00 ± 0.00 |" in md and "spearman_khat_true_ge_0.8: 2/3" in md


# --------------------------------------------------------------------------------------------------
# The tiny preset through the CLI.

METRIC_KEYS = ("fvu", "l0_mean", "dead_fraction", "spearman_l0_true", "pearson_l0_true", "l0_by_class",
               "kl_l0_true", "w1_l0_true", "dict_recovery")
SOFT_KEYS = ("spearman_khat_true", "pearson_khat_true", "khat_by_class", "k_hat_mean")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bench") / "synthetic")
  rc = cli.main(["bench", "synthetic", "--preset", "tiny", "--kind", "mixture", "--seed", "1", "--out", out,
                 "--steps", "20", "--quiet"])
  assert rc == 0
  with open(os.path.join(out, "results.json")) as f:
    return out, json.load(f)


@pytest.mark.slow
def test_synthetic_tiny_outputs(tiny_run):
  out, res = tiny_run
  for name in ("results.json", "results.md", "mixture_fvu_l0.png", "mixture_k_by_class.png", "mixture_l0_hist.png"):
    path = os.path.join(out, name)
    assert os.path.isfile(path) and os.path.getsize(path) > 0, name
  r = res["mixture"]
  assert res["meta"]["kinds"] == ["mixture"] and res["meta"]["seed"] == 1
  target, matched = r["target_k"], r["matched_k"]
  assert target == protocols.BENCH_PRESETS["tiny"]["k"]
  assert matched == max(1, round(r["models"][f"softsae@k{target}"]["l0_mean"]))
  l0 = r["models"][f"softsae@k{target}"]["l0_mean"]
  expected = {f"softsae@k{target}", f"topk@k{target}", f"topk@k{matched}", f"batchtopk@k{matched}",
              f"matryoshka@k{matched}"}
  if l0 >= 1:  # TopK on both sides of SoftSAE's L0, for the interpolated FVU
    expected |= {f"topk@k{math.floor(l0)}", f"topk@k{math.ceil(l0)}"}
    ip = r["topk_interpolated"]
    lo_fvu, hi_fvu = r["models"][f"topk@k{math.floor(l0)}"]["fvu"], r["models"][f"topk@k{math.ceil(l0)}"]["fvu"]
    assert min(lo_fvu, hi_fvu) - 1e-12 <= ip["fvu"] <= max(lo_fvu, hi_fvu) + 1e-12
  assert set(r["models"]) == expected
  for name, m in r["models"].items():
    for key in METRIC_KEYS:
      assert key in m, (name, key)
    assert 0.0 <= m["fvu"] and 0.0 <= m["dead_fraction"] <= 1.0
    assert m["kl_l0_true"] >= 0.0 and m["w1_l0_true"] >= 0.0
    assert -1.0 <= m["dict_recovery"]["mean_max_cos"] <= 1.0
    assert set(m["l0_by_class"]) == {"1", "2", "4", "8"}
  soft = r["models"][f"softsae@k{target}"]
  for key in SOFT_KEYS:
    assert key in soft
  assert {f"spearman_khat_true_ge_{protocols.KHAT_SPEARMAN_MIN}", "spearman_khat_true_above_norm_control",
          "khat_increases_with_true_class", "l0_within_25pct_of_target",
          "fvu_le_topk_at_matched_l0"} <= set(r["acceptance"])
  assert {"kl_khat_true", "w1_khat_true"} <= set(soft) and soft["kl_khat_true"] >= 0 and soft["w1_khat_true"] >= 0
  # The control: the tiny preset's norms grow with k, so the norm alone predicts it.
  assert r["data"]["spearman_norm_true"] > 0.5 and set(r["data"]["norm_by_class"]) == {"1", "2", "4", "8"}
  md = open(os.path.join(out, "results.md")).read()
  assert "| softsae@k4 |" in md and "KL(true‖L0)" in md and "KL(true‖k-hat)" in md and "row norm alone" in md
  # The data the models saw: the preset's train and held-out sets, with their ground truth.
  assert open_dataset(os.path.join(out, "data", "mixture", "test")).n_rows == 1024
  assert os.path.isfile(os.path.join(out, "data", "mixture", "test", "atoms.npy"))


@pytest.mark.slow
def test_synthetic_rerun_reuses_runs_and_reproduces(tiny_run, capsys):
  out, res = tiny_run
  assert cli.main(["bench", "synthetic", "--preset", "tiny", "--kind", "mixture", "--seed", "1", "--out", out,
                   "--steps", "20", "--quiet"]) == 0
  with open(os.path.join(out, "results.json")) as f:
    again = json.load(f)
  for name, m in res["mixture"]["models"].items():
    assert again["mixture"]["models"][name]["fvu"] == m["fvu"]
    assert again["mixture"]["models"][name]["l0_by_class"] == m["l0_by_class"]
  # Another seed in the same directory is refused with one line, before anything is written.
  assert cli.main(["bench", "synthetic", "--preset", "tiny", "--seed", "2", "--out", out, "--steps", "20",
                   "--quiet"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "another data set" in err[-1]


@pytest.mark.slow
def test_synthetic_seeds_summary(tmp_path, capsys):
  out = str(tmp_path / "seeds")
  assert cli.main(["bench", "synthetic", "--preset", "tiny-unitnorm", "--seeds", "0,1", "--out", out,
                   "--steps", "10", "--quiet"]) == 0
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  assert summary["meta"]["seeds"] == [0, 1] and "--seeds 0,1" in summary["meta"]["command"]
  r = summary["mixture"]
  for seed in (0, 1):  # each seed is a complete --seed run in its own directory
    with open(os.path.join(out, f"seed{seed}", "results.json")) as f:
      res = json.load(f)
    assert res["meta"]["seed"] == seed and f"--seed {seed}" in res["meta"]["command"]
    soft = res["mixture"]["models"]["softsae@k4"]
    assert r["per_seed"][str(seed)]["softsae_fvu"] == soft["fvu"]
    assert r["per_seed"][str(seed)]["spearman_khat_true"] == soft["spearman_khat_true"]
    assert abs(res["mixture"]["data"]["spearman_norm_true"]) < 0.1  # unit norm: the control is ~0
  fvus = [r["per_seed"][s]["softsae_fvu"] for s in ("0", "1")]
  assert r["mean_sd"]["softsae_fvu"]["mean"] == pytest.approx(np.mean(fvus))
  assert r["mean_sd"]["softsae_fvu"]["sd"] == pytest.approx(np.std(fvus, ddof=1))
  assert "± " in open(os.path.join(out, "summary.md")).read()
  assert "mixture, 2 seeds: softsae FVU" in capsys.readouterr().out


def test_bench_seed_and_seeds_exclusive(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["bench", "synthetic", "--seed", "1", "--seeds", "0,1", "--out", str(tmp_path / "x")])
  assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "x")


def test_bench_user_errors(tmp_path, capsys):
  assert cli.main(["bench", "synthetic", "--preset", "tiny", "--out", str(tmp_path / "a"), "--set", "sae.k=3"]) == 1
  assert cli.main(["bench", "synthetic", "--preset", "tiny", "--out", str(tmp_path / "b"), "--set", "sae.nope=1"]) == 1
  assert cli.main(["bench", "pareto", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 3 and all(line.startswith("error: ") for line in err)
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "c")


def _pareto(tiny_run, tmp_path, *flags: str) -> tuple[str, str, dict]:
  """Runs ``bench pareto`` on the tiny preset's mixture train set; returns (data, out, pareto.json)."""
  out, _ = tiny_run
  data = os.path.join(out, "data", "mixture", "train")
  pout = str(tmp_path / "pareto")
  rc = cli.main(["bench", "pareto", "--data", data, "--out", pout, *flags, "--batch-size", "64", "--quiet"])
  assert rc == 0
  for name in ("pareto.json", "pareto.md", "pareto.png"):
    assert os.path.getsize(os.path.join(pout, name)) > 0
  with open(os.path.join(pout, "pareto.json")) as f:
    return data, pout, json.load(f)


@pytest.mark.slow
def test_pareto_tiny(tiny_run, tmp_path):
  data, pout, res = _pareto(tiny_run, tmp_path, "--ks", "2,4", "--archs", "topk", "--steps", "10")
  assert set(res["runs"]) == {"topk@k2", "topk@k4"}
  assert res["runs"]["topk@k4"]["l0_mean"] <= 4.0
  # Held-out split: the last 10% of the rows, copied in order.
  src = open_dataset(data)
  train, held = open_dataset(os.path.join(pout, "split", "train")), open_dataset(os.path.join(pout, "split", "heldout"))
  n_hold = round(0.1 * src.n_rows)
  assert (train.n_rows, held.n_rows) == (src.n_rows - n_hold, n_hold)
  np.testing.assert_array_equal(np.asarray(held.mmap(0)), np.asarray(src.mmap(0))[src.n_rows - n_hold:])


# --------------------------------------------------------------------------------------------------
# Pareto sweeps: k for the k-sparsified archs, the L0-setting coefficient for jumprelu and relu.


def test_pareto_points_sweep_coefficients_not_k():
  pts = protocols.pareto_points(["topk", "jumprelu", "relu"], [4, 8, 4], {"jumprelu": [3e-3, 1e-3], "relu": [1.0, 0.3]})
  assert [p.name for p in pts] == ["topk@k4", "topk@k8", "jumprelu@l0c0.003", "jumprelu@l0c0.001", "relu@l1c1",
                                   "relu@l1c0.3"]
  assert [(p.k, p.field, p.coeff) for p in pts[1:3]] == [(8, None, None), (None, "l0_coeff", 3e-3)]
  # The coefficient reaches the config; k stays the library default (it does not set their L0).
  cfgs = [runs.make_config(p.arch, p.k, n_latents=64, steps=10, batch_size=8, seed=0, fields=p.fields) for p in pts]
  assert [c.sae.l0_coeff for c in cfgs[2:4]] == [3e-3, 1e-3] and [c.sae.l1_coeff for c in cfgs[4:]] == [1.0, 0.3]
  assert cfgs[2].sae.k == cfgs[4].sae.k == Config().sae.k and cfgs[1].sae.k == 8


def test_pareto_coefficient_user_errors(tmp_path, capsys):
  # The swept coefficient cannot also be --set: every run of the sweep would be the same.
  out = tmp_path / "p"
  assert cli.main(["bench", "pareto", "--data", str(tmp_path / "missing"), "--out", str(out), "--archs", "jumprelu",
                   "--set", "sae.l0_coeff=0.1"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "--l0-coeffs" in err[0]
  assert not os.path.exists(out)
  with pytest.raises(SystemExit) as e:
    cli.main(["bench", "pareto", "--data", str(tmp_path), "--l0-coeffs", "1e-3,-1"])
  assert e.value.code == 2
  assert "--l0-coeffs: expected a comma-separated list of numbers >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_pareto_jumprelu_sweeps_its_coefficient(tiny_run, tmp_path):
  _, pout, res = _pareto(tiny_run, tmp_path, "--archs", "topk,jumprelu", "--ks", "4,8", "--steps", "40")
  coeffs = {"jumprelu@l0c0.003": 3e-3, "jumprelu@l0c0.001": 1e-3, "jumprelu@l0c0.0003": 3e-4}  # the default sweep
  assert set(res["runs"]) == {"topk@k4", "topk@k8"} | set(coeffs)
  assert res["meta"]["l0_coeffs"] == [3e-3, 1e-3, 3e-4] and "--l0-coeffs 0.003,0.001,0.0003" in res["meta"]["command"]
  for name, c in coeffs.items():
    m = res["runs"][name]
    assert (m["arch"], m["k"], m["l0_coeff"]) == ("jumprelu", None, c)
    with open(os.path.join(pout, "runs", name, "config.json")) as f:
      assert json.load(f)["sae"]["l0_coeff"] == c
  for k in (4, 8):
    assert res["runs"][f"topk@k{k}"]["k"] == k and "l0_coeff" not in res["runs"][f"topk@k{k}"]
  # Three different runs, not one run three times: a smaller coefficient gives a larger L0.
  l0 = [res["runs"][name]["l0_mean"] for name in coeffs]
  assert l0[0] < l0[1] < l0[2]
  md = open(os.path.join(pout, "pareto.md")).read()
  assert "| jumprelu@l0c0.001 | – | sae.l0_coeff=0.001 |" in md and "| topk | " in md and "| jumprelu | " in md
