"""Tests for ``softsae bench absorption``, ``softsae bench stability`` and ``softsae eval --compare``.

Known answers: the generator's own dictionary absorbs nothing, a dictionary that merges each parent
into its children absorbs everything; two identical runs, or one run and a permutation of its
latents, match atom for atom; TwoNN recovers the dimension of a plane.
"""

import json
import os

import numpy as np
import pytest

from softsae_jax import cli, handmade
from softsae_jax.bench import absorption as A
from softsae_jax.bench import stability as S
from softsae_jax.config import Config, apply_overrides
from softsae_jax.evaluate import load
from softsae_jax.shards import ShardWriter

pytest.importorskip("scipy")


# --------------------------------------------------------------------------- absorption


@pytest.fixture(scope="module")
def hierarchy():
  return A.make_hierarchy(20000, seed=3, **A.DEFAULT_DATA)


def test_generator_hierarchy(hierarchy):
  h = hierarchy
  p, c = h.n_parents, h.n_children
  kids = h.mags_NA[:, p:p + p * c].reshape(len(h.x_ND), p, c)
  assert np.all((kids > 0).sum(axis=2) <= 1)  # at most one child per parent and row
  assert np.all(h.mags_NA[:, :p][(kids > 0).any(axis=2)] > 0)  # a child implies its parent
  np.testing.assert_allclose(h.atoms_AD @ h.atoms_AD.T, np.eye(len(h.atoms_AD)), atol=1e-5)  # orthonormal (A <= D)
  assert 4.0 < h.true_l0 < 5.3  # 8 * 0.25 * 1.5 + 16 * 0.1 = 4.6
  assert np.mean((kids > 0).any(axis=2)[h.mags_NA[:, :p] > 0]) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("which,expected", [("truth", 0.0), ("merged", 1.0)])
def test_hand_built_dictionaries_through_the_engine(hierarchy, tmp_path, which, expected):
  params = A.truth_params(hierarchy) if which == "truth" else A.merged_params(hierarchy)
  w = handmade.write_workdir(str(tmp_path / which), handmade.relu_config(64, params.w_dec.shape[0]), params)
  model = load(w)
  m = A.absorption_metrics(model.encode(hierarchy.x_ND), np.asarray(model.params.w_dec), hierarchy)
  assert m["absorption_rate"] == pytest.approx(expected, abs=0.01)
  assert m["parent_miss_rate"] == pytest.approx(expected, abs=0.01)
  assert m["parent_recall_alone"] > 0.99 and m["parent_cos"] == pytest.approx(1.0, abs=1e-5)
  assert m["child_rows"] == int(((hierarchy.mags_NA[:, 8:40] > 0).reshape(-1, 8, 4).any(axis=2)).sum())


def test_absorption_needs_the_parent_carried(hierarchy):
  """A parent latent that is off while nothing else carries the parent is a miss, not absorption."""
  params = A.truth_params(hierarchy)
  codes = np.maximum(hierarchy.x_ND @ params.w_enc + params.b_enc, 0.0)
  codes[:, :hierarchy.n_parents] = 0.0  # parents never fire; children carry nothing of them
  m = A.absorption_metrics(codes, params.w_dec, hierarchy)
  assert m["parent_miss_rate"] == 1.0 and m["absorption_rate"] == 0.0 and m["carried_mean"] < 0.05


@pytest.mark.slow
def test_bench_absorption_cli_tiny(tmp_path):
  out = tmp_path / "abs"
  argv = ["bench", "absorption", "--archs", "topk,jumprelu", "--rows", "4096", "--heldout-rows", "1024", "--steps",
          "60", "--batch-size", "256", "--n-latents", "96", "--out", str(out), "--quiet"]
  assert cli.main(argv) == 0
  res = json.loads((out / "absorption.json").read_text())
  models = res["models"]
  assert set(models) == {"(ground truth)", "(parent merged into children)", "topk@k5", "jumprelu@l0c0.01"}
  assert models["(ground truth)"]["absorption_rate"] < 0.01 and models["(parent merged into children)"][
      "absorption_rate"] > 0.99
  for m in models.values():
    assert 0.0 <= m["absorption_rate"] <= 1.0 and np.isfinite(m["fvu"])
  assert res["meta"]["k"] == 5 and "softsae bench absorption" in res["meta"]["command"]
  assert (out / "absorption.md").read_text().count("\n| ") == 5
  first = (out / "absorption.json").read_text()
  assert cli.main(argv) == 0  # a rerun reuses the data and the runs
  assert json.loads((out / "absorption.json").read_text())["models"] == json.loads(first)["models"]


# --------------------------------------------------------------------------- stability


def test_stability_is_one_for_identical_and_permuted_atoms():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(40, 8))
  perm = rng.permutation(40)
  for other in (w, w[perm], 3.0 * w[perm]):
    s = S.atom_stability(w, other)
    assert s["mean_max_cos"] == pytest.approx(1.0) and s["frac_matched"] == 1.0
    assert s["mean_matched_cos"] == pytest.approx(1.0)
  s = S.atom_stability(w, rng.normal(size=(40, 8)))
  assert s["frac_matched"] < 0.5 and s["mean_max_cos"] < 0.95


def test_stability_assignment_is_one_to_one():
  """Two copies of one atom cannot both be matched to it: the greedy max says 1, the assignment does not."""
  a = np.eye(4)
  b = np.stack([a[0], a[0], a[2], a[3]])
  s = S.atom_stability(a, b)
  assert s["frac_matched"] == 0.75 and s["mean_max_cos"] < 1.0


def _synthetic_acts(path, n=3000, d=16, seed=0):
  rng = np.random.default_rng(seed)
  atoms = rng.normal(size=(48, d))
  codes = (rng.random((n, 48)) < 0.08) * rng.uniform(0.5, 1.5, (n, 48))
  w = ShardWriter(str(path), d_model=d, dtype="float32")
  w.add((codes @ atoms).astype(np.float32))
  w.close()
  return str(path)


@pytest.mark.slow
def test_two_identical_trainings_and_a_permuted_copy_read_one(tmp_path):
  from softsae_jax import trainer

  data = _synthetic_acts(tmp_path / "acts")
  cfg = apply_overrides(Config(), ["sae.arch=topk", "sae.k=4", "sae.n_latents=32", "train.steps=20",
                                   "train.batch_size=128", "train.log_every=10"])
  models = []
  for name in ("a", "b"):
    trainer.train(data, str(tmp_path / name), cfg, progress=False, log=lambda m: None)
    models.append(load(str(tmp_path / name)))
  wa, wb = (np.asarray(m.params.w_dec) for m in models)
  assert S.atom_stability(wa, wb)["frac_matched"] == 1.0
  perm = np.random.default_rng(1).permutation(32)
  p = models[0].params
  permuted = handmade.write_workdir(
      str(tmp_path / "perm"), models[0].cfg,
      p._replace(w_enc=np.asarray(p.w_enc)[:, perm], b_enc=np.asarray(p.b_enc)[perm], w_dec=wa[perm]))
  s = S.atom_stability(wa, np.asarray(load(permuted).params.w_dec))
  assert s["frac_matched"] == 1.0 and s["mean_max_cos"] == pytest.approx(1.0)


@pytest.mark.slow
def test_bench_stability_cli_tiny(tmp_path):
  data = _synthetic_acts(tmp_path / "acts")
  out = tmp_path / "stab"
  assert cli.main(["bench", "stability", "--data", data, "--seeds", "0,1", "--archs", "topk,relu", "--k", "4",
                   "--steps", "40", "--batch-size", "128", "--n-latents", "32", "--out", str(out), "--quiet"]) == 0
  res = json.loads((out / "stability.json").read_text())
  assert set(res["models"]) == {"topk@k4", "relu@l1c0.3"}
  for m in res["models"].values():
    assert 0.0 <= m["frac_matched"] <= 1.0 and -1.0 <= m["mean_max_cos"] <= 1.0 and list(m["pairs"]) == ["0-1"]
    assert set(m["seeds"]) == {"0", "1"}
  assert os.path.isfile(out / "stability.md")
  assert cli.main(["bench", "stability", "--data", data, "--seeds", "1,1", "--out", str(out), "--quiet"]) == 1


# --------------------------------------------------------------------------- eval --compare


def test_twonn_recovers_a_plane_and_a_cube():
  from softsae_jax import khat

  rng = np.random.default_rng(0)
  for dim in (2, 5):
    x = np.concatenate([rng.uniform(size=(1500, dim)), np.zeros((1500, 12 - dim))], axis=1)
    lid, g = khat.twonn_local_id(x @ np.linalg.qr(rng.normal(size=(12, 12)))[0])
    assert g == pytest.approx(dim, rel=0.2)
    assert np.nanmedian(lid) == pytest.approx(dim, rel=0.35)


def test_eval_compare_block(tmp_path, capsys):
  """A thresholded identity SAE (its L0 grows with the norm) against a half-scale one: the keys, finite
  values, and k = the L0 for a non-SoftSAE run."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(600, 6)).astype(np.float32) * rng.uniform(0.5, 3, (600, 1)).astype(np.float32)
  w = ShardWriter(str(tmp_path / "acts"), d_model=6, dtype="float32")
  w.add(x)
  w.close()
  p = handmade.identity_params(6)
  ident = handmade.write_workdir(str(tmp_path / "id"), handmade.relu_config(6, 12),
                                 p._replace(b_enc=np.full(12, -0.8, np.float32)))
  half = handmade.write_workdir(str(tmp_path / "half"), handmade.relu_config(6, 12),
                                p._replace(w_dec=0.5 * np.asarray(p.w_dec)))
  out = tmp_path / "eval.json"
  assert cli.main(["eval", "--workdir", ident, "--data", str(tmp_path / "acts"), "--compare", half, "--out", str(out),
                   "--lid-sample", "300", "--lid-neighbors", "10"]) == 0
  c = json.loads(out.read_text())["compare"]
  assert c["k_source"] == "l0" and c["compare_arch"] == "relu" and c["n_rows"] == 600 and c["lid_sample"] == 300
  # the half-scale run's error is 0.25 ||x||^2: perfectly ranked by the norm
  assert c["spearman_err_compare_norm"] == pytest.approx(1.0)
  for key in ("spearman_k_err_compare", "spearman_k_norm", "spearman_k_lid", "partial_spearman_k_lid_given_norm",
              "twonn_global_id"):
    assert c[key] is not None and np.isfinite(c[key]), key
  assert 3.0 < c["twonn_global_id"] < 9.0 and c["spearman_k_norm"] > 0.5
  assert json.loads(capsys.readouterr().out)["compare"]["n_rows"] == 600


# --------------------------------------------------------------------------- report


def test_report_shows_the_evaluations_next_to_the_run(tmp_path):
  from softsae_jax.report import build_report

  rng = np.random.default_rng(0)
  w = ShardWriter(str(tmp_path / "acts"), d_model=6, dtype="float32")
  w.add(rng.normal(size=(300, 6)).astype(np.float32))
  w.close()
  wd = handmade.write_workdir(str(tmp_path / "id"), handmade.relu_config(6, 12), handmade.identity_params(6))
  page = open(build_report(wd, str(tmp_path / "acts"), max_rows=300)).read()
  assert '<section id="evals">' in page and "fidelity.json" in page and "No downstream evaluation" in page
  (tmp_path / "id" / "fidelity.json").write_text(json.dumps(
      {"cos_sae": 0.9, "emb_score_mean": 0.8, "sim_spearman_sae": 0.7, "n_docs": 5,
       "meta": {"kind": "encoder", "model": "m", "layer": 3, "command": "softsae fidelity --workdir id"}}))
  (tmp_path / "id" / "probe.json").write_text(json.dumps(
      {"classes": ["a", "b"], "n_docs": 10, "sae_acc": {"1": 0.61, "20": 0.82}, "raw_acc": {"1": 0.55, "20": 0.8},
       "full_acc": 0.93, "tpp": {"5": 0.125}, "meta": {"command": "softsae probe x"}}))
  (tmp_path / "id" / "eval.json").write_text(json.dumps({"fvu": 0.1, "compare": {"spearman_k_norm": 0.456}}))
  page = open(build_report(wd, str(tmp_path / "acts"), max_rows=300)).read()
  assert "No downstream evaluation" not in page
  for text in ("emb_score_mean", "<td>0.8<", "softsae fidelity --workdir id", ">0.61<", ">0.93<", "N=5: 0.125",
               "spearman_k_norm", ">0.456<"):
    assert text in page, text
