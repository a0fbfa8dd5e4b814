"""``softsae bench absorption``: feature absorption on synthetic hierarchical data, where it is known exactly.

Feature absorption (Chanin et al., "A is for Absorption", arXiv 2409.14507): when a child feature
always co-occurs with its parent, a sparse dictionary can save a latent per row by folding the
parent's direction into the child's latent; the parent's latent then fails to fire exactly where the
child is present. On real data it is hard to measure (SAEBench's absorption eval needs probes and a
first-letter task); here the generator knows every feature.

The generator (:func:`make_hierarchy`): ``n_parents`` parent features, each with ``n_children``
children, and ``n_free`` independent features, all with unit-norm directions (orthonormal when they
fit in D). In each row every parent is present with probability ``p_parent``; a present parent has
one of its children (uniformly) with probability ``p_child``; a child never appears without its
parent. Free features are present with probability ``p_free``. A present feature has magnitude
``1 + mag_std·N(0, 1)`` (clipped to [0.5, 1.5]); rows get Gaussian noise of total norm ≈ ``noise``.

The metric (:func:`absorption_metrics`), on held-out rows, through the library's inference rules:

* the **parent latent** of a parent feature is the latent whose decoder atom has the largest cosine
  with the parent's direction;
* on every row holding a child (hence its parent), the parent is **absorbed** when its latent is off
  and the other active latents carry at least half of the parent's magnitude along its direction:
  ``Σ_{f ≠ parent latent} code_f · (W_dec[f] · parent) ≥ 0.5 · magnitude`` (codes in raw units);
* ``absorption_rate`` is the fraction of child-bearing rows where the parent is absorbed;
  ``parent_miss_rate`` the fraction where its latent is off at all; ``parent_recall_alone`` the
  fraction of parent-only rows (no child) where it fires; ``carried_mean`` the mean carried share on
  child-bearing rows with the parent latent off.

Two hand-built dictionaries calibrate it (rows ``(ground truth)`` and ``(parent merged into
children)`` of every result): the generator's own features (absorption 0), and a dictionary whose
child latents decode to ``(parent + child)/√2`` and whose parent latent is inhibited by its
children (absorption ≈ 1).

The protocol: train every arch of the library on the same training rows at (approximately) matched
L0 — the k-sparsified archs at ``--k`` (default: the true mean L0 rounded), jumprelu at
``--l0-coeff``, relu at ``--l1-coeff`` (their L0 follows the coefficient; the realised L0 of every
model is reported) — and measure absorption and FVU on held-out rows. Outputs ``OUT/absorption.json``
and ``OUT/absorption.md``.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import numpy as np

from softsae_jax import files
from softsae_jax.cli_types import choice_list, nonneg_float_list, nonneg_int, positive_int
from softsae_jax.config import ARCHS, ConfigError
from softsae_jax.types import Params

CARRY_THRESHOLD = 0.5
"""A parent counts as absorbed when the other active latents carry at least this share of its magnitude."""

REF_BIAS = 0.1
"""The hand-built dictionaries' encoder threshold (``b_enc = -0.1``): it keeps the noise from firing
latents of absent features (present ones have magnitude >= 0.5)."""

DEFAULT_DATA = dict(d=64, n_parents=8, n_children=4, n_free=16, p_parent=0.25, p_child=0.5, p_free=0.1,
                    mag_std=0.1, noise=0.01)


class Hierarchy(NamedTuple):
  """Rows with known hierarchical features.

  ``atoms_AD`` holds the unit feature directions in the order parents ``[0, P)``, children
  ``[P, P + P·C)`` (parent ``p``'s children are ``P + p·C + j``), free features; ``mags_NA`` each
  row's feature magnitudes (0 = absent); ``parent_of_A`` the parent of each child (-1 otherwise).
  """

  x_ND: np.ndarray
  atoms_AD: np.ndarray
  mags_NA: np.ndarray
  parent_of_A: np.ndarray
  n_parents: int
  n_children: int
  n_free: int

  @property
  def true_l0(self) -> float:
    """The mean number of present features per row."""
    return float((self.mags_NA > 0).sum(axis=1).mean())


def make_hierarchy(n_rows: int, *, d: int = 64, n_parents: int = 8, n_children: int = 4, n_free: int = 16,
                   p_parent: float = 0.25, p_child: float = 0.5, p_free: float = 0.1, mag_std: float = 0.1,
                   noise: float = 0.01, seed: int = 0, atoms_seed: int | None = None) -> Hierarchy:
  """Generates ``n_rows`` rows (see the module docstring). The feature directions depend only on
  ``atoms_seed`` (default ``seed``), so a train and a held-out set share them.

  Examples:
    >>> h = make_hierarchy(1000, d=16, n_parents=2, n_children=2, n_free=3, seed=0)
    >>> h.x_ND.shape, h.atoms_AD.shape
    ((1000, 16), (9, 16))
    >>> bool(np.all((h.mags_NA[:, 2:6] > 0).sum(axis=1) <= 2))  # at most one child per parent
    True
    >>> child_rows = h.mags_NA[:, 2] > 0                        # child 0 of parent 0 implies parent 0
    >>> bool(np.all(h.mags_NA[child_rows, 0] > 0))
    True
  """
  a = n_parents + n_parents * n_children + n_free
  arng = np.random.default_rng([atoms_seed if atoms_seed is not None else seed, 0])
  g = arng.normal(size=(d, a))
  if a <= d:
    atoms = np.linalg.qr(g)[0].T[:a]
  else:
    atoms = (g / np.linalg.norm(g, axis=0, keepdims=True)).T
  rng = np.random.default_rng([seed, 1])
  mags = np.zeros((n_rows, a))
  parent_on = rng.random((n_rows, n_parents)) < p_parent
  child_on = parent_on & (rng.random((n_rows, n_parents)) < p_child)
  which = rng.integers(0, n_children, (n_rows, n_parents))
  draw = lambda shape: np.clip(1.0 + mag_std * rng.normal(size=shape), 0.5, 1.5)  # noqa: E731
  mags[:, :n_parents] = np.where(parent_on, draw((n_rows, n_parents)), 0.0)
  child_mag = draw((n_rows, n_parents))
  for p in range(n_parents):
    rows = np.flatnonzero(child_on[:, p])
    mags[rows, n_parents + p * n_children + which[rows, p]] = child_mag[rows, p]
  free = n_parents + n_parents * n_children
  mags[:, free:] = np.where(rng.random((n_rows, n_free)) < p_free, draw((n_rows, n_free)), 0.0)
  x = mags @ atoms + (noise / np.sqrt(d)) * rng.normal(size=(n_rows, d))
  parent_of = np.full(a, -1)
  parent_of[n_parents:free] = np.repeat(np.arange(n_parents), n_children)
  return Hierarchy(x.astype(np.float32), atoms.astype(np.float32), mags.astype(np.float32), parent_of, n_parents,
                   n_children, n_free)


def truth_params(h: Hierarchy) -> Params:
  """The generator's own dictionary as a ReLU SAE (one latent per feature, encoder = decoder^T,
  encoder bias ``-REF_BIAS``)."""
  a, d = h.atoms_AD.shape
  return Params(w_enc=h.atoms_AD.T.copy(), b_enc=np.full(a, -REF_BIAS, np.float32), w_dec=h.atoms_AD.copy(),
                b_dec=np.zeros(d, np.float32))


def merged_params(h: Hierarchy, inhibit: float = 4.0) -> Params:
  """A fully absorbing ReLU dictionary: each child latent decodes to ``(parent + child)/√2`` with
  encoder ``√2·child`` (so its code carries the parent's magnitude too when they are equal); each
  parent latent's encoder is ``parent − inhibit·Σ children``, so it is off whenever a child is present."""
  w_enc = h.atoms_AD.T.copy().astype(np.float64)
  w_dec = h.atoms_AD.copy().astype(np.float64)
  for c in np.flatnonzero(h.parent_of_A >= 0):
    p = h.parent_of_A[c]
    w_enc[:, p] -= inhibit * h.atoms_AD[c]
    w_enc[:, c] = np.sqrt(2.0) * h.atoms_AD[c]
    w_dec[c] = (h.atoms_AD[p] + h.atoms_AD[c]) / np.sqrt(2.0)
  a, d = h.atoms_AD.shape
  return Params(w_enc=w_enc.astype(np.float32), b_enc=np.full(a, -REF_BIAS, np.float32), w_dec=w_dec.astype(np.float32),
                b_dec=np.zeros(d, np.float32))


def absorption_metrics(codes_NF: np.ndarray, w_dec_FD: np.ndarray, h: Hierarchy,
                       carry: float = CARRY_THRESHOLD) -> dict[str, Any]:
  """Absorption of every parent by its children on the rows of ``h`` (see the module docstring).

  Args:
    codes_NF: the SAE's raw-unit codes of ``h.x_ND``.
    w_dec_FD: its decoder (raw-unit codes times it is each latent's contribution).
    h: the rows and their truth.
    carry: the carried share that counts as absorbed.

  Returns:
    ``absorption_rate``, ``parent_miss_rate``, ``parent_recall_alone``, ``carried_mean``,
    ``parent_cos`` (mean cosine of each parent with its latent), ``child_rows``, ``per_parent``
    (absorption rate of each parent).
  """
  codes = np.asarray(codes_NF, np.float64)
  w_dec = np.asarray(w_dec_FD, np.float64)
  unit = w_dec / np.maximum(np.linalg.norm(w_dec, axis=1, keepdims=True), 1e-30)
  cos_AF = h.atoms_AD.astype(np.float64) @ unit.T
  n_rows_child = n_absorbed = n_miss = 0
  alone_on = alone_total = 0
  carried_off: list[np.ndarray] = []
  per_parent, parent_cos = [], []
  for p in range(h.n_parents):
    f_p = int(np.argmax(cos_AF[p]))
    parent_cos.append(float(cos_AF[p, f_p]))
    kids = np.flatnonzero(h.parent_of_A == p)
    has_child = (h.mags_NA[:, kids] > 0).any(axis=1)
    rows = np.flatnonzero(has_child)
    on = codes[rows, f_p] > 0
    along = codes[rows] * (w_dec @ h.atoms_AD[p].astype(np.float64))[None, :]
    carried = (along.sum(axis=1) - along[:, f_p]) / h.mags_NA[rows, p]
    absorbed = ~on & (carried >= carry)
    n_rows_child += len(rows)
    n_absorbed += int(absorbed.sum())
    n_miss += int((~on).sum())
    carried_off.append(carried[~on])
    per_parent.append(float(absorbed.mean()) if len(rows) else None)
    alone = (h.mags_NA[:, p] > 0) & ~has_child
    alone_on += int((codes[alone, f_p] > 0).sum())
    alone_total += int(alone.sum())
  carried_all = np.concatenate(carried_off)
  return {"absorption_rate": n_absorbed / max(n_rows_child, 1), "parent_miss_rate": n_miss / max(n_rows_child, 1),
          "parent_recall_alone": alone_on / max(alone_total, 1),
          "carried_mean": float(carried_all.mean()) if len(carried_all) else None,
          "parent_cos": float(np.mean(parent_cos)), "child_rows": n_rows_child, "per_parent": per_parent}


# --------------------------------------------------------------------------- the protocol


def add_parser(sub) -> None:
  """Adds ``softsae bench absorption`` to the bench's subparsers."""
  a = sub.add_parser(
      "absorption", help="feature absorption per arch on synthetic hierarchical data (known exactly)",
      description="Generates hierarchical synthetic data (children always co-occur with their parent; Chanin et al. "
      "2024), trains every arch at approximately matched L0, and reports on held-out rows the fraction of "
      "child-bearing rows where the parent's latent is off while other latents carry the parent, plus FVU; "
      "two hand-built dictionaries (the truth: 0; parent merged into children: ~1) calibrate it. Writes "
      "absorption.json and absorption.md to --out.")
  a.add_argument("--archs", type=choice_list(ARCHS), default=",".join(ARCHS),
                 help="comma-separated archs (default: all)")
  a.add_argument("--k", type=positive_int, help="k of the k-sparsified archs (default: the true mean L0, rounded)")
  a.add_argument("--arch-k", action="append", default=[], metavar="ARCH=K",
                 help="another k for one arch, to match its L0 (repeatable), e.g. --arch-k softsae=8")
  a.add_argument("--l0-coeff", type=nonneg_float_list, default="0.01",
                 help="jumprelu's sae.l0_coeff (comma-separated: one run each; default 0.01)")
  a.add_argument("--l1-coeff", type=nonneg_float_list, default="0.05",
                 help="relu's sae.l1_coeff (comma-separated: one run each; default 0.05)")
  a.add_argument("--n-latents", type=positive_int, default=128, help="dictionary size F (default 128)")
  a.add_argument("--rows", type=positive_int, default=60000, help="training rows (default 60000)")
  a.add_argument("--heldout-rows", type=positive_int, default=10000, help="held-out rows (default 10000)")
  a.add_argument("--steps", type=positive_int, default=2000, help="training steps per model (default 2000)")
  a.add_argument("--batch-size", type=positive_int, default=512, help="rows per step (default 512)")
  a.add_argument("--seed", type=nonneg_int, default=0, help="data, init and batch-order seed")
  a.add_argument("--out", help="output directory (default runs/bench-absorption-seed<seed>)")
  a.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config field for every model")
  a.add_argument("--quiet", action="store_true", help="no progress lines")
  a.set_defaults(bench_func=cmd_absorption)


def _write_rows(path: str, h: Hierarchy, key: dict[str, Any]) -> None:
  from softsae_jax.shards import ShardWriter

  w = ShardWriter(path, d_model=h.x_ND.shape[1], dtype="float32", source={"synthetic": "hierarchy"},
                  extra={"absorption_data": key})
  w.add(h.x_ND)
  w.close()


def _measure(model, ds, h: Hierarchy) -> dict[str, Any]:
  from softsae_jax.bench.runs import measure

  m, _ = measure(model, ds)
  codes = model.encode(h.x_ND)
  return {**{k: m[k] for k in ("fvu", "l0_mean", "dead_fraction")}, **absorption_metrics(
      codes, np.asarray(model.params.w_dec), h)}


def cmd_absorption(args) -> int:
  """``softsae bench absorption``: data, the reference dictionaries, every arch, then the JSON and Markdown."""
  from softsae_jax import handmade
  from softsae_jax.bench import output
  from softsae_jax.bench.stability import parse_arch_k
  from softsae_jax.bench.runs import (COEFF_SWEEPS, Log, check_overrides, coeff_text, dataset_view, make_config,
                                      rounded_secs, train_and_load)
  from softsae_jax.evaluate import load
  from softsae_jax.shards import open_dataset

  t0 = time.time()
  log = Log(args.quiet)
  out = args.out or os.path.join("runs", f"bench-absorption-seed{args.seed}")
  overrides = check_overrides(args.set, {"sae.l0_coeff": "--l0-coeff", "sae.l1_coeff": "--l1-coeff"})
  params = dict(DEFAULT_DATA)
  train = make_hierarchy(args.rows, seed=args.seed, **params)
  held = make_hierarchy(args.heldout_rows, seed=args.seed + 10_000, atoms_seed=args.seed, **params)
  k = args.k or max(1, int(round(train.true_l0)))
  dirs = {}
  for name, h, n in (("train", train, args.rows), ("heldout", held, args.heldout_rows)):
    key = {**params, "rows": n, "seed": args.seed, "part": name}
    dirs[name] = os.path.join(out, "data", name)
    dataset_view(dirs[name], "absorption_data", key, lambda p, h=h, key=key: _write_rows(p, h, key), what="data set",
                 log=log)
  held_ds = open_dataset(dirs["heldout"])

  models: dict[str, dict[str, Any]] = {}
  for ref, p in (("(ground truth)", truth_params(held)), ("(parent merged into children)", merged_params(held))):
    wd = os.path.join(out, "reference", "truth" if "truth" in ref else "merged")
    if not os.path.isdir(os.path.join(wd, "checkpoints")):
      handmade.write_workdir(wd, handmade.relu_config(held.x_ND.shape[1], p.w_dec.shape[0]), p)
    models[ref] = {"arch": "hand-built relu", **_measure(load(wd), held_ds, held)}
    log(f"{ref}: absorption {models[ref]['absorption_rate']:.3f}")
  coeffs = {"jumprelu": args.l0_coeff, "relu": args.l1_coeff}
  arch_k = parse_arch_k(args.arch_k)
  timing = {}
  for arch in args.archs:
    sweep = COEFF_SWEEPS.get(arch)
    k_arch = arch_k.get(arch, k)
    points = [(f"{arch}@k{k_arch}", [])] if sweep is None else [
        (f"{arch}@{sweep.tag}{coeff_text(c)}", [f"sae.{sweep.field}={c}"]) for c in coeffs[arch]]
    for name, fields in points:
      # sae.k for every arch: jumprelu/relu read it only as a reference, but it must be < F
      cfg = make_config(arch, k_arch, n_latents=args.n_latents, steps=args.steps,
                        batch_size=args.batch_size, seed=args.seed, overrides=overrides, fields=fields)
      try:
        cfg.resolve(train.x_ND.shape[1])
      except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
      model, secs = train_and_load(dirs["train"], os.path.join(out, "runs", name), cfg, log, name)
      models[name] = {"arch": arch, **({"k": k_arch} if sweep is None else {sweep.field: float(fields[-1].split("=")[1])}),
                      **_measure(model, held_ds, held)}
      timing[name] = rounded_secs(secs)
      log(f"{name}: absorption {models[name]['absorption_rate']:.3f}, FVU {models[name]['fvu']:.4f}, "
          f"L0 {models[name]['l0_mean']:.2f}")
  command = (f"softsae bench absorption --archs {','.join(args.archs)} --k {k} "
             + "".join(f"--arch-k {a}={v} " for a, v in arch_k.items())
             + f"--l0-coeff {','.join(map(coeff_text, args.l0_coeff))} "
             f"--l1-coeff {','.join(map(coeff_text, args.l1_coeff))} "
             f"--n-latents {args.n_latents} --rows {args.rows} --heldout-rows {args.heldout_rows} --steps {args.steps} "
             f"--batch-size {args.batch_size} --seed {args.seed} --out {out}"
             + "".join(f" --set {s}" for s in overrides))
  res = {"meta": {**output.run_meta(args, command, t0), "data": params, "true_l0": held.true_l0, "k": k,
                  "carry_threshold": CARRY_THRESHOLD, "evaluated_on": f"{args.heldout_rows} held-out rows"},
         "models": models, "timing_s": timing}
  md = absorption_markdown(res)
  files.write_json(os.path.join(out, "absorption.json"), res, allow_nan=False)
  files.write_text(os.path.join(out, "absorption.md"), md)
  print(md)
  log(f"done in {time.time() - t0:.0f}s; wrote {out}/absorption.json, absorption.md")
  return 0


def absorption_markdown(res: dict[str, Any]) -> str:
  """``absorption.md``: one row per model."""
  from softsae_jax.bench.output import _header, fmt

  meta = res["meta"]
  d = meta["data"]
  lines = _header("# softsae bench absorption", meta, (
      f"Data: D = {d['d']}, {d['n_parents']} parents × {d['n_children']} children, {d['n_free']} free features; "
      f"p(parent) = {d['p_parent']}, p(child | parent) = {d['p_child']}, p(free) = {d['p_free']}; true mean L0 "
      f"{meta['true_l0']:.2f}; k = {meta['k']}. Evaluated on {meta['evaluated_on']}.",))
  lines += ["| model | L0 mean | FVU | absorption | parent latent off | parent recall alone | carried (off) | "
            "parent cos |", "|---|---|---|---|---|---|---|---|"]
  for name, m in res["models"].items():
    lines.append(f"| {name} | {m['l0_mean']:.2f} | {m['fvu']:.4f} | {m['absorption_rate']:.3f} | "
                 f"{m['parent_miss_rate']:.3f} | {m['parent_recall_alone']:.3f} | {fmt(m['carried_mean'], 2)} | "
                 f"{m['parent_cos']:.3f} |")
  lines += ["", f"absorption: share of child-bearing rows whose parent latent is off while the other active latents "
            f"carry ≥ {meta['carry_threshold']} of the parent's magnitude along its direction."]
  return "\n".join(lines) + "\n"
