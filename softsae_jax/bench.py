"""``softsae bench``: evidence benchmarks (synthetic ground truth; FVU against L0 on any activations).

Two subcommands.

``softsae bench synthetic [--preset tiny|small|full] [--kind mixture|manifolds|both] [--seed N] [--out DIR]``

For each kind of synthetic data (:mod:`softsae_jax.synthetic`: sparse mixtures with a known
dictionary and per-row k; unions of manifolds with a known local dimension):

1. generate the preset's train and held-out sets (``write_dataset`` into ``OUT/data/<kind>/{train,test}``);
2. train ``softsae`` at the preset's target k and measure its mean inference L0 on the held-out set;
3. train ``topk``, ``batchtopk`` and ``matryoshka`` at the matched ``k_m = round(SoftSAE mean L0)``,
   ``topk`` at the target k as a reference, and ``topk`` at the integers on both sides of SoftSAE's
   mean L0 (``floor``, ``ceil``; one of them is ``k_m``) so that TopK's FVU can be interpolated
   linearly to SoftSAE's exact L0 (a model is trained once when two roles share a k);
4. evaluate every model on the held-out set and write ``OUT/results.json``, ``OUT/results.md`` and
   PNG plots (``OUT/<kind>_*.png``).

Every model gets the library's default config except the fields the bench sets (``sae.arch``,
``sae.k``, ``sae.n_latents``, ``train.steps``, ``train.batch_size``, ``train.seed``, and the
logging/checkpoint intervals), so the comparison is about the defaults. ``--set section.key=value``
changes a field for *every* model (``sae.arch``, ``sae.k``, ``train.steps`` and ``train.seed`` are
the bench's: use ``--steps`` and ``--seed``).

Metrics, all on the held-out set with the library's inference rules (:mod:`softsae_jax.evaluate`):

* ``fvu``, ``l0_mean``, ``dead_fraction`` (latents never active on the held-out set), ... as
  :func:`softsae_jax.evaluate.evaluate` returns them;
* ``spearman_khat_true`` / ``pearson_khat_true`` (SoftSAE's real k-hat against the true k, or the
  local dimension for manifolds) and ``spearman_l0_true`` / ``pearson_l0_true`` (each row's number
  of active latents against the true k; for every arch — BatchTopK/Matryoshka's threshold inference
  also gives a per-row L0). A correlation with a constant (TopK's L0) is undefined: ``null``;
* ``khat_by_class`` / ``l0_by_class``: the mean k-hat / L0 over the rows of each true k;
* ``kl_l0_true``: KL(P_true || Q_L0) in nats between the true-k distribution and the per-row L0
  distribution, both histograms over the integers 0..max, each smoothed by adding
  :data:`KL_SMOOTHING` (= 0.5, the Krichevsky-Trofimov pseudo-count) to every bin, so an empty bin
  costs a finite amount; ``w1_l0_true``: the 1-Wasserstein (earth mover's) distance between the two
  integer distributions (no smoothing; in units of "latents");
* ``dict_recovery`` (mixtures only): mean over the true atoms of the largest *signed* cosine
  similarity with a decoder atom, and the fraction of true atoms with such a match above 0.9.

``softsae bench pareto --data DIR [--ks 8,16,32] [--archs softsae,topk,batchtopk,matryoshka] [--steps N]``

FVU against mean L0 for each arch over a sweep of k on any ``softsae-activations/1`` set. The last
``--holdout`` fraction of the rows (default 10%, in data order) is held out: the bench writes two
views, ``OUT/split/train`` (the first rows) and ``OUT/split/heldout`` (the last rows), as copies, once,
and reuses them on a rerun. ``--holdout 0`` trains and evaluates on the same rows (no copy).
In data order, activations of text are grouped by document, so the held-out rows come from other
documents than most training rows. Writes ``OUT/pareto.json``, ``OUT/pareto.md`` and ``OUT/pareto.png``.

Both subcommands are deterministic functions of their arguments and ``--seed`` on one machine
(data, initialisation and batch order are seeded; timings are reported apart from the metrics), and
a rerun with the same ``--out`` reuses the finished runs (the trainer resumes or skips them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from typing import Any, Sequence

import numpy as np

from softsae_jax import files, synthetic
from softsae_jax.cli_types import choice_list, int_list, nonneg_int, positive_int, proper_fraction
from softsae_jax.stats import pearson, rankdata, spearman
from softsae_jax.config import ARCHS, Config, ConfigError, apply_overrides
from softsae_jax.shards import DataError, ShardWriter, open_dataset

KL_SMOOTHING = 0.5
"""Pseudo-count added to every integer bin of both histograms before the KL divergence."""

RECOVERY_THRESHOLD = 0.9
"""A true atom counts as recovered when some decoder atom has cosine similarity above this."""

EVAL_BATCH = 1024

BENCH_PRESETS: dict[str, dict[str, Any]] = {
    # For tests and smoke runs: seconds on a CPU. Not meant to say anything about the methods.
    "tiny": {
        "data": {
            "mixture": dict(n_train=4096, n_test=1024, d=16, n_atoms=48, k_values=(1, 2, 4, 8)),
            "manifolds": dict(n_train=4096, n_test=1024, d=16, dims=(1, 2, 4, 8), n_manifolds_per_dim=2),
        },
        "n_latents": 64, "k": 4, "steps": 40, "batch_size": 128,
    },
    # The CPU benchmark (synthetic.PRESETS["small"]): D = 48, 256 true atoms, F = 384.
    "small": {"data": synthetic.PRESETS["small"], "n_latents": 384, "k": 8, "steps": 2800, "batch_size": 512},
    # The accelerator benchmark (synthetic.PRESETS["full"]): D = 128, 1024 true atoms, F = 1536.
    "full": {"data": synthetic.PRESETS["full"], "n_latents": 1536, "k": 8, "steps": 16000, "batch_size": 2048},
}
"""``softsae bench synthetic`` presets: the data (``make_<kind>_pair`` arguments), the SAE width F,
the target k, and the optimisation length. The SAE has 1.5x as many latents as there are true atoms."""

KINDS = ("mixture", "manifolds")
ARCH_COLORS = {"softsae": "C3", "topk": "C0", "batchtopk": "C2", "matryoshka": "C4", "relu": "C5"}
BENCH_KEYS = ("sae.arch", "sae.k", "train.steps", "train.seed")  # the bench's (--steps, --seed); not --set


# --------------------------------------------------------------------------------------------------
# Metric functions (numpy only; unit-tested on hand-made inputs).


def _int_values(v: Sequence[float], name: str) -> np.ndarray:
  a = np.asarray(v, np.float64).ravel()
  if len(a) == 0 or np.any(a < 0) or np.any(a != np.round(a)):
    raise ValueError(f"Expected {name} to be non-empty non-negative integers, got {a[:5].tolist()}...")
  return a.astype(np.int64)


def int_histogram(values: Sequence[float], n_bins: int, smoothing: float = 0.0) -> np.ndarray:
  """The distribution of non-negative integers over bins 0..n_bins-1, with ``smoothing`` added to
  every bin's count before normalising."""
  v = _int_values(values, "values")
  if v.max() >= n_bins:
    raise ValueError(f"Expected values < n_bins={n_bins}, got {int(v.max())}")
  counts = np.bincount(v, minlength=n_bins).astype(np.float64) + smoothing
  return counts / counts.sum()


def kl_int(p_values: Sequence[float], q_values: Sequence[float], smoothing: float = KL_SMOOTHING) -> float:
  """KL(P || Q) in nats between the integer distributions of two samples.

  Both are histograms over 0..max(all values), each with ``smoothing`` added to every bin (so a bin
  that Q never visits costs a finite amount). Identical samples give exactly 0.

  Examples:
    >>> kl_int([3, 3, 5], [3, 3, 5])
    0.0
  """
  p_v, q_v = _int_values(p_values, "p_values"), _int_values(q_values, "q_values")
  n_bins = int(max(p_v.max(), q_v.max())) + 1
  p = int_histogram(p_v, n_bins, smoothing)
  q = int_histogram(q_v, n_bins, smoothing)
  if np.any((p > 0) & (q == 0)):
    return float("inf")
  nz = p > 0
  return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def wasserstein_int(a_values: Sequence[float], b_values: Sequence[float]) -> float:
  """1-Wasserstein distance between the distributions of two samples of non-negative integers
  (sum over integers of |CDF_a - CDF_b|).

  Examples:
    >>> wasserstein_int([2, 2], [4, 4])
    2.0
  """
  a_v, b_v = _int_values(a_values, "a_values"), _int_values(b_values, "b_values")
  n_bins = int(max(a_v.max(), b_v.max())) + 1
  cdf_a = np.cumsum(int_histogram(a_v, n_bins))
  cdf_b = np.cumsum(int_histogram(b_v, n_bins))
  return float(np.sum(np.abs(cdf_a - cdf_b)))


def dictionary_recovery(true_AD: np.ndarray, learned_FD: np.ndarray,
                        threshold: float = RECOVERY_THRESHOLD) -> dict[str, float]:
  """How well the learned atoms (rows of ``learned_FD``) cover the true atoms (rows of ``true_AD``).

  Returns ``mean_max_cos`` (mean over true atoms of the largest signed cosine similarity with a
  learned atom) and ``frac_recovered`` (fraction of true atoms whose best match exceeds
  ``threshold``). Rows are normalised here; zero rows never match.

  Examples:
    >>> dictionary_recovery(np.eye(3), np.eye(3))["mean_max_cos"]
    1.0
  """
  t = np.asarray(true_AD, np.float64)
  w = np.asarray(learned_FD, np.float64)
  if t.ndim != 2 or w.ndim != 2 or t.shape[1] != w.shape[1]:
    raise ValueError(f"Expected true_AD [A, D] and learned_FD [F, D] of the same D, got {t.shape} and {w.shape}")
  t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-30)
  w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-30)
  best_A = (t @ w.T).max(axis=1)
  return {"mean_max_cos": float(np.mean(best_A)), "frac_recovered": float(np.mean(best_A > threshold))}


def class_means(values: Sequence[float], classes: Sequence[int]) -> dict[str, float]:
  """{str(class): mean of values over the rows of that class}, classes in increasing order."""
  v = np.asarray(values, np.float64).ravel()
  c = np.asarray(classes).ravel()
  return {str(int(k)): float(v[c == k].mean()) for k in np.unique(c)}


def increasing(means: dict[str, float]) -> bool:
  """Whether the per-class means strictly increase with the class."""
  vals = [means[k] for k in sorted(means, key=int)]
  return bool(np.all(np.diff(vals) > 0))


def _finite_or_none(x: float) -> float | None:
  return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------------------
# Running: configs, training, per-row inference.


class _Log:
  def __init__(self, quiet: bool):
    self.t0 = time.time()
    self.quiet = quiet

  def __call__(self, msg: str) -> None:
    if not self.quiet:
      print(f"[bench {time.time() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _check_overrides(overrides: Sequence[str]) -> list[str]:
  out = []
  for item in overrides or []:
    key = item.split("=", 1)[0].strip()
    if key in BENCH_KEYS:
      raise ConfigError(f"--set {key}=... is chosen by the bench (use --steps / --seed for steps and seed)")
    out.append(item)
  apply_overrides(Config(), out)  # type/key check before anything runs
  return out


def make_config(arch: str, k: int, *, n_latents: int | None, steps: int, batch_size: int, seed: int,
                overrides: Sequence[str] = ()) -> Config:
  """The library default config with the bench's fields set, then the user's ``--set`` overrides."""
  fields = [f"sae.arch={arch}", f"sae.k={k}", f"train.steps={steps}", f"train.batch_size={batch_size}",
            f"train.seed={seed}", f"train.checkpoint_every={steps}", "train.keep_checkpoints=1",
            f"train.log_every={max(1, steps // 20)}"]
  if n_latents is not None:
    fields.append(f"sae.n_latents={n_latents}")
  return apply_overrides(Config(), fields + list(overrides))


def _train_and_load(data_dir: str, workdir: str, cfg: Config, log: _Log, label: str):
  from softsae_jax import trainer
  from softsae_jax.evaluate import load

  log(f"{label}: training {cfg.sae.arch} k={cfg.sae.k} F={cfg.sae.n_latents or 'default'} "
      f"({cfg.train.steps} steps x {cfg.train.batch_size} rows) -> {workdir}")
  t0 = time.time()
  last = trainer.train(data_dir, workdir, cfg, progress=False, log=lambda m: log(f"{label}: {m}"))
  secs = None if last.get("finished") else time.time() - t0  # None: an earlier run's model, reused
  return load(workdir), secs


def _secs(secs: float | None) -> float | None:
  return None if secs is None else round(secs, 1)


def _secs_text(secs: float | None) -> str:
  return "reused" if secs is None else f"{secs:.0f}s"


def _eval_summary(res: dict[str, Any]) -> dict[str, Any]:
  keys = ("fvu", "fve", "mse", "cosine", "l0_mean", "l0_std", "l0_min", "l0_max", "dead_fraction",
          "dense_fraction", "k_hat_mean", "k_hat_std", "k_hat_min", "k_hat_max")
  return {k: res[k] for k in keys if k in res}


# --------------------------------------------------------------------------------------------------
# bench synthetic


def _prepare_synthetic(out: str, preset: str, kind: str, seed: int, log: _Log) -> tuple[str, str, Any]:
  """Writes (or reuses) OUT/data/<kind>/{train,test}; returns their paths and the test set."""
  spec = BENCH_PRESETS[preset]["data"][kind]
  make = synthetic.make_mixture_pair if kind == "mixture" else synthetic.make_manifolds_pair
  train, test = make(**spec, seed=seed)
  paths = []
  for split, data in (("train", train), ("test", test)):
    path = os.path.join(out, "data", kind, split)
    mpath = os.path.join(path, "manifest.json")
    if os.path.isfile(mpath):
      with open(mpath) as f:
        saved = json.load(f)
      if saved.get("synthetic") != json.loads(json.dumps(data.meta)) or not saved.get("complete", False):
        raise DataError(f"{path} holds another data set (or an unfinished one) than --preset {preset} "
                        f"--kind {kind} --seed {seed} makes; use a new --out")
      log(f"{kind}: reusing {path}")
    else:
      if os.path.isdir(path) and os.listdir(path):
        raise DataError(f"{path} exists and is not a finished data set; remove it or use a new --out")
      synthetic.write_dataset(path, data)
      log(f"{kind}: wrote {len(data.x_ND)} {split} rows to {path}")
    paths.append(path)
  return paths[0], paths[1], test


def _model_metrics(model, test_ds, true_k: np.ndarray, atoms_AD: np.ndarray | None) -> tuple[dict[str, Any], dict]:
  from softsae_jax.evaluate import scan

  acc = scan(model, test_ds, batch_size=EVAL_BATCH, per_row=True)
  res = _eval_summary(acc.summary())
  per = acc.rows()
  rows = {"l0": per.l0_N.astype(np.int64), "k": per.k_N}
  l0 = rows["l0"]
  res.update({
      "spearman_l0_true": _finite_or_none(spearman(l0, true_k)),
      "pearson_l0_true": _finite_or_none(pearson(l0, true_k)),
      "l0_by_class": class_means(l0, true_k),
      "kl_l0_true": kl_int(true_k, l0),
      "w1_l0_true": wasserstein_int(true_k, l0),
  })
  if model.cfg.sae.arch == "softsae":
    kh = rows["k"]
    res.update({
        "spearman_khat_true": _finite_or_none(spearman(kh, true_k)),
        "pearson_khat_true": _finite_or_none(pearson(kh, true_k)),
        "khat_by_class": class_means(kh, true_k),
    })
  if atoms_AD is not None:
    res["dict_recovery"] = dictionary_recovery(atoms_AD, np.asarray(model.params.w_dec))
  return res, rows


def run_synthetic_kind(out: str, preset: str, kind: str, seed: int, overrides: Sequence[str], log: _Log,
                       steps: int | None = None) -> dict[str, Any]:
  """Runs the whole protocol on one kind of data; returns its results block (and keeps per-row
  outputs for the plots under the key ``_rows``)."""
  p = BENCH_PRESETS[preset]
  steps = steps or p["steps"]
  train_dir, test_dir, test = _prepare_synthetic(out, preset, kind, seed, log)
  test_ds = open_dataset(test_dir)
  true_k = np.asarray(synthetic.load_side(test_dir, "true_k"), np.int64)
  atoms_AD = np.load(os.path.join(test_dir, test_ds.manifest["atoms"])) if kind == "mixture" else None
  cfg_kw = dict(n_latents=p["n_latents"], steps=steps, batch_size=p["batch_size"], seed=seed, overrides=overrides)
  target = p["k"]

  models: dict[str, dict[str, Any]] = {}
  rows: dict[str, dict] = {}
  timing: dict[str, float] = {}
  trained: dict[tuple[str, int], str] = {}

  def run_model(arch: str, k: int, role: str) -> dict[str, Any]:
    name = f"{arch}@k{k}"
    if (arch, k) in trained:  # the same config twice (e.g. matched k == target k): one model, two roles
      roles = models[trained[(arch, k)]]["roles"]
      if role not in roles:
        roles.append(role)
      return models[trained[(arch, k)]]
    cfg = make_config(arch, k, **cfg_kw)
    model, secs = _train_and_load(train_dir, os.path.join(out, "runs", kind, name), cfg, log, f"{kind} {name}")
    res, r = _model_metrics(model, test_ds, true_k, atoms_AD)
    res.update({"name": name, "arch": arch, "k": k, "roles": [role], "steps": steps,
                "config": model.cfg.to_dict()})
    models[name], rows[name], timing[name] = res, r, _secs(secs)
    trained[(arch, k)] = name
    extra = f", k-hat Spearman {_fmt(res['spearman_khat_true'])}" if arch == "softsae" else ""
    log(f"{kind} {name}: held-out FVU {res['fvu']:.4f}, mean L0 {res['l0_mean']:.2f}, "
        f"dead {100 * res['dead_fraction']:.1f}%{extra} ({_secs_text(secs)})")
    return res

  soft = run_model("softsae", target, "method")
  matched = max(1, int(round(soft["l0_mean"])))
  log(f"{kind}: SoftSAE mean inference L0 {soft['l0_mean']:.3f} -> matched k = {matched}")
  topk_ref = run_model("topk", target, "reference (target k)")
  topk_m = run_model("topk", matched, "matched")
  # TopK at the integers on both sides of SoftSAE's (real) mean L0, to interpolate its FVU there:
  # round() alone hands TopK up to half a latent more or less than SoftSAE uses.
  lo, hi = math.floor(soft["l0_mean"]), math.ceil(soft["l0_mean"])
  interp = None
  if lo >= 1:
    fvu_lo = run_model("topk", lo, "bracket")["fvu"]
    fvu_hi = run_model("topk", hi, "bracket")["fvu"]
    w = soft["l0_mean"] - lo
    interp = {"l0": soft["l0_mean"], "k_low": lo, "k_high": hi, "fvu": (1.0 - w) * fvu_lo + w * fvu_hi}
  for arch in ("batchtopk", "matryoshka"):
    run_model(arch, matched, "matched")

  true_means = class_means(true_k, true_k)
  checks = {
      "spearman_khat_true_ge_0.7": bool((soft["spearman_khat_true"] or -1.0) >= 0.7),
      "khat_increases_with_true_class": increasing(soft["khat_by_class"]),
      "l0_within_25pct_of_target": bool(abs(soft["l0_mean"] - target) <= 0.25 * target),
      "fvu_le_topk_at_matched_l0": bool(soft["fvu"] <= topk_m["fvu"]),
  }
  if interp is not None:
    checks["fvu_le_topk_interpolated_at_l0"] = bool(soft["fvu"] <= interp["fvu"])
  return {
      "kind": kind, "target_k": target, "matched_k": matched, "softsae_l0_mean": soft["l0_mean"],
      "data": {"train": os.path.abspath(train_dir), "test": os.path.abspath(test_dir),
               "generator": test.meta, "true_k_mean": float(true_k.mean()),
               "true_k_distribution": {str(int(c)): float(np.mean(true_k == c)) for c in np.unique(true_k)}},
      "acceptance": checks, "models": models, "timing_s": timing,
      "topk_reference": topk_ref["name"], "topk_matched": topk_m["name"], "topk_interpolated": interp,
      "_rows": rows, "_true_k": true_k, "_true_means": true_means,
  }


def _fmt(x: Any, nd: int = 3) -> str:
  if x is None:
    return "–"
  if isinstance(x, float):
    return f"{x:.{nd}f}" if math.isfinite(x) else "inf"
  return str(x)


def _code_line(meta: dict[str, Any]) -> str:
  if "git_head" not in meta:
    return "Code: unknown (no git checkout)."
  mod = meta["git_modified"]
  return f"Code: {meta['git_head'][:10]}" + (f" with uncommitted changes to {', '.join(mod)}." if mod else ".")


def synthetic_markdown(results: dict[str, Any]) -> str:
  meta = results["meta"]
  lines = [f"# softsae bench synthetic — preset {meta['preset']}, seed {meta['seed']}", "",
           f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; host: {meta['host']}; "
           f"total {meta['total_seconds']:.0f} s.  ", _code_line(meta), ""]
  if meta["overrides"]:
    lines += [f"Config overrides for every model: `{' '.join(meta['overrides'])}`", ""]
  for kind in meta["kinds"]:
    r = results[kind]
    true_dist = ", ".join(f"{k}: {v:.2f}" for k, v in r["data"]["true_k_distribution"].items())
    what = "true k" if kind == "mixture" else "local dimension"
    lines += [f"## {kind}", "",
              f"Target k = {r['target_k']}; SoftSAE mean inference L0 = {r['softsae_l0_mean']:.3f} → matched "
              f"k = {r['matched_k']}. Held-out {what} distribution: {true_dist} (mean {r['data']['true_k_mean']:.2f}).",
              "", "| model | role | L0 mean | FVU | Spearman(L0, true) | Pearson(L0, true) | KL(true‖L0) | "
              "W1(true, L0) | dict. recovery (mean max cos / >0.9) | dead |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
      rec = m.get("dict_recovery")
      rec_s = f"{rec['mean_max_cos']:.3f} / {rec['frac_recovered']:.2f}" if rec else "–"
      lines.append(f"| {name} | {', '.join(m['roles'])} | {m['l0_mean']:.2f} | {m['fvu']:.4f} | "
                   f"{_fmt(m['spearman_l0_true'])} | {_fmt(m['pearson_l0_true'])} | {_fmt(m['kl_l0_true'])} | "
                   f"{_fmt(m['w1_l0_true'], 2)} | {rec_s} | {100 * m['dead_fraction']:.1f}% |")
    classes = sorted(r["_true_means"], key=int)
    lines += ["", f"Mean per true class ({what} = {', '.join(classes)}):", "",
              "| model | quantity | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for name, m in r["models"].items():
      if "khat_by_class" in m:
        lines.append(f"| {name} | k-hat | " + " | ".join(f"{m['khat_by_class'][c]:.2f}" for c in classes) + " |")
      lines.append(f"| {name} | L0 | " + " | ".join(f"{m['l0_by_class'][c]:.2f}" for c in classes) + " |")
    soft = r["models"][f"softsae@k{r['target_k']}"]
    ip = r["topk_interpolated"]
    if ip is not None:
      lines += ["", f"TopK FVU interpolated linearly in L0 between k = {ip['k_low']} and k = {ip['k_high']} at "
                f"SoftSAE's L0 {ip['l0']:.3f}: {ip['fvu']:.4f} (SoftSAE: {soft['fvu']:.4f}, "
                f"{100 * (soft['fvu'] / ip['fvu'] - 1):+.1f}%)."]
    lines += ["", f"SoftSAE k-hat vs {what}: Spearman {_fmt(soft['spearman_khat_true'])}, Pearson "
              f"{_fmt(soft['pearson_khat_true'])}.", "",
              "Acceptance checks (SoftSAE, this run):", ""]
    lines += [f"- {k}: {'yes' if v else 'NO'}" for k, v in r["acceptance"].items()]
    lines += ["", "Training time per model (s; 'reused' = trained by an earlier run in this directory): "
              + ", ".join(f"{k} {'reused' if v is None else v}" for k, v in r["timing_s"].items()), ""]
  lines += ["KL(true‖L0): nats, integer histograms over 0..max with a pseudo-count of "
            f"{KL_SMOOTHING} added to every bin of both. W1: earth mover's distance between the integer "
            "distributions. Dictionary recovery: signed cosine; a true atom counts as recovered above "
            f"{RECOVERY_THRESHOLD}. Dead: latents never active on the held-out set.", ""]
  return "\n".join(lines)


def _plots_synthetic(out: str, r: dict[str, Any]) -> list[str]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kind = r["kind"]
  what = "true k" if kind == "mixture" else "local dimension"
  written = []
  colors = ARCH_COLORS

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, m in r["models"].items():
    ax.scatter(m["l0_mean"], m["fvu"], color=colors[m["arch"]], s=40)
    ax.annotate(name, (m["l0_mean"], m["fvu"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel("mean inference L0 (held-out)")
  ax.set_ylabel("FVU (held-out)")
  ax.set_title(f"{kind}: FVU at matched L0")
  ax.grid(alpha=0.3)
  written.append(_save(fig, out, f"{kind}_fvu_l0.png"))

  classes = sorted(r["_true_means"], key=int)
  xs = [int(c) for c in classes]
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.plot(xs, xs, "k:", label="ideal (= true)")
  for name, m in r["models"].items():
    if m["roles"] == ["bracket"]:  # only there for the FVU interpolation
      continue
    style = "o:" if m["roles"] == ["reference (target k)"] else "o-"
    ax.plot(xs, [m["l0_by_class"][c] for c in classes], style, color=colors[m["arch"]], label=f"{name} L0",
            alpha=0.8)
    if "khat_by_class" in m:
      ax.plot(xs, [m["khat_by_class"][c] for c in classes], "s--", color=colors[m["arch"]],
              label=f"{name} k-hat")
  ax.set_xscale("log", base=2)
  ax.set_xticks(xs, [str(x) for x in xs])
  ax.set_xlabel(what)
  ax.set_ylabel("mean over rows of the class")
  ax.set_title(f"{kind}: active latents per {what}")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  written.append(_save(fig, out, f"{kind}_k_by_class.png"))

  true_k = r["_true_k"]
  top = int(max(true_k.max(), *(rows["l0"].max() for rows in r["_rows"].values()))) + 1
  bins = np.arange(top + 1) - 0.5
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.hist(true_k, bins=bins, density=True, color="0.7", label=what)
  peak = float(np.bincount(true_k).max() / len(true_k))
  for name, rows in r["_rows"].items():
    if r["models"][name]["roles"] == ["bracket"]:
      continue
    top_frac = float(np.bincount(rows["l0"]).max() / len(rows["l0"]))
    spike = top_frac > 0.9  # a fixed-k model: one bar holding (nearly) every row, drawn off scale
    if not spike:
      peak = max(peak, top_frac)
    ax.hist(rows["l0"], bins=bins, density=True, histtype="step", lw=1.5, ls=":" if spike else "-",
            color=colors[r["models"][name]["arch"]], label=f"{name} L0" + (" (off scale)" if spike else ""))
  ax.set_ylim(0, min(1.02, 1.15 * peak))
  ax.set_xlabel("active latents per row")
  ax.set_ylabel("fraction of rows")
  ax.set_title(f"{kind}: L0 distribution vs {what}")
  ax.legend(fontsize=7)
  written.append(_save(fig, out, f"{kind}_l0_hist.png"))
  return written


def _save(fig, out: str, name: str) -> str:
  import matplotlib.pyplot as plt

  path = os.path.join(out, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _git_state() -> dict[str, Any]:
  """HEAD of the checkout this package runs from and its library files that differ from it (so a
  result can be tied to the code); empty when git or the repository is not available."""
  import subprocess

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "softsae_jax"], capture_output=True,
                           text=True, timeout=10, check=True).stdout.splitlines()
  except (OSError, subprocess.SubprocessError):
    return {}
  return {"git_head": head, "git_modified": [line[3:] for line in dirty]}


def _meta(args, command: str, t0: float) -> dict[str, Any]:
  import jax

  return {"command": command, "seed": args.seed, "overrides": list(args.set or []), **_git_state(),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "host": f"{platform.node()} ({os.cpu_count()} CPUs, {jax.devices()[0].platform})",
          "jax": jax.__version__, "python": platform.python_version(), "total_seconds": round(time.time() - t0, 1)}


def cmd_synthetic(args) -> int:
  t0 = time.time()
  log = _Log(args.quiet)
  overrides = _check_overrides(args.set)
  kinds = list(KINDS) if args.kind == "both" else [args.kind]
  out = args.out or os.path.join("runs", f"bench-synthetic-{args.preset}-seed{args.seed}")
  p = BENCH_PRESETS[args.preset]
  for kind in kinds:  # every config is checked before anything is written
    d = p["data"][kind]["d"]
    for arch in ("softsae", "topk", "batchtopk", "matryoshka"):
      make_config(arch, p["k"], n_latents=p["n_latents"], steps=args.steps or p["steps"], batch_size=p["batch_size"],
                  seed=args.seed, overrides=overrides).resolve(d)
  os.makedirs(out, exist_ok=True)
  results: dict[str, Any] = {}
  for kind in kinds:
    results[kind] = run_synthetic_kind(out, args.preset, kind, args.seed, overrides, log, steps=args.steps)
  command = "softsae bench synthetic " + " ".join(
      [f"--preset {args.preset}", f"--kind {args.kind}", f"--seed {args.seed}", f"--out {out}"]
      + ([f"--steps {args.steps}"] if args.steps else []) + [f"--set {s}" for s in overrides])
  results["meta"] = {**_meta(args, command, t0), "preset": args.preset, "kinds": kinds,
                     "preset_spec": {k: v for k, v in p.items() if k != "data"},
                     "steps": args.steps or p["steps"], "kl_smoothing": KL_SMOOTHING,
                     "recovery_threshold": RECOVERY_THRESHOLD}
  written = []
  for kind in kinds:
    written += _plots_synthetic(out, results[kind])
  results["meta"]["total_seconds"] = round(time.time() - t0, 1)
  md = synthetic_markdown(results)
  public = {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if k in kinds else v)
            for k, v in results.items()}
  files.write_json(os.path.join(out, "results.json"), public, allow_nan=False)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(md)
  written = [os.path.join(out, "results.json"), os.path.join(out, "results.md")] + written
  log(f"done in {time.time() - t0:.0f}s; wrote {', '.join(written)}")
  for kind in kinds:
    r = results[kind]
    soft = r["models"][f"softsae@k{r['target_k']}"]
    tm = r["models"][r["topk_matched"]]
    ip = r["topk_interpolated"]
    ip_s = f", interpolated at L0 {ip['l0']:.2f}: {ip['fvu']:.4f}" if ip else ""
    print(f"{kind}: softsae FVU {soft['fvu']:.4f} at L0 {soft['l0_mean']:.2f} (k-hat Spearman "
          f"{_fmt(soft['spearman_khat_true'])}); topk@k{r['matched_k']} FVU {tm['fvu']:.4f}{ip_s}; "
          f"checks: {', '.join(k + '=' + ('yes' if v else 'NO') for k, v in r['acceptance'].items())}")
  return 0


# --------------------------------------------------------------------------------------------------
# bench pareto


def _split_views(data: str, out: str, holdout: float, log: _Log) -> tuple[str, str]:
  """Copies the first (1 - holdout) and the last holdout fraction of the rows into two datasets
  under OUT/split (reused when they already hold this split of this data)."""
  ds = open_dataset(data)
  n_hold = int(round(holdout * ds.n_rows))
  if n_hold < 1 or n_hold >= ds.n_rows:
    raise DataError(f"{data}: --holdout {holdout} leaves {n_hold} of {ds.n_rows} rows held out; "
                    "need at least one row on each side")
  n_train = ds.n_rows - n_hold
  key = {"source": os.path.abspath(data), "n_rows": ds.n_rows, "d_model": ds.d_model, "holdout_rows": n_hold}
  paths = {"train": os.path.join(out, "split", "train"), "heldout": os.path.join(out, "split", "heldout")}
  ranges = {"train": (0, n_train), "heldout": (n_train, ds.n_rows)}
  for name, path in paths.items():
    mpath = os.path.join(path, "manifest.json")
    if os.path.isfile(mpath):
      with open(mpath) as f:
        m = json.load(f)
      if m.get("bench_split") != {**key, "part": name} or not m.get("complete", False):
        raise DataError(f"{path} holds another split (or an unfinished one); use a new --out")
      log(f"reusing {path}")
      continue
    if os.path.isdir(path) and os.listdir(path):
      raise DataError(f"{path} exists and is not a finished split; remove it or use a new --out")
    lo, hi = ranges[name]
    w = ShardWriter(path, d_model=ds.d_model, dtype=ds.dtype, source={"bench_split_of": os.path.abspath(data)},
                    extra={"bench_split": {**key, "part": name}})
    for start, x_ND in _iter_range(ds, lo, hi):
      w.add(x_ND)
    w.close()
    log(f"wrote rows [{lo}, {hi}) of {data} to {path}")
  return paths["train"], paths["heldout"]


def _iter_range(ds, lo: int, hi: int, chunk: int = 65536):
  from softsae_jax.data import read_rows

  for s in range(lo, hi, chunk):
    e = min(s + chunk, hi)
    yield s, read_rows(ds, np.arange(s, e))


def pareto_markdown(res: dict[str, Any]) -> str:
  meta = res["meta"]
  lines = [f"# softsae bench pareto — {meta['data']}", "", f"Command: `{meta['command']}`  ",
           f"Date: {meta['date']}; host: {meta['host']}; total {meta['total_seconds']:.0f} s.  ",
           _code_line(meta) + "  ", f"Evaluated on: {meta['evaluated_on']}.", ""]
  if meta["overrides"]:
    lines += [f"Config overrides for every model: `{' '.join(meta['overrides'])}`", ""]
  ks = meta["ks"]
  lines += ["FVU (mean L0) per arch and k:", "", "| arch | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks)]
  for arch in meta["archs"]:
    cells = []
    for k in ks:
      m = res["runs"].get(f"{arch}@k{k}")
      cells.append(f"{m['fvu']:.4f} ({m['l0_mean']:.1f})" if m else "–")
    lines.append(f"| {arch} | " + " | ".join(cells) + " |")
  lines += ["", "| run | k | L0 mean | L0 std | FVU | cosine | dead | train s |", "|---|---|---|---|---|---|---|---|"]
  for name, m in res["runs"].items():
    lines.append(f"| {name} | {m['k']} | {m['l0_mean']:.2f} | {m['l0_std']:.2f} | {m['fvu']:.4f} | "
                 f"{m['cosine']:.3f} | {100 * m['dead_fraction']:.1f}% | {res['timing_s'][name] or 'reused'} |")
  lines.append("")
  return "\n".join(lines)


def cmd_pareto(args) -> int:
  t0 = time.time()
  log = _Log(args.quiet)
  overrides = _check_overrides(args.set)
  ks, archs = args.ks, args.archs  # parsed and checked by their argparse types (cli_types)
  ds = open_dataset(args.data)
  cfgs = {}
  for arch in archs:
    for k in ks:
      cfg = make_config(arch, k, n_latents=args.n_latents, steps=args.steps, batch_size=args.batch_size,
                        seed=args.seed, overrides=overrides)
      cfg.resolve(ds.d_model)  # raises ConfigError before anything is written
      cfgs[f"{arch}@k{k}"] = cfg
  out = args.out or os.path.join("runs", "bench-pareto")
  os.makedirs(out, exist_ok=True)
  if args.holdout > 0:
    train_dir, eval_dir = _split_views(args.data, out, args.holdout, log)
    n_train = open_dataset(train_dir).n_rows
    if args.batch_size > n_train:
      raise ConfigError(f"--batch-size {args.batch_size} is larger than the training split ({n_train} rows)")
    evaluated_on = f"the last {args.holdout:.0%} of the rows ({open_dataset(eval_dir).n_rows}), held out"
  else:
    train_dir = eval_dir = args.data
    evaluated_on = f"the training rows themselves ({ds.n_rows}; --holdout 0)"
  eval_ds = open_dataset(eval_dir)

  from softsae_jax.evaluate import evaluate

  runs, timing = {}, {}
  for name, cfg in cfgs.items():
    workdir = os.path.join(out, "runs", name)
    model, secs = _train_and_load(train_dir, workdir, cfg, log, name)
    m = _eval_summary(evaluate(model, eval_ds, batch_size=EVAL_BATCH))
    m.update({"arch": cfg.sae.arch, "k": cfg.sae.k, "n_latents": model.cfg.sae.F})
    runs[name], timing[name] = m, _secs(secs)
    log(f"{name}: FVU {m['fvu']:.4f} at mean L0 {m['l0_mean']:.2f} ({_secs_text(secs)})")
  command = (f"softsae bench pareto --data {args.data} --out {out} --ks {','.join(map(str, ks))} "
             f"--archs {','.join(archs)} --steps {args.steps} --batch-size {args.batch_size} --seed {args.seed} "
             f"--holdout {args.holdout}" + (f" --n-latents {args.n_latents}" if args.n_latents else "")
             + "".join(f" --set {s}" for s in overrides))
  res = {"meta": {**_meta(args, command, t0), "data": os.path.abspath(args.data), "ks": ks, "archs": archs,
                  "steps": args.steps, "batch_size": args.batch_size, "holdout": args.holdout,
                  "evaluated_on": evaluated_on},
         "runs": runs, "timing_s": timing}

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for arch in archs:
    pts = sorted((runs[f"{arch}@k{k}"]["l0_mean"], runs[f"{arch}@k{k}"]["fvu"], k) for k in ks)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=arch, color=ARCH_COLORS.get(arch))
    for x, y, k in pts:
      ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
  ax.set_xscale("log")
  ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("mean inference L0")
  ax.set_ylabel("FVU")
  ax.set_title("FVU against mean L0")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  png = _save(fig, out, "pareto.png")
  res["meta"]["total_seconds"] = round(time.time() - t0, 1)
  files.write_json(os.path.join(out, "pareto.json"), res, allow_nan=False)
  md = pareto_markdown(res)
  with open(os.path.join(out, "pareto.md"), "w") as f:
    f.write(md)
  print(md)
  log(f"done in {time.time() - t0:.0f}s; wrote {out}/pareto.json, pareto.md, {png}")
  return 0


# --------------------------------------------------------------------------------------------------
# CLI wiring (called from softsae_jax.cli).


def add_arguments(p: argparse.ArgumentParser) -> None:
  sub = p.add_subparsers(dest="bench_command", required=True)

  s = sub.add_parser(
      "synthetic", help="SoftSAE vs fixed-k SAEs at matched L0 on data with a known k",
      description="Generates a preset's train and held-out sets with ground truth, trains SoftSAE at the "
      "target k, then TopK, BatchTopK and Matryoshka at SoftSAE's mean inference L0 (and TopK at the target k "
      "and on both sides of that L0), evaluates all on the held-out set and writes results.json, results.md "
      "and PNG plots to --out. Deterministic given --seed. See docs/results.md.")
  s.add_argument("--preset", choices=sorted(BENCH_PRESETS), default="small",
                 help="data size, F, target k, steps (small: a few minutes on 2 CPU cores; tiny: tests)")
  s.add_argument("--kind", choices=("mixture", "manifolds", "both"), default="mixture",
                 help="sparse mixture (true k, true dictionary), union of manifolds (local dimension), or both")
  s.add_argument("--seed", type=nonneg_int, default=0, help="data, init and batch-order seed")
  s.add_argument("--out", help="output directory (default runs/bench-synthetic-<preset>-seed<seed>)")
  s.add_argument("--steps", type=positive_int, help="override the preset's training steps (every model)")
  s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                 help="override a config field for every model, e.g. --set sae.soft_grad=faithful")
  s.add_argument("--quiet", action="store_true", help="no progress lines")
  s.set_defaults(bench_func=cmd_synthetic)

  q = sub.add_parser(
      "pareto", help="FVU against mean L0 over a k sweep for several archs",
      description="Trains every arch at every k on the first rows of --data and evaluates on the last "
      "--holdout fraction (both written once as copies under --out/split); writes pareto.json, pareto.md and "
      "pareto.png to --out.")
  q.add_argument("--data", required=True, help="a softsae-activations/1 directory")
  q.add_argument("--out", help="output directory (default runs/bench-pareto)")
  q.add_argument("--ks", type=int_list, default="8,16,32", help="comma-separated k values (default 8,16,32)")
  q.add_argument("--archs", type=choice_list(ARCHS), default="softsae,topk,batchtopk,matryoshka",
                 help=f"comma-separated archs, some of {','.join(ARCHS)} (default softsae,topk,batchtopk,matryoshka)")
  q.add_argument("--steps", type=positive_int, default=2000, help="training steps per run (default 2000)")
  q.add_argument("--batch-size", type=positive_int, default=512, help="rows per step (default 512)")
  q.add_argument("--n-latents", type=positive_int, help="dictionary size F (default: the config's expansion * D)")
  q.add_argument("--holdout", type=proper_fraction, default=0.1,
                 help="fraction of rows (the last ones) held out for evaluation; 0 evaluates on the training rows")
  q.add_argument("--seed", type=nonneg_int, default=0, help="init and batch-order seed")
  q.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                 help="override a config field for every run")
  q.add_argument("--quiet", action="store_true", help="no progress lines")
  q.set_defaults(bench_func=cmd_pareto)


def run(args) -> int:
  return args.bench_func(args)
