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
  ``dict_recovery`` (mixtures only): :mod:`softsae_jax.bench.metrics`.

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

import math
import os
import time
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from softsae_jax import synthetic
from softsae_jax.bench import output
from softsae_jax.bench.metrics import KL_SMOOTHING, RECOVERY_THRESHOLD, class_means, increasing
from softsae_jax.bench.runs import (COEFF_SWEEPS, Log, check_overrides, coeff_text, dataset_view, make_config,
                                    measure, rounded_secs, secs_text, train_and_load)
from softsae_jax.config import ConfigError
from softsae_jax.shards import DataError, ShardWriter, open_dataset

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


def cmd_synthetic(args) -> int:
  """``softsae bench synthetic``: every kind of ``--kind``, then results.json, results.md and the plots."""
  t0 = time.time()
  log = Log(args.quiet)
  overrides = check_overrides(args.set)
  kinds = list(KINDS) if args.kind == "both" else [args.kind]
  out = args.out or os.path.join("runs", f"bench-synthetic-{args.preset}-seed{args.seed}")
  p = BENCH_PRESETS[args.preset]
  for kind in kinds:  # every config is checked before anything is written
    d = p["data"][kind]["d"]
    for arch in SYNTHETIC_ARCHS:
      make_config(arch, p["k"], n_latents=p["n_latents"], steps=args.steps or p["steps"], batch_size=p["batch_size"],
                  seed=args.seed, overrides=overrides).resolve(d)
  os.makedirs(out, exist_ok=True)
  results: dict[str, Any] = {}
  for kind in kinds:
    results[kind] = run_synthetic_kind(out, args.preset, kind, args.seed, overrides, log, steps=args.steps)
  command = "softsae bench synthetic " + " ".join(
      [f"--preset {args.preset}", f"--kind {args.kind}", f"--seed {args.seed}", f"--out {out}"]
      + ([f"--steps {args.steps}"] if args.steps else []) + [f"--set {s}" for s in overrides])
  results["meta"] = {**output.run_meta(args, command, t0), "preset": args.preset, "kinds": kinds,
                     "preset_spec": {k: v for k, v in p.items() if k != "data"},
                     "steps": args.steps or p["steps"], "kl_smoothing": KL_SMOOTHING,
                     "recovery_threshold": RECOVERY_THRESHOLD}
  written = output.write_synthetic(out, results, t0)
  log(f"done in {time.time() - t0:.0f}s; wrote {', '.join(written)}")
  for kind in kinds:
    r = results[kind]
    soft = r["models"][f"softsae@k{r['target_k']}"]
    tm = r["models"][r["topk_matched"]]
    ip = r["topk_interpolated"]
    ip_s = f", interpolated at L0 {ip['l0']:.2f}: {ip['fvu']:.4f}" if ip else ""
    print(f"{kind}: softsae FVU {soft['fvu']:.4f} at L0 {soft['l0_mean']:.2f} (k-hat Spearman "
          f"{output.fmt(soft['spearman_khat_true'])}); topk@k{r['matched_k']} FVU {tm['fvu']:.4f}{ip_s}; "
          f"checks: {', '.join(k + '=' + ('yes' if v else 'NO') for k, v in r['acceptance'].items())}")
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
