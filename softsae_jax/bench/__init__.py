"""``softsae bench``: evidence benchmarks (synthetic ground truth; FVU against L0 on any activations).

Two subcommands.

``softsae bench synthetic [--preset small-unitnorm|small|...] [--kind mixture|manifolds|both]
[--seed N | --seeds 0,1,2] [--out DIR]`` trains SoftSAE at a preset's target k on synthetic data with a known per-row k, then TopK, BatchTopK
and Matryoshka at SoftSAE's mean inference L0, and compares them on a held-out set (FVU, per-row L0
against the true k, dictionary recovery): ``OUT/results.json``, ``OUT/results.md``, ``OUT/<kind>_*.png``.

``softsae bench pareto --data DIR [--ks 8,16,32] [--archs softsae,topk,batchtopk,matryoshka]
[--l0-coeffs 3e-3,1e-3,3e-4] [--l1-coeffs 1,0.3,0.1] [--steps N]`` trains each arch over a sweep (k,
or for jumprelu/relu the coefficient that sets their L0) on the first rows of any
``softsae-activations/1`` set and plots FVU against mean L0 on the held-out last rows:
``OUT/pareto.json``, ``OUT/pareto.md``, ``OUT/pareto.png``.

Every model gets the library's default config except the fields the bench sets (``sae.arch``,
``sae.k`` or the sparsity coefficient, ``sae.n_latents``, ``train.steps``, ``train.batch_size``,
``train.seed``, and the logging/checkpoint intervals), so the comparison is about the defaults.
``--set section.key=value`` changes a field for *every* model (``sae.arch``, ``sae.k``,
``train.steps`` and ``train.seed`` are the bench's: use ``--steps`` and ``--seed``; in a pareto run
with jumprelu or relu, ``sae.l0_coeff`` / ``sae.l1_coeff`` are the bench's too). The default
``--out`` is under ``runs/``; the outputs behind docs/results.md are kept in ``benchmarks/results/``,
each directory with the command that wrote it (see benchmarks/README.md).

The modules:

* :mod:`~softsae_jax.bench.metrics`: the metric functions (numpy only: KL, W1, dictionary
  recovery, per-class means);
* :mod:`~softsae_jax.bench.runs`: configs, data views, training (or reuse) and evaluation of one
  model through the inference engine;
* :mod:`~softsae_jax.bench.protocols`: the two protocols (what is trained, matched L0, the
  interpolated TopK FVU, the pareto sweep points);
* :mod:`~softsae_jax.bench.output`: metadata, Markdown, plots and the files written.

``softsae bench absorption`` (:mod:`~softsae_jax.bench.absorption`) measures feature absorption per arch
on synthetic hierarchical data where it is known exactly; ``softsae bench stability --data DIR --seeds
0,1,2`` (:mod:`~softsae_jax.bench.stability`) matches decoder atoms across seeds per arch.

This module holds the ``softsae bench`` command (:func:`add_arguments`, :func:`run`, called from
:mod:`softsae_jax.cli`) and re-exports the public names.
"""

from __future__ import annotations

import argparse

from softsae_jax.bench.metrics import KL_SMOOTHING as KL_SMOOTHING
from softsae_jax.bench.metrics import RECOVERY_THRESHOLD as RECOVERY_THRESHOLD
from softsae_jax.bench.metrics import class_means as class_means
from softsae_jax.bench.metrics import dictionary_recovery as dictionary_recovery
from softsae_jax.bench.metrics import increasing as increasing
from softsae_jax.bench.metrics import int_histogram as int_histogram
from softsae_jax.bench.metrics import kl_int as kl_int
from softsae_jax.bench.metrics import wasserstein_int as wasserstein_int
from softsae_jax.bench.output import ARCH_COLORS as ARCH_COLORS
from softsae_jax.bench.output import pareto_markdown as pareto_markdown
from softsae_jax.bench.output import synthetic_markdown as synthetic_markdown
from softsae_jax.bench.protocols import BENCH_PRESETS as BENCH_PRESETS
from softsae_jax.bench.protocols import DEFAULT_PRESET as DEFAULT_PRESET
from softsae_jax.bench.protocols import KINDS as KINDS
from softsae_jax.bench.protocols import SYNTHETIC_ARCHS as SYNTHETIC_ARCHS
from softsae_jax.bench.protocols import cmd_pareto as cmd_pareto
from softsae_jax.bench.protocols import cmd_synthetic as cmd_synthetic
from softsae_jax.bench.protocols import pareto_points as pareto_points
from softsae_jax.bench.protocols import run_synthetic_kind as run_synthetic_kind
from softsae_jax.bench.runs import BENCH_KEYS as BENCH_KEYS
from softsae_jax.bench.runs import COEFF_SWEEPS as COEFF_SWEEPS
from softsae_jax.bench.runs import EVAL_BATCH as EVAL_BATCH
from softsae_jax.bench.runs import make_config as make_config
from softsae_jax.cli_types import (choice_list, int_list, nonneg_float_list, nonneg_int, nonneg_int_list,
                                   positive_int, proper_fraction)
from softsae_jax.config import ARCHS
from softsae_jax.stats import pearson as pearson
from softsae_jax.stats import rankdata as rankdata
from softsae_jax.stats import spearman as spearman


def add_arguments(p: argparse.ArgumentParser) -> None:
  """Adds ``synthetic``, ``pareto``, ``absorption`` and ``stability`` and their flags to the ``softsae bench`` parser."""
  sub = p.add_subparsers(dest="bench_command", required=True)

  s = sub.add_parser(
      "synthetic", help="SoftSAE vs fixed-k SAEs at matched L0 on data with a known k",
      description="Generates a preset's train and held-out sets with ground truth, trains SoftSAE at the "
      "target k, then TopK, BatchTopK and Matryoshka at SoftSAE's mean inference L0 (and TopK at the target k "
      "and on both sides of that L0), evaluates all on the held-out set and writes results.json, results.md "
      "and PNG plots to --out. Deterministic given --seed. See docs/results.md.")
  s.add_argument("--preset", choices=sorted(BENCH_PRESETS), default=DEFAULT_PRESET,
                 help="data size, F, target k, steps (small: a few minutes on 2 CPU cores; tiny: tests); "
                 "-unitnorm: every row of unit norm, so the norm does not give the true k away "
                 f"(default {DEFAULT_PRESET})")
  s.add_argument("--kind", choices=("mixture", "manifolds", "both"), default="mixture",
                 help="sparse mixture (true k, true dictionary), union of manifolds (local dimension), or both")
  seeds = s.add_mutually_exclusive_group()
  seeds.add_argument("--seed", type=nonneg_int, default=0, help="data, init and batch-order seed (default 0)")
  seeds.add_argument("--seeds", type=nonneg_int_list,
                     help="comma-separated seeds: one run per seed in OUT/seed<S>, then the mean and sd over "
                     "seeds in OUT/summary.json and OUT/summary.md")
  s.add_argument("--out", help="output directory (default runs/bench-synthetic-<preset>-seed<seed>, or "
                 "-seeds<S1>-<S2>... with --seeds)")
  s.add_argument("--steps", type=positive_int, help="override the preset's training steps (every model)")
  s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                 help="override a config field for every model, e.g. --set sae.soft_grad=faithful")
  s.add_argument("--quiet", action="store_true", help="no progress lines")
  s.set_defaults(bench_func=cmd_synthetic)

  q = sub.add_parser(
      "pareto", help="FVU against mean L0 over a k (or coefficient) sweep for several archs",
      description="Trains every arch at every k (jumprelu at every --l0-coeffs value, relu at every --l1-coeffs "
      "value: their L0 is set by that coefficient, not by k) on the first rows of --data and evaluates on the "
      "last --holdout fraction (both written once as copies under --out/split); writes pareto.json, pareto.md "
      "and pareto.png to --out.")
  q.add_argument("--data", required=True, help="a softsae-activations/1 directory")
  q.add_argument("--out", help="output directory (default runs/bench-pareto)")
  q.add_argument("--ks", type=int_list, default="8,16,32",
                 help="comma-separated k values of the k-sparsified archs (default 8,16,32)")
  q.add_argument("--archs", type=choice_list(ARCHS), default="softsae,topk,batchtopk,matryoshka",
                 help=f"comma-separated archs, some of {','.join(ARCHS)} (default softsae,topk,batchtopk,matryoshka)")
  q.add_argument(COEFF_SWEEPS["jumprelu"].flag, type=nonneg_float_list, default="3e-3,1e-3,3e-4",
                 help="jumprelu's sweep: comma-separated sae.l0_coeff values; smaller gives a larger L0 "
                 "(default 3e-3,1e-3,3e-4)")
  q.add_argument(COEFF_SWEEPS["relu"].flag, type=nonneg_float_list, default="1,0.3,0.1",
                 help="relu's sweep: comma-separated sae.l1_coeff values; smaller gives a larger L0 "
                 "(default 1,0.3,0.1)")
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

  from softsae_jax.bench import absorption, headroom, stability

  absorption.add_parser(sub)
  stability.add_parser(sub)
  headroom.add_parser(sub)


def run(args: argparse.Namespace) -> int:
  """Runs the parsed ``softsae bench`` subcommand; returns the exit status."""
  return args.bench_func(args)
