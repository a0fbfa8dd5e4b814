"""The two protocols: what is trained, at which k or coefficient, on which rows, and against what.

``softsae bench synthetic`` (:func:`cmd_synthetic`), for each kind of synthetic data
(:mod:`softsae_jax.synthetic`: sparse mixtures with a known dictionary and per-row k; unions of
manifolds with a known local dimension):

1. generate the preset's train and held-out sets (``write_dataset`` into ``OUT/data/<kind>/{train,test}``);
2. train ``softsae`` at the preset's target k and measure its mean inference L0 on the held-out set;
3. train ``topk``, ``batchtopk`` and ``matryoshka`` at the matched ``k_m = round(SoftSAE mean L0)``,
   ``topk`` at the target k as a reference, and ``topk`` at the integers on both sides of SoftSAE's
   mean L0 (``floor``, ``ceil``; one of them is ``k_m``) so that TopK's FVU can be interpolated
   linearly to SoftSAE's exact L0 (a model is trained once when two roles share a k);
4. evaluate every model on the held-out set (:func:`softsae_jax.bench.runs.measure`) and write
   ``OUT/results.json``, ``OUT/results.md`` and PNG plots (``OUT/<kind>_*.png``).

Metrics, all on the held-out set with the library's inference rules (:mod:`softsae_jax.evaluate`):

* ``fvu``, ``l0_mean``, ``dead_fraction`` (latents never active on the held-out set), ... as
  :func:`softsae_jax.evaluate.evaluate` returns them;
* ``spearman_khat_true`` / ``pearson_khat_true`` (SoftSAE's real k-hat against the true k, or the
  local dimension for manifolds) and ``spearman_l0_true`` / ``pearson_l0_true`` (each row's number
  of active latents against the true k; for every arch — BatchTopK/Matryoshka's threshold inference
  also gives a per-row L0). A correlation with a constant (TopK's L0) is undefined: ``null``;
* ``khat_by_class`` / ``l0_by_class``: the mean k-hat / L0 over the rows of each true k;
* ``kl_l0_true`` (KL(true || L0), smoothed), ``w1_l0_true`` (earth mover's distance) and
  ``dict_recovery`` (mixtures only): :mod:`softsae_jax.bench.metrics`; for SoftSAE also
  ``kl_khat_true`` and ``w1_khat_true``, the same on the real k-hat rather than its floor (KL bins
  k-hat at the nearest integer; W1 is exact on the real values);
* the control, per kind (:func:`norm_control`): ``spearman_norm_true``, the Spearman of the row
  norm alone with the true k, next to k-hat's. On the ``small`` mixture the norm grows like sqrt(k)
  and scores 0.885, so k-hat tracking is only evidence on data where it is ~0: the ``-unitnorm``
  presets (``small-unitnorm`` is the default ``--preset``).

With ``--seeds 0,1,2`` the whole protocol runs once per seed (data, initialisation and batch order),
each into ``OUT/seed<S>/`` exactly as a ``--seed S`` run, and ``OUT/summary.json`` /
``OUT/summary.md`` give the mean and sample sd over seeds of the headline numbers
(:func:`aggregate_seeds`) and how many seeds pass each acceptance check.

``softsae bench pareto`` (:func:`cmd_pareto`): FVU against mean L0 for each arch over a sweep on any
``softsae-activations/1`` set. The k-sparsified archs (softsae, topk, batchtopk, matryoshka) are
trained at each ``--ks`` value (runs ``topk@k8``); the archs whose L0 is set by a loss coefficient
are trained at each value of that coefficient instead (:data:`~softsae_jax.bench.runs.COEFF_SWEEPS`:
jumprelu at each ``--l0-coeffs`` value of ``sae.l0_coeff``, runs ``jumprelu@l0c0.001``; relu at each
``--l1-coeffs`` value of ``sae.l1_coeff``, runs ``relu@l1c0.3``), since training them "at each k"
would repeat one run. The last ``--holdout`` fraction of the rows (default 10%, in data order) is
held out: the bench writes two views, ``OUT/split/train`` (the first rows) and ``OUT/split/heldout``
(the last rows), as copies, once, and reuses them on a rerun. ``--holdout 0`` trains and evaluates
on the same rows (no copy). In data order, activations of text are grouped by document, so the
held-out rows come from other documents than most training rows.

Both are deterministic functions of their arguments and ``--seed`` on one machine (data,
initialisation and batch order are seeded; timings are reported apart from the metrics), and a rerun
with the same ``--out`` reuses the finished runs (the trainer resumes or skips them).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from softsae_jax import synthetic
from softsae_jax.bench import output
from softsae_jax.bench.metrics import (KL_SMOOTHING, RECOVERY_THRESHOLD, class_means, finite_or_none, increasing,
                                       mean_sd)
from softsae_jax.bench.runs import (COEFF_SWEEPS, Log, check_overrides, coeff_text, dataset_view, make_config,
                                    measure, rounded_secs, secs_text, train_and_load)
from softsae_jax.config import ConfigError
from softsae_jax.shards import DataError, ShardWriter, open_dataset
from softsae_jax.stats import spearman

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
the target k, and the optimisation length. The SAE has 1.5x as many latents as there are true atoms.
Each has a ``<name>-unitnorm`` twin (the same with ``normalize_rows=True``: every row of unit norm, so
the norm says nothing about the true k); ``small-unitnorm`` is the default of ``bench synthetic``."""
BENCH_PRESETS |= {f"{name}-unitnorm": {**p, "data": {kind: {**kw, "normalize_rows": True}
                                                     for kind, kw in p["data"].items()}}
                  for name, p in BENCH_PRESETS.items()}

DEFAULT_PRESET = "small-unitnorm"
"""The preset of ``bench synthetic`` without ``--preset``: the evidence for k-hat tracking the true k
must come from data where the row norm does not give it away (docs/results.md)."""

KHAT_SPEARMAN_MIN = 0.8
"""The acceptance check's bound on SoftSAE's held-out Spearman(k-hat, true k)."""

KINDS = ("mixture", "manifolds")
SYNTHETIC_ARCHS = ("softsae", "topk", "batchtopk", "matryoshka")
"""The archs ``bench synthetic`` trains: SoftSAE and the fixed-k SAEs it is compared with at matched L0."""


# --------------------------------------------------------------------------------------------------
# bench synthetic


def prepare_synthetic(out: str, preset: str, kind: str, seed: int, log: Log) -> tuple[str, str, Any]:
  """Writes (or reuses) OUT/data/<kind>/{train,test}; returns their paths and the test set."""
  spec = BENCH_PRESETS[preset]["data"][kind]
  make = synthetic.make_mixture_pair if kind == "mixture" else synthetic.make_manifolds_pair
  train, test = make(**spec, seed=seed)
  paths = []
  for split, data in (("train", train), ("test", test)):
    path = os.path.join(out, "data", kind, split)
    if dataset_view(path, "synthetic", data.meta, lambda p, data=data: synthetic.write_dataset(p, data),
                    what="data set", made_by=f" than --preset {preset} --kind {kind} --seed {seed} makes",
                    label=f"{kind}: ", log=log):
      log(f"{kind}: wrote {len(data.x_ND)} {split} rows to {path}")
    paths.append(path)
  return paths[0], paths[1], test


def norm_control(x_ND: np.ndarray, true_k: np.ndarray) -> dict[str, Any]:
  """The control for k-hat tracking: how well a row's L2 norm alone predicts its true k.

  Returns ``spearman_norm_true`` (held-out Spearman of ``||x||`` with the true k; None if undefined)
  and ``norm_by_class`` (mean norm per true k). A k-hat that only reads the norm scores about the
  same Spearman; on ``-unitnorm`` data this is ~0.

  Examples:
    >>> norm_control(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]), np.array([1, 2, 4]))["spearman_norm_true"]
    1.0
  """
  norm_N = np.linalg.norm(np.asarray(x_ND, np.float64), axis=1)
  return {"spearman_norm_true": finite_or_none(spearman(norm_N, true_k)),
          "norm_by_class": class_means(norm_N, true_k)}


def run_synthetic_kind(out: str, preset: str, kind: str, seed: int, overrides: Sequence[str], log: Log,
                       steps: int | None = None) -> dict[str, Any]:
  """Runs the whole protocol on one kind of data; returns its results block (and keeps per-row
  outputs for the plots under the key ``_rows``)."""
  p = BENCH_PRESETS[preset]
  steps = steps or p["steps"]
  train_dir, test_dir, test = prepare_synthetic(out, preset, kind, seed, log)
  test_ds = open_dataset(test_dir)
  true_k = np.asarray(synthetic.load_side(test_dir, "true_k"), np.int64)
  atoms_AD = np.load(os.path.join(test_dir, test_ds.manifest["atoms"])) if kind == "mixture" else None
  cfg_kw = dict(n_latents=p["n_latents"], steps=steps, batch_size=p["batch_size"], seed=seed, overrides=overrides)
  target = p["k"]

  models: dict[str, dict[str, Any]] = {}
  rows: dict[str, dict] = {}
  timing: dict[str, float | None] = {}
  trained: dict[tuple[str, int], str] = {}

  def run_model(arch: str, k: int, role: str) -> dict[str, Any]:
    name = f"{arch}@k{k}"
    if (arch, k) in trained:  # the same config twice (e.g. matched k == target k): one model, two roles
      roles = models[trained[(arch, k)]]["roles"]
      if role not in roles:
        roles.append(role)
      return models[trained[(arch, k)]]
    cfg = make_config(arch, k, **cfg_kw)
    model, secs = train_and_load(train_dir, os.path.join(out, "runs", kind, name), cfg, log, f"{kind} {name}")
    res, r = measure(model, test_ds, true_k, atoms_AD)
    res.update({"name": name, "arch": arch, "k": k, "roles": [role], "steps": steps,
                "config": model.cfg.to_dict()})
    models[name], rows[name], timing[name] = res, r, rounded_secs(secs)
    trained[(arch, k)] = name
    extra = f", k-hat Spearman {output.fmt(res['spearman_khat_true'])}" if arch == "softsae" else ""
    log(f"{kind} {name}: held-out FVU {res['fvu']:.4f}, mean L0 {res['l0_mean']:.2f}, "
        f"dead {100 * res['dead_fraction']:.1f}%{extra} ({secs_text(secs)})")
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
  for arch in SYNTHETIC_ARCHS[2:]:
    run_model(arch, matched, "matched")

  true_means = class_means(true_k, true_k)
  control = norm_control(test.x_ND, true_k)
  log(f"{kind}: k-hat Spearman {output.fmt(soft['spearman_khat_true'])} vs the row norm alone "
      f"{output.fmt(control['spearman_norm_true'])} (control)")
  sp = soft["spearman_khat_true"]
  checks = {
      f"spearman_khat_true_ge_{KHAT_SPEARMAN_MIN}": bool((sp or -1.0) >= KHAT_SPEARMAN_MIN),
      "spearman_khat_true_above_norm_control": bool((sp or -1.0) > (control["spearman_norm_true"] or -1.0)),
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
               "true_k_distribution": {str(int(c)): float(np.mean(true_k == c)) for c in np.unique(true_k)},
               **control},
      "acceptance": checks, "models": models, "timing_s": timing,
      "topk_reference": topk_ref["name"], "topk_matched": topk_m["name"], "topk_interpolated": interp,
      "_rows": rows, "_true_k": true_k, "_true_means": true_means,
  }


def synthetic_command(args, seeds: str, out: str, overrides: Sequence[str]) -> str:
  """The ``softsae bench synthetic`` command line that reproduces a run (``seeds``: ``--seed 0`` or
  ``--seeds 0,1,2``)."""
  return "softsae bench synthetic " + " ".join(
      [f"--preset {args.preset}", f"--kind {args.kind}", seeds, f"--out {out}"]
      + ([f"--steps {args.steps}"] if args.steps else []) + [f"--set {s}" for s in overrides])


def run_synthetic_seed(args, seed: int, out: str, kinds: Sequence[str], overrides: Sequence[str],
                       log: Log) -> dict[str, Any]:
  """One seed of ``bench synthetic`` into ``out``: every kind, then results.json, results.md and the
  plots; prints one line per kind and returns the results (with the per-row ``_`` keys)."""
  t0 = time.time()
  p = BENCH_PRESETS[args.preset]
  os.makedirs(out, exist_ok=True)
  results: dict[str, Any] = {}
  for kind in kinds:
    results[kind] = run_synthetic_kind(out, args.preset, kind, seed, overrides, log, steps=args.steps)
  seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
  results["meta"] = {**output.run_meta(seed_args, synthetic_command(args, f"--seed {seed}", out, overrides), t0),
                     "preset": args.preset, "kinds": list(kinds),
                     "preset_spec": {k: v for k, v in p.items() if k != "data"},
                     "steps": args.steps or p["steps"], "kl_smoothing": KL_SMOOTHING,
                     "recovery_threshold": RECOVERY_THRESHOLD}
  written = output.write_synthetic(out, results, t0)
  log(f"seed {seed} done in {time.time() - t0:.0f}s; wrote {', '.join(written)}")
  for kind in kinds:
    r = results[kind]
    soft = r["models"][f"softsae@k{r['target_k']}"]
    tm = r["models"][r["topk_matched"]]
    ip = r["topk_interpolated"]
    ip_s = f", interpolated at L0 {ip['l0']:.2f}: {ip['fvu']:.4f}" if ip else ""
    print(f"{kind} seed {seed}: softsae FVU {soft['fvu']:.4f} at L0 {soft['l0_mean']:.2f} (k-hat Spearman "
          f"{output.fmt(soft['spearman_khat_true'])}, row norm alone {output.fmt(r['data']['spearman_norm_true'])}); "
          f"topk@k{r['matched_k']} FVU {tm['fvu']:.4f}{ip_s}; "
          f"checks: {', '.join(k + '=' + ('yes' if v else 'NO') for k, v in r['acceptance'].items())}")
  return results


def seed_metrics(r: Mapping[str, Any]) -> dict[str, float | None]:
  """The headline numbers of one seed's results block ``r`` (one kind), flat, for the seed summary:
  SoftSAE's FVU, L0, k-hat metrics (Spearman, KL and W1 against the true k, mean per true class),
  its L0's KL/W1, the row-norm control, TopK's FVU interpolated to SoftSAE's L0 and SoftSAE's
  relative gap to it, and the matched-k baselines' FVU and L0. A metric missing from ``r`` is None."""
  soft = r["models"][f"softsae@k{r['target_k']}"]
  ip = r.get("topk_interpolated")
  m: dict[str, float | None] = {
      "softsae_fvu": soft["fvu"], "softsae_l0_mean": soft["l0_mean"], "softsae_k_hat_mean": soft.get("k_hat_mean"),
      "spearman_khat_true": soft.get("spearman_khat_true"),
      "spearman_norm_true": r["data"].get("spearman_norm_true"),
      "kl_khat_true": soft.get("kl_khat_true"), "w1_khat_true": soft.get("w1_khat_true"),
      "kl_l0_true": soft.get("kl_l0_true"), "w1_l0_true": soft.get("w1_l0_true"),
      "topk_interpolated_fvu": ip["fvu"] if ip else None,
      "softsae_vs_topk_interpolated": soft["fvu"] / ip["fvu"] - 1.0 if ip else None,
      "topk_matched_fvu": r["models"][r["topk_matched"]]["fvu"],
      "softsae_dict_recovery": (soft.get("dict_recovery") or {}).get("mean_max_cos"),
      "softsae_dead_fraction": soft.get("dead_fraction"),
  }
  for name in ("khat_by_class", "l0_by_class"):
    for c, v in (soft.get(name) or {}).items():
      m[f"{name}.{c}"] = v
  for arch in SYNTHETIC_ARCHS[2:]:
    b = r["models"].get(f"{arch}@k{r['matched_k']}", {})
    m[f"{arch}_fvu"], m[f"{arch}_l0_mean"] = b.get("fvu"), b.get("l0_mean")
    m[f"{arch}_kl_l0_true"], m[f"{arch}_w1_l0_true"] = b.get("kl_l0_true"), b.get("w1_l0_true")
  return m


def aggregate_seeds(per_seed: Mapping[int, Mapping[str, Any]], kinds: Sequence[str]) -> dict[str, Any]:
  """Mean and sample sd over seeds of every :func:`seed_metrics` number, per kind.

  Args:
    per_seed: ``{seed: results}``, each the results of one seed (a block per kind).
    kinds: the kinds to summarise.

  Returns:
    ``{kind: {"seeds": [...], "per_seed": {seed: metrics}, "mean_sd": {metric: mean_sd},
    "acceptance": {check: seeds passing}}}``; ``mean_sd`` is
    :func:`~softsae_jax.bench.metrics.mean_sd` (None values left out).
  """
  out: dict[str, Any] = {}
  seeds = list(per_seed)
  for kind in kinds:
    rows = {s: seed_metrics(per_seed[s][kind]) for s in seeds}
    keys = list(dict.fromkeys(k for m in rows.values() for k in m))
    checks = list(dict.fromkeys(c for s in seeds for c in per_seed[s][kind]["acceptance"]))
    out[kind] = {
        "seeds": seeds, "per_seed": {str(s): m for s, m in rows.items()},
        "mean_sd": {k: mean_sd([rows[s].get(k) for s in seeds]) for k in keys},
        "acceptance": {c: int(sum(bool(per_seed[s][kind]["acceptance"].get(c)) for s in seeds)) for c in checks},
    }
  return out


def cmd_synthetic(args) -> int:
  """``softsae bench synthetic``: every kind of ``--kind`` for ``--seed`` (results.json, results.md and
  the plots in ``--out``) or for every ``--seeds`` seed (the same in ``--out/seed<S>``, then
  summary.json and summary.md with the mean and sd over seeds in ``--out``)."""
  t0 = time.time()
  log = Log(args.quiet)
  overrides = check_overrides(args.set)
  kinds = list(KINDS) if args.kind == "both" else [args.kind]
  multi = getattr(args, "seeds", None) is not None
  seeds = list(dict.fromkeys(args.seeds)) if multi else [args.seed]
  tag = f"seeds{'-'.join(map(str, seeds))}" if multi else f"seed{args.seed}"
  out = args.out or os.path.join("runs", f"bench-synthetic-{args.preset}-{tag}")
  p = BENCH_PRESETS[args.preset]
  for kind in kinds:  # every config is checked before anything is written
    d = p["data"][kind]["d"]
    for arch in SYNTHETIC_ARCHS:
      make_config(arch, p["k"], n_latents=p["n_latents"], steps=args.steps or p["steps"], batch_size=p["batch_size"],
                  seed=seeds[0], overrides=overrides).resolve(d)
  per_seed = {}
  for seed in seeds:
    per_seed[seed] = run_synthetic_seed(args, seed, os.path.join(out, f"seed{seed}") if multi else out, kinds,
                                        overrides, log)
  if not multi:
    return 0
  summary: dict[str, Any] = aggregate_seeds(per_seed, kinds)
  command = synthetic_command(args, f"--seeds {','.join(map(str, seeds))}", out, overrides)
  summary["meta"] = {**output.run_meta(args, command, t0), "seed": None, "seeds": seeds, "preset": args.preset,
                     "kinds": kinds, "steps": args.steps or p["steps"],
                     "per_seed_dirs": {str(s): f"seed{s}" for s in seeds}}
  written = output.write_seed_summary(out, summary, t0)
  log(f"done in {time.time() - t0:.0f}s; wrote {', '.join(written)}")
  for kind in kinds:
    ms = summary[kind]["mean_sd"]
    print(f"{kind}, {len(seeds)} seeds: softsae FVU {output.pm(ms['softsae_fvu'], 4)} at L0 "
          f"{output.pm(ms['softsae_l0_mean'], 2)}; topk interpolated {output.pm(ms['topk_interpolated_fvu'], 4)}; "
          f"k-hat Spearman {output.pm(ms['spearman_khat_true'])} (row norm alone {output.pm(ms['spearman_norm_true'])})")
  return 0


# --------------------------------------------------------------------------------------------------
# bench pareto


class SweepPoint(NamedTuple):
  """One run of ``bench pareto``: an arch at one k, or at one value of its L0-setting coefficient."""

  name: str  # "topk@k8", "jumprelu@l0c0.001"
  arch: str
  k: int | None  # None for a coefficient-swept arch (its sae.k stays the library default)
  field: str | None  # the SaeConfig coefficient swept ("l0_coeff", "l1_coeff"), or None
  coeff: float | None

  @property
  def fields(self) -> list[str]:
    """The config items that set this point's coefficient (none for a k point)."""
    return [] if self.field is None else [f"sae.{self.field}={self.coeff!r}"]


def pareto_points(archs: Sequence[str], ks: Sequence[int], coeffs: Mapping[str, Sequence[float]]) -> list[SweepPoint]:
  """The runs of a pareto sweep, arch by arch in the order given (repeated values once).

  Args:
    archs: the archs (``--archs``).
    ks: the k values of the k-sparsified archs (``--ks``).
    coeffs: for each arch of :data:`~softsae_jax.bench.runs.COEFF_SWEEPS`, its coefficient values.

  Examples:
    >>> [p.name for p in pareto_points(["topk", "jumprelu"], [4, 8], {"jumprelu": [1e-3]})]
    ['topk@k4', 'topk@k8', 'jumprelu@l0c0.001']
  """
  points = []
  for arch in archs:
    sweep = COEFF_SWEEPS.get(arch)
    if sweep is None:
      points += [SweepPoint(f"{arch}@k{k}", arch, k, None, None) for k in dict.fromkeys(ks)]
    else:
      points += [SweepPoint(f"{arch}@{sweep.tag}{coeff_text(c)}", arch, None, sweep.field, c)
                 for c in dict.fromkeys(coeffs[arch])]
  return points


def split_views(data: str, out: str, holdout: float, log: Log) -> tuple[str, str]:
  """Copies the first (1 - holdout) and the last holdout fraction of the rows into two datasets
  under OUT/split (reused when they already hold this split of this data)."""
  from softsae_jax.data import read_rows

  ds = open_dataset(data)
  n_hold = int(round(holdout * ds.n_rows))
  if n_hold < 1 or n_hold >= ds.n_rows:
    raise DataError(f"{data}: --holdout {holdout} leaves {n_hold} of {ds.n_rows} rows held out; "
                    "need at least one row on each side")
  n_train = ds.n_rows - n_hold
  key = {"source": os.path.abspath(data), "n_rows": ds.n_rows, "d_model": ds.d_model, "holdout_rows": n_hold}
  paths = {"train": os.path.join(out, "split", "train"), "heldout": os.path.join(out, "split", "heldout")}
  ranges = {"train": (0, n_train), "heldout": (n_train, ds.n_rows)}

  def copy(name: str, path: str, chunk: int = 65536) -> None:
    lo, hi = ranges[name]
    w = ShardWriter(path, d_model=ds.d_model, dtype=ds.dtype, source={"bench_split_of": os.path.abspath(data)},
                    extra={"bench_split": {**key, "part": name}})
    for s in range(lo, hi, chunk):
      w.add(read_rows(ds, np.arange(s, min(s + chunk, hi))))
    w.close()
    log(f"wrote rows [{lo}, {hi}) of {data} to {path}")

  for name, path in paths.items():
    dataset_view(path, "bench_split", {**key, "part": name}, lambda p, name=name: copy(name, p), what="split",
                 log=log)
  return paths["train"], paths["heldout"]


def cmd_pareto(args) -> int:
  """``softsae bench pareto``: every sweep point of every arch, then pareto.json, pareto.md and pareto.png."""
  t0 = time.time()
  log = Log(args.quiet)
  archs = args.archs  # lists parsed and checked by their argparse types (cli_types)
  coeffs = {arch: getattr(args, sweep.dest) for arch, sweep in COEFF_SWEEPS.items()}
  points = pareto_points(archs, args.ks, coeffs)
  overrides = check_overrides(args.set, {f"sae.{COEFF_SWEEPS[a].field}": COEFF_SWEEPS[a].flag
                                         for a in archs if a in COEFF_SWEEPS})
  ds = open_dataset(args.data)
  cfgs = {}
  for p in points:
    cfg = make_config(p.arch, p.k, n_latents=args.n_latents, steps=args.steps, batch_size=args.batch_size,
                      seed=args.seed, overrides=overrides, fields=p.fields)
    cfg.resolve(ds.d_model)  # raises ConfigError before anything is written
    cfgs[p.name] = (p, cfg)
  out = args.out or os.path.join("runs", "bench-pareto")
  os.makedirs(out, exist_ok=True)
  if args.holdout > 0:
    train_dir, eval_dir = split_views(args.data, out, args.holdout, log)
    n_train = open_dataset(train_dir).n_rows
    if args.batch_size > n_train:
      raise ConfigError(f"--batch-size {args.batch_size} is larger than the training split ({n_train} rows)")
    evaluated_on = f"the last {args.holdout:.0%} of the rows ({open_dataset(eval_dir).n_rows}), held out"
  else:
    train_dir = eval_dir = args.data
    evaluated_on = f"the training rows themselves ({ds.n_rows}; --holdout 0)"
  eval_ds = open_dataset(eval_dir)

  runs, timing = {}, {}
  for name, (p, cfg) in cfgs.items():
    model, secs = train_and_load(train_dir, os.path.join(out, "runs", name), cfg, log, name)
    m, _ = measure(model, eval_ds)
    m.update({"arch": p.arch, "k": p.k, "n_latents": model.cfg.sae.F})
    if p.field is not None:
      m[p.field] = p.coeff
    runs[name], timing[name] = m, rounded_secs(secs)
    log(f"{name}: FVU {m['fvu']:.4f} at mean L0 {m['l0_mean']:.2f} ({secs_text(secs)})")
  swept = "".join(f" {sweep.flag} {','.join(coeff_text(c) for c in coeffs[arch])}"
                  for arch, sweep in COEFF_SWEEPS.items() if arch in archs)
  command = (f"softsae bench pareto --data {args.data} --out {out} --ks {','.join(map(str, args.ks))} "
             f"--archs {','.join(archs)}{swept} --steps {args.steps} --batch-size {args.batch_size} "
             f"--seed {args.seed} --holdout {args.holdout}"
             + (f" --n-latents {args.n_latents}" if args.n_latents else "") + "".join(f" --set {s}" for s in overrides))
  res = {"meta": {**output.run_meta(args, command, t0), "data": os.path.abspath(args.data), "ks": args.ks,
                  "archs": archs, **{sweep.dest: coeffs[arch] for arch, sweep in COEFF_SWEEPS.items()},
                  "steps": args.steps, "batch_size": args.batch_size, "holdout": args.holdout,
                  "evaluated_on": evaluated_on},
         "runs": runs, "timing_s": timing}
  written, md = output.write_pareto(out, res, t0)
  print(md)
  log(f"done in {time.time() - t0:.0f}s; wrote {', '.join(written)}")
  return 0
