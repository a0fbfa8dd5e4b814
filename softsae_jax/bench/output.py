"""What the bench writes: run metadata, Markdown tables, PNG plots, and the JSON/Markdown files.

``softsae bench synthetic`` writes ``OUT/results.json``, ``OUT/results.md`` and per kind
``OUT/<kind>_fvu_l0.png``, ``OUT/<kind>_k_by_class.png`` and ``OUT/<kind>_l0_hist.png`` (with
``--seeds``: those in ``OUT/seed<S>/`` and ``OUT/summary.json``, ``OUT/summary.md``);
``softsae bench pareto`` writes ``OUT/pareto.json``, ``OUT/pareto.md`` and ``OUT/pareto.png``.
Every file is written atomically (:mod:`softsae_jax.files`); JSON has no NaN (``null`` instead).
"""

from __future__ import annotations

import datetime
import math
import os
import pathlib
import platform
import time
from typing import Any

import numpy as np

from softsae_jax import files
from softsae_jax.bench.metrics import KL_SMOOTHING, RECOVERY_THRESHOLD
from softsae_jax.bench.runs import COEFF_SWEEPS, coeff_text

ARCH_COLORS = {"softsae": "C3", "topk": "C0", "batchtopk": "C2", "matryoshka": "C4", "relu": "C5",
               "jumprelu": "C1"}


def fmt(x: Any, nd: int = 3) -> str:
  """A metric for a table or a log line: "–" for None, "inf" for a non-finite float.

  Examples:
    >>> fmt(None), fmt(0.12345), fmt(float("inf")), fmt(3)
    ('–', '0.123', 'inf', '3')
  """
  if x is None:
    return "–"
  if isinstance(x, float):
    return f"{x:.{nd}f}" if math.isfinite(x) else "inf"
  return str(x)


def pm(stat: dict[str, Any] | None, nd: int = 3) -> str:
  """A :func:`~softsae_jax.bench.metrics.mean_sd` record as "mean ± sd" ("mean" alone from one value).

  Examples:
    >>> pm({"mean": 0.5, "sd": 0.01, "n": 3}), pm({"mean": 2.0, "sd": None, "n": 1}, 1), pm(None)
    ('0.500 ± 0.010', '2.0', '–')
  """
  if not stat or stat.get("mean") is None:
    return "–"
  return fmt(stat["mean"], nd) + ("" if stat.get("sd") is None else f" ± {fmt(stat['sd'], nd)}")


def sweep_point(m: dict[str, Any]) -> tuple[str, str]:
  """The swept quantity of a pareto run and its value: ``("k", "8")``, ``("l0_coeff", "0.001")``."""
  for sweep in COEFF_SWEEPS.values():
    if sweep.field in m:
      return sweep.field, coeff_text(m[sweep.field])
  return "k", str(m["k"])


def _git_state() -> dict[str, Any]:
  """HEAD of the checkout this package runs from and its library files that differ from it (so a
  result can be tied to the code); empty when git or the repository is not available."""
  import subprocess

  repo = str(pathlib.Path(__file__).resolve().parents[2])  # softsae_jax/bench/output.py -> the checkout
  try:
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "softsae_jax"], capture_output=True,
                           text=True, timeout=10, check=True).stdout.splitlines()
  except (OSError, subprocess.SubprocessError):
    return {}
  return {"git_head": head, "git_modified": [line[3:] for line in dirty]}


def run_meta(args, command: str, t0: float) -> dict[str, Any]:
  """The ``meta`` block both subcommands record: command, seed, overrides, code, date, host, versions."""
  import jax

  return {"command": command, "seed": args.seed, "overrides": list(args.set or []), **_git_state(),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "host": f"{platform.node()} ({os.cpu_count()} CPUs, {jax.devices()[0].platform})",
          "jax": jax.__version__, "python": platform.python_version(), "total_seconds": round(time.time() - t0, 1)}


def _code_line(meta: dict[str, Any]) -> str:
  if "git_head" not in meta:
    return "Code: unknown (no git checkout)."
  mod = meta["git_modified"]
  return f"Code: {meta['git_head'][:10]}" + (f" with uncommitted changes to {', '.join(mod)}." if mod else ".")


def _header(title: str, meta: dict[str, Any], more: tuple[str, ...] = ()) -> list[str]:
  """The first lines of a results page: title, command, date, host, code, ``more``, overrides."""
  lines = [title, "", f"Command: `{meta['command']}`  ",
           f"Date: {meta['date']}; host: {meta['host']}; total {meta['total_seconds']:.0f} s.  ",
           _code_line(meta) + ("  " if more else "")] + list(more) + [""]
  if meta["overrides"]:
    lines += [f"Config overrides for every model: `{' '.join(meta['overrides'])}`", ""]
  return lines


# --------------------------------------------------------------------------------------------------
# bench synthetic


def synthetic_markdown(results: dict[str, Any]) -> str:
  """``results.md``: per kind, the models' metrics, the per-class means, the interpolated TopK FVU,
  the acceptance checks and the training times."""
  meta = results["meta"]
  lines = _header(f"# softsae bench synthetic — preset {meta['preset']}, seed {meta['seed']}", meta)
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
                   f"{fmt(m['spearman_l0_true'])} | {fmt(m['pearson_l0_true'])} | {fmt(m['kl_l0_true'])} | "
                   f"{fmt(m['w1_l0_true'], 2)} | {rec_s} | {100 * m['dead_fraction']:.1f}% |")
    classes = sorted(r["_true_means"], key=int)
    lines += ["", f"Mean per true class ({what} = {', '.join(classes)}):", "",
              "| model | quantity | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for name, m in r["models"].items():
      if "khat_by_class" in m:
        lines.append(f"| {name} | k-hat | " + " | ".join(f"{m['khat_by_class'][c]:.2f}" for c in classes) + " |")
      lines.append(f"| {name} | L0 | " + " | ".join(f"{m['l0_by_class'][c]:.2f}" for c in classes) + " |")
    if "norm_by_class" in r["data"]:
      lines.append("| row norm ‖x‖ (control) | norm | " + " | ".join(
          f"{r['data']['norm_by_class'][c]:.3f}" for c in classes) + " |")
    soft = r["models"][f"softsae@k{r['target_k']}"]
    ip = r["topk_interpolated"]
    if ip is not None:
      lines += ["", f"TopK FVU interpolated linearly in L0 between k = {ip['k_low']} and k = {ip['k_high']} at "
                f"SoftSAE's L0 {ip['l0']:.3f}: {ip['fvu']:.4f} (SoftSAE: {soft['fvu']:.4f}, "
                f"{100 * (soft['fvu'] / ip['fvu'] - 1):+.1f}%)."]
    control = r["data"].get("spearman_norm_true")
    lines += ["", f"SoftSAE k-hat vs {what}: Spearman {fmt(soft['spearman_khat_true'])}, Pearson "
              f"{fmt(soft['pearson_khat_true'])}; KL(true‖k-hat) {fmt(soft.get('kl_khat_true'))}, "
              f"W1(true, k-hat) {fmt(soft.get('w1_khat_true'), 2)} (on the real k-hat; the table's KL and W1 "
              f"are on the floored L0). Control: the row norm alone has Spearman {fmt(control)} with the "
              f"{what}.", "",
              "Acceptance checks (SoftSAE, this run):", ""]
    lines += [f"- {k}: {'yes' if v else 'NO'}" for k, v in r["acceptance"].items()]
    lines += ["", "Training time per model (s; 'reused' = trained by an earlier run in this directory): "
              + ", ".join(f"{k} {'reused' if v is None else v}" for k, v in r["timing_s"].items()), ""]
  lines += ["KL(true‖L0): nats, integer histograms over 0..max with a pseudo-count of "
            f"{KL_SMOOTHING} added to every bin of both (KL(true‖k-hat): k-hat binned at the nearest integer). "
            "W1: earth mover's distance between the distributions. Dictionary recovery: signed cosine; a true atom counts as recovered above "
            f"{RECOVERY_THRESHOLD}. Dead: latents never active on the held-out set.", ""]
  return "\n".join(lines)


def plot_synthetic(out: str, r: dict[str, Any]) -> list[str]:
  """The three PNGs of one kind's results block ``r`` (with its per-row ``_rows``); returns their paths."""
  plt = _pyplot()
  kind = r["kind"]
  what = "true k" if kind == "mixture" else "local dimension"
  paths = []
  colors = ARCH_COLORS

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, m in r["models"].items():
    ax.scatter(m["l0_mean"], m["fvu"], color=colors[m["arch"]], s=40)
    ax.annotate(name, (m["l0_mean"], m["fvu"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel("mean inference L0 (held-out)")
  ax.set_ylabel("FVU (held-out)")
  ax.set_title(f"{kind}: FVU at matched L0")
  ax.grid(alpha=0.3)
  paths.append(_save(fig, out, f"{kind}_fvu_l0.png"))

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
  paths.append(_save(fig, out, f"{kind}_k_by_class.png"))

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
  paths.append(_save(fig, out, f"{kind}_l0_hist.png"))
  return paths


def write_synthetic(out: str, results: dict[str, Any], t0: float) -> list[str]:
  """Writes the plots, ``results.md`` and ``results.json`` (without the per-row ``_`` keys) of a
  ``bench synthetic`` run started at ``t0``; returns the paths written."""
  kinds = results["meta"]["kinds"]
  plots = []
  for kind in kinds:
    plots += plot_synthetic(out, results[kind])
  results["meta"]["total_seconds"] = round(time.time() - t0, 1)
  public = {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if k in kinds else v)
            for k, v in results.items()}
  paths = [os.path.join(out, "results.json"), os.path.join(out, "results.md")]
  files.write_json(paths[0], public, allow_nan=False)
  files.write_text(paths[1], synthetic_markdown(results))
  return paths + plots


SUMMARY_ROWS = (
    ("softsae_fvu", "SoftSAE FVU", 4),
    ("topk_interpolated_fvu", "TopK FVU interpolated at SoftSAE's L0", 4),
    ("softsae_vs_topk_interpolated", "SoftSAE vs TopK (relative FVU)", 3),
    ("topk_matched_fvu", "TopK FVU at round(L0)", 4),
    ("softsae_l0_mean", "SoftSAE mean L0", 2),
    ("softsae_k_hat_mean", "SoftSAE mean k-hat", 2),
    ("spearman_khat_true", "Spearman(k-hat, true)", 3),
    ("spearman_norm_true", "Spearman(‖x‖, true): control", 3),
    ("kl_khat_true", "KL(true‖k-hat)", 3),
    ("w1_khat_true", "W1(true, k-hat)", 2),
    ("kl_l0_true", "KL(true‖L0)", 3),
    ("w1_l0_true", "W1(true, L0)", 2),
    ("softsae_dict_recovery", "SoftSAE dict. recovery (mean max cos)", 3),
    ("softsae_dead_fraction", "SoftSAE dead fraction", 3),
    ("batchtopk_fvu", "BatchTopK FVU (round(L0))", 4),
    ("batchtopk_l0_mean", "BatchTopK mean L0", 2),
    ("matryoshka_fvu", "Matryoshka FVU (round(L0))", 4),
    ("matryoshka_l0_mean", "Matryoshka mean L0", 2),
)
"""The rows of ``summary.md``: (metric of :func:`~softsae_jax.bench.protocols.seed_metrics`, label, digits)."""


def seed_summary_markdown(summary: dict[str, Any]) -> str:
  """``summary.md`` of a ``--seeds`` run: per kind, mean ± sd over seeds and the value of every seed,
  the per-class means of k-hat and L0, and how many seeds pass each acceptance check."""
  meta = summary["meta"]
  seeds = meta["seeds"]
  lines = _header(f"# softsae bench synthetic — preset {meta['preset']}, seeds {', '.join(map(str, seeds))}", meta,
                  ("Per-seed outputs (results.md, plots): " + ", ".join(f"`seed{s}/`" for s in seeds) + ".",))
  for kind in meta["kinds"]:
    r = summary[kind]
    ms, per = r["mean_sd"], r["per_seed"]
    head = "| metric | mean ± sd | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    lines += [f"## {kind}", "", f"Mean ± sample sd (ddof = 1) over {len(seeds)} seeds.", "", head,
              "|---|---|" + "---|" * len(seeds)]
    for key, label, nd in SUMMARY_ROWS:
      if key in ms:
        lines.append(f"| {label} | {pm(ms[key], nd)} | " + " | ".join(fmt(per[str(s)].get(key), nd) for s in seeds)
                     + " |")
    classes = sorted({k.split(".", 1)[1] for k in ms if k.startswith("khat_by_class.")}, key=int)
    if classes:
      what = "true k" if kind == "mixture" else "local dimension"
      lines += ["", f"SoftSAE's mean per true class ({what} = {', '.join(classes)}), mean ± sd over seeds:", "",
                "| quantity | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
      for name, label in (("khat_by_class", "k-hat"), ("l0_by_class", "L0")):
        lines.append(f"| {label} | " + " | ".join(pm(ms.get(f"{name}.{c}"), 2) for c in classes) + " |")
    lines += ["", "Acceptance checks (seeds passing):", ""]
    lines += [f"- {c}: {n}/{len(seeds)}" for c, n in r["acceptance"].items()]
    lines.append("")
  return "\n".join(lines)


def write_seed_summary(out: str, summary: dict[str, Any], t0: float) -> list[str]:
  """Writes ``summary.json`` and ``summary.md`` of a ``--seeds`` run started at ``t0``; returns their paths."""
  summary["meta"]["total_seconds"] = round(time.time() - t0, 1)
  paths = [os.path.join(out, "summary.json"), os.path.join(out, "summary.md")]
  files.write_json(paths[0], summary, allow_nan=False)
  files.write_text(paths[1], seed_summary_markdown(summary))
  return paths


# --------------------------------------------------------------------------------------------------
# bench pareto


def pareto_markdown(res: dict[str, Any]) -> str:
  """``pareto.md``: FVU (mean L0) per arch and swept value (k, or the arch's L0-setting coefficient),
  then one row per run."""
  meta = res["meta"]
  lines = _header(f"# softsae bench pareto — {meta['data']}", meta, (f"Evaluated on: {meta['evaluated_on']}.",))
  tables: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # swept quantity -> arch -> value -> run
  for m in res["runs"].values():
    field, value = sweep_point(m)
    tables.setdefault(field, {}).setdefault(m["arch"], {})[value] = m
  for field, by_arch in tables.items():
    values = list(dict.fromkeys(v for runs in by_arch.values() for v in runs))
    what = "k" if field == "k" else f"sae.{field}"
    lines += [f"FVU (mean L0) per arch and {what}:", "", "| arch | " + " | ".join(f"{field}={v}" for v in values)
              + " |", "|---|" + "---|" * len(values)]
    for arch, runs in by_arch.items():
      cells = [f"{runs[v]['fvu']:.4f} ({runs[v]['l0_mean']:.1f})" if v in runs else "–" for v in values]
      lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += ["| run | k | coefficient | L0 mean | L0 std | FVU | cosine | dead | train s |",
            "|---|---|---|---|---|---|---|---|---|"]
  for name, m in res["runs"].items():
    field, value = sweep_point(m)
    coeff = "–" if field == "k" else f"sae.{field}={value}"
    lines.append(f"| {name} | {fmt(m['k'])} | {coeff} | {m['l0_mean']:.2f} | {m['l0_std']:.2f} | {m['fvu']:.4f} | "
                 f"{m['cosine']:.3f} | {100 * m['dead_fraction']:.1f}% | {res['timing_s'][name] or 'reused'} |")
  lines.append("")
  return "\n".join(lines)


def plot_pareto(out: str, res: dict[str, Any]) -> str:
  """``pareto.png``: FVU against mean L0 (log scale), one line per arch through its sweep, each point
  labelled with its k or coefficient; returns its path."""
  import matplotlib.ticker

  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for arch in res["meta"]["archs"]:
    pts = sorted((m["l0_mean"], m["fvu"], "=".join(sweep_point(m))) for m in res["runs"].values()
                 if m["arch"] == arch)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=arch, color=ARCH_COLORS.get(arch))
    for x, y, label in pts:
      ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
  ax.set_xscale("log")
  ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("mean inference L0")
  ax.set_ylabel("FVU")
  ax.set_title("FVU against mean L0")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  return _save(fig, out, "pareto.png")


def write_pareto(out: str, res: dict[str, Any], t0: float) -> tuple[list[str], str]:
  """Writes ``pareto.png``, ``pareto.json`` and ``pareto.md`` of a ``bench pareto`` run started at
  ``t0``; returns the paths written and the Markdown."""
  png = plot_pareto(out, res)
  res["meta"]["total_seconds"] = round(time.time() - t0, 1)
  md = pareto_markdown(res)
  paths = [os.path.join(out, "pareto.json"), os.path.join(out, "pareto.md")]
  files.write_json(paths[0], res, allow_nan=False)
  files.write_text(paths[1], md)
  return paths + [png], md


# --------------------------------------------------------------------------------------------------
# matplotlib


def _pyplot():
  """``matplotlib.pyplot`` on the non-interactive Agg backend (imported only when plotting)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _save(fig, out: str, name: str) -> str:
  plt = _pyplot()
  path = os.path.join(out, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
