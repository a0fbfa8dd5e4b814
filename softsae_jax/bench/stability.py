"""``softsae bench stability``: do SAEs trained with different seeds learn the same dictionary?

For every arch, one model per seed (``--seeds 0,1,2``) on the same activations at the same k (or,
for jumprelu/relu, the same coefficient), then every pair of seeds is compared by its decoder atoms
(rows of ``W_dec``, unit norm), with ``C[i, j]`` the cosine of atom ``i`` of one run and atom ``j``
of the other (:func:`atom_stability`):

* ``mean_max_cos``: the mean over atoms of the best cosine in the other run, averaged over both
  directions;
* ``frac_matched``: the fraction of atoms whose partner under the optimal one-to-one assignment
  (``scipy.optimize.linear_sum_assignment`` maximising the total cosine) has cosine above
  :data:`MATCH_THRESHOLD` (0.7); ``mean_matched_cos`` the mean cosine of the assigned pairs.

Both are invariant to permuting the latents of either run, and read 1.0 for two identical runs.
Every atom counts, dead latents included (their atoms stay near their random initialisation, so
they lower both numbers; each run's dead fraction is reported next to them). Each model's FVU and
mean L0 are measured on ``--eval-data`` (default: the training data itself). Outputs
``OUT/stability.json`` and ``OUT/stability.md``.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import numpy as np

from softsae_jax import files
from softsae_jax.cli_types import choice_list, nonneg_float_list, nonneg_int_list, positive_int
from softsae_jax.bench.metrics import atom_cosines
from softsae_jax.config import ARCHS, ConfigError

MATCH_THRESHOLD = 0.7


def atom_stability(a_FD: np.ndarray, b_GD: np.ndarray, threshold: float = MATCH_THRESHOLD) -> dict[str, float]:
  """How well two dictionaries' atoms (rows) match (see the module docstring).

  Examples:
    >>> w = np.random.default_rng(0).normal(size=(6, 4))
    >>> atom_stability(w, w[::-1])["frac_matched"], round(atom_stability(w, w)["mean_max_cos"], 6)
    (1.0, 1.0)
  """
  from scipy.optimize import linear_sum_assignment

  c = atom_cosines(a_FD, b_GD, "two [F, D] decoders")
  rows, cols = linear_sum_assignment(c, maximize=True)
  matched = c[rows, cols]
  return {"mean_max_cos": float((c.max(axis=1).mean() + c.max(axis=0).mean()) / 2),
          "frac_matched": float(np.sum(matched > threshold) / max(c.shape)),
          "mean_matched_cos": float(matched.mean())}


def add_parser(sub) -> None:
  """Adds ``softsae bench stability`` to the bench's subparsers."""
  s = sub.add_parser(
      "stability", help="decoder atoms matched across seeds, per arch",
      description="Trains each arch once per seed on --data and compares every pair of seeds by their decoder atoms: "
      "mean max cosine, and the fraction of atoms matched above 0.7 by an optimal one-to-one assignment "
      "(linear_sum_assignment). Writes stability.json and stability.md to --out.")
  s.add_argument("--data", required=True, help="a softsae-activations/1 directory (the training rows)")
  s.add_argument("--eval-data", help="rows to measure FVU and L0 on (default: --data)")
  s.add_argument("--seeds", type=nonneg_int_list, default="0,1,2",
                 help="comma-separated seeds, at least two distinct (default 0,1,2)")
  s.add_argument("--archs", type=choice_list(ARCHS), default="softsae,topk,batchtopk,jumprelu",
                 help="comma-separated archs (default softsae,topk,batchtopk,jumprelu)")
  s.add_argument("--k", type=positive_int, default=16, help="k of the k-sparsified archs (default 16)")
  s.add_argument("--arch-k", action="append", default=[], metavar="ARCH=K",
                 help="another k for one arch, to match the archs' L0 (repeatable), e.g. --arch-k batchtopk=17")
  s.add_argument("--l0-coeff", type=nonneg_float_list, default="0.001", help="jumprelu's sae.l0_coeff (default 0.001)")
  s.add_argument("--l1-coeff", type=nonneg_float_list, default="0.3", help="relu's sae.l1_coeff (default 0.3)")
  s.add_argument("--steps", type=positive_int, default=1000, help="training steps per model (default 1000)")
  s.add_argument("--batch-size", type=positive_int, default=512, help="rows per step (default 512)")
  s.add_argument("--n-latents", type=positive_int, help="dictionary size F (default: the config's expansion * D)")
  s.add_argument("--config", help="a config file every model starts from (e.g. configs/minilm_l3_x4.py)")
  s.add_argument("--out", help="output directory (default runs/bench-stability)")
  s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config field for every model")
  s.add_argument("--quiet", action="store_true", help="no progress lines")
  s.set_defaults(bench_func=cmd_stability)


def parse_arch_k(items: list[str]) -> dict[str, int]:
  """``["topk=14", "batchtopk=17"]`` -> ``{"topk": 14, "batchtopk": 17}``.

  Raises:
    ConfigError: not ``ARCH=K`` with a known arch and a positive integer.

  Examples:
    >>> parse_arch_k(["topk=14"])
    {'topk': 14}
  """
  out = {}
  for item in items:
    arch, _, k = item.partition("=")
    if arch.strip() not in ARCHS or not k.strip().isdigit() or int(k) < 1:
      raise ConfigError(f"--arch-k {item}: expected ARCH=K with ARCH one of {', '.join(ARCHS)} and K >= 1")
    out[arch.strip()] = int(k)
  return out


def cmd_stability(args) -> int:
  """``softsae bench stability``: every (arch, seed) model, every seed pair, then the JSON and Markdown."""
  from softsae_jax import config as config_lib
  from softsae_jax.bench import output
  from softsae_jax.bench.runs import COEFF_SWEEPS, Log, check_overrides, coeff_text, measure, train_and_load
  from softsae_jax.shards import open_dataset

  t0 = time.time()
  log = Log(args.quiet)
  if len(set(args.seeds)) != len(args.seeds) or len(args.seeds) < 2:
    raise ConfigError(f"--seeds {','.join(map(str, args.seeds))}: expected at least two distinct seeds")
  out = args.out or os.path.join("runs", "bench-stability")
  overrides = check_overrides(args.set, {"sae.l0_coeff": "--l0-coeff", "sae.l1_coeff": "--l1-coeff",
                                         "train.batch_size": "--batch-size"})
  ds = open_dataset(args.data)
  eval_ds = open_dataset(args.eval_data, expect_d_model=ds.d_model) if args.eval_data else ds
  base = config_lib.load_config_file(args.config) if args.config else config_lib.Config()
  coeffs = {"jumprelu": args.l0_coeff, "relu": args.l1_coeff}
  arch_k = parse_arch_k(args.arch_k)
  results: dict[str, Any] = {}
  for arch in args.archs:
    sweep = COEFF_SWEEPS.get(arch)
    k = arch_k.get(arch, args.k)
    # sae.k is set for every arch (jumprelu/relu read it only as a reference, but it must be < F)
    points = [(f"{arch}@k{k}", [f"sae.k={k}"])] if sweep is None else [
        (f"{arch}@{sweep.tag}{coeff_text(c)}", [f"sae.k={k}", f"sae.{sweep.field}={c}"]) for c in coeffs[arch]]
    for name, fields in points:
      decoders, per_seed = {}, {}
      for seed in args.seeds:
        items = [f"sae.arch={arch}", *fields, f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                 f"train.seed={seed}", f"train.checkpoint_every={args.steps}", "train.keep_checkpoints=1",
                 f"train.log_every={max(1, args.steps // 20)}"]
        if arch != "softsae":
          items.append("sae.k_max=none")
        if args.n_latents:
          items.append(f"sae.n_latents={args.n_latents}")
        cfg = config_lib.apply_overrides(base, items + overrides)
        cfg.resolve(ds.d_model)
        model, secs = train_and_load(args.data, os.path.join(out, "runs", f"{name}@seed{seed}"), cfg, log,
                                     f"{name}@seed{seed}")
        m, _ = measure(model, eval_ds)
        per_seed[str(seed)] = {"fvu": m["fvu"], "l0_mean": m["l0_mean"], "dead_fraction": m["dead_fraction"],
                               "train_seconds": None if secs is None else round(secs, 1)}
        decoders[seed] = np.asarray(model.params.w_dec)
      pairs = {f"{a}-{b}": atom_stability(decoders[a], decoders[b]) for a, b in itertools.combinations(args.seeds, 2)}
      results[name] = {"arch": arch, **{k: float(np.mean([p[k] for p in pairs.values()]))
                                         for k in ("mean_max_cos", "frac_matched", "mean_matched_cos")},
                       "l0_mean": float(np.mean([s["l0_mean"] for s in per_seed.values()])),
                       "fvu": float(np.mean([s["fvu"] for s in per_seed.values()])),
                       "dead_fraction": float(np.mean([s["dead_fraction"] for s in per_seed.values()])),
                       "pairs": pairs, "seeds": per_seed}
      log(f"{name}: mean max cos {results[name]['mean_max_cos']:.3f}, matched > {MATCH_THRESHOLD} "
          f"{results[name]['frac_matched']:.3f}")
  command = (f"softsae bench stability --data {args.data} --seeds {','.join(map(str, args.seeds))} "
             f"--archs {','.join(args.archs)} --k {args.k}" + "".join(f" --arch-k {a}={k}" for a, k in arch_k.items())
             + f" --l0-coeff {','.join(map(coeff_text, args.l0_coeff))} "
             f"--l1-coeff {','.join(map(coeff_text, args.l1_coeff))} --steps {args.steps} "
             f"--batch-size {args.batch_size} --out {out}"
             + (f" --n-latents {args.n_latents}" if args.n_latents else "")
             + (f" --config {args.config}" if args.config else "")
             + (f" --eval-data {args.eval_data}" if args.eval_data else "") + "".join(f" --set {s}" for s in overrides))
  args.seed = args.seeds[0]  # run_meta records one seed
  res = {"meta": {**output.run_meta(args, command, t0), "seeds": args.seeds, "match_threshold": MATCH_THRESHOLD,
                  "data": os.path.abspath(args.data),
                  "evaluated_on": os.path.abspath(args.eval_data or args.data)}, "models": results}
  md = stability_markdown(res)
  os.makedirs(out, exist_ok=True)
  files.write_json(os.path.join(out, "stability.json"), res, allow_nan=False)
  files.write_text(os.path.join(out, "stability.md"), md)
  print(md)
  return 0


def stability_markdown(res: dict[str, Any]) -> str:
  """``stability.md``: one row per model (means over seed pairs)."""
  from softsae_jax.bench.output import _header

  meta = res["meta"]
  lines = _header("# softsae bench stability", meta, (
      f"Seeds {', '.join(map(str, meta['seeds']))}; FVU and L0 (means over seeds) on {meta['evaluated_on']}.",))
  lines += [f"| model | L0 mean | FVU | dead | mean max cos | matched > {meta['match_threshold']} | mean matched cos |",
            "|---|---|---|---|---|---|---|"]
  for name, m in res["models"].items():
    lines.append(f"| {name} | {m['l0_mean']:.2f} | {m['fvu']:.4f} | {100 * m['dead_fraction']:.1f}% | "
                 f"{m['mean_max_cos']:.3f} | {m['frac_matched']:.3f} | {m['mean_matched_cos']:.3f} |")
  return "\n".join(lines) + "\n"
