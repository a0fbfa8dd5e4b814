"""``softsae report``: one self-contained HTML page about a trained SAE.

Usage::

  softsae report --workdir RUN --data ACTS [--out FILE] [--compare RUN2 ...] [--max-rows N]

The report runs the checkpoint over the first ``--max-rows`` rows of the data in natural order (so
text passages are contiguous), in raw units through :mod:`softsae_jax.evaluate`, and shows:

1. the run (arch, F, k, steps, the data's ``source`` block) and the evaluation on those rows (FVU,
   mean L0, the spread of SoftSAE's per-token k-hat), with a row per ``--compare`` run;
2. training curves from ``metrics.jsonl`` (loss, FVU, mean k-hat and L0, dead fraction), the
   compared runs overlaid;
3. the distribution of per-token k-hat and of the realised L0 (SoftSAE keeps the floor(k-hat)
   largest ReLU activations at inference) against the config's k and the compared runs' L0;
4. k-hat (or L0) against the per-token relative error ||x - x_hat||^2 / ||x||^2;
5. passages of text with every token coloured by its k-hat (L0 for the other archs);
6. the top-activating contexts of the most frequent latents and of those with the largest activation;
7. dead and dense latents and the histogram of log10 firing frequency;
8. the downstream evaluations saved next to the run, whichever exist (:data:`EVAL_FILES`):
   ``WORKDIR/fidelity.json`` (``softsae fidelity``), ``WORKDIR/probe.json`` (``softsae probe``) and
   the ``compare`` block of ``WORKDIR/eval.json`` (``softsae eval --compare W2 --out WORKDIR/eval.json``).

Text sections need per-row ``tokens`` side files and a ``vocab`` list in the manifest
(docs/data-format.md); ``doc_index`` keeps passages and contexts within one document. Other data
(vision, synthetic) gets a one-line note instead, and latents are listed with their top rows.
Plots are PNGs drawn with matplotlib's Agg canvas (pyplot and its global backend are not touched)
and inlined as base64; the page loads nothing from the network and runs no script.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import html
import io
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from softsae_jax.checkpoint import CheckpointError
from softsae_jax.cli_types import positive_int
from softsae_jax.data import read_rows
from softsae_jax.evaluate import DENSE_FREQ, Model, load, scan
from softsae_jax.stats import spearman
from softsae_jax.shards import Dataset, DataError, open_dataset
from softsae_jax.trainer import read_metrics

DEFAULT_MAX_ROWS = 20000
N_FREQ_LATENTS = 12  # latents shown for their firing frequency ...
N_MAXACT_LATENTS = 4  # ... and for their largest activation (when not already shown)
N_CONTEXTS = 5  # top-activating contexts per latent
WINDOW = 8  # tokens either side of the activating token
PASSAGE_DOCS = 4  # documents shown in the passage view
PASSAGE_TOKENS = 180  # tokens shown per document
TOKEN_CMAP = "YlGnBu"
RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


# --------------------------------------------------------------------------- inference over the rows


@dataclasses.dataclass
class RunStats:
  """One run evaluated on the report's rows (all arrays over those rows, in data order).

  ``k_N`` is SoftSAE's k-hat; for the other archs it is ``l0_N``. ``top_val_MF``/``top_row_MF``
  hold each latent's ``M`` largest activations and their global rows (value 0 = none).
  """

  name: str
  workdir: str
  model: Model
  metrics: list[dict[str, Any]]
  valid_N: np.ndarray
  k_N: np.ndarray
  l0_N: np.ndarray
  relerr_N: np.ndarray
  fire_F: np.ndarray
  max_F: np.ndarray
  top_val_MF: np.ndarray | None
  top_row_MF: np.ndarray | None
  fvu: float

  @property
  def arch(self) -> str:
    return self.model.cfg.sae.arch

  @property
  def soft(self) -> bool:
    return self.arch == "softsae"

  @property
  def n_valid(self) -> int:
    return int(self.valid_N.sum())

  @property
  def freq_F(self) -> np.ndarray:
    return self.fire_F / max(self.n_valid, 1)


def _scan(name: str, workdir: str, model: Model, ds: Dataset, n_rows: int, batch_size: int, skip: bool,
          keep_top: bool) -> RunStats:
  """Runs ``model`` over the first ``n_rows`` rows of ``ds`` in order through the inference engine,
  keeping per-row and per-latent statistics."""
  acc = scan(model, ds, batch_size=batch_size, skip_nonfinite=skip, max_rows=n_rows, per_row=True,
             top_m=N_CONTEXTS if keep_top else 0)
  r = acc.rows()
  return RunStats(name=name, workdir=workdir, model=model, metrics=read_metrics(workdir), valid_N=r.valid_N,
                  k_N=r.k_N if model.arch == "softsae" else r.l0_N.astype(np.float64), l0_N=r.l0_N,
                  relerr_N=r.relerr_N, fire_F=acc.fire_F, max_F=acc.max_F, top_val_MF=acc.top_val_MF,
                  top_row_MF=acc.top_row_MF, fvu=acc.fvu)


# --------------------------------------------------------------------------- text side data


@dataclasses.dataclass
class Text:
  """Token display strings for rows ``[0, len(tokens_N))`` and their (document, position)."""

  tokens_N: np.ndarray
  doc_N: np.ndarray | None
  pos_N: np.ndarray | None
  vocab: list[str]

  def show(self, row: int) -> str:
    t = int(self.tokens_N[row])
    return self.vocab[t] if 0 <= t < len(self.vocab) else f"<id {t}>"


def display_vocab(vocab: Sequence[Any]) -> list[str]:
  """Display strings for a ``vocab.json`` list.

  The export bridge writes display strings already (a leading space starts a word); a raw
  tokenizer vocabulary with word-piece markers (``Ġ``/``Ċ`` byte-level BPE, ``▁`` SentencePiece,
  ``##`` WordPiece) is converted to that convention here.

  Examples:
    >>> display_vocab(["Ġthe", "Ġcat", "s", "Ċ"])
    [' the', ' cat', 's', '\\n']
    >>> display_vocab([" the", "cat"])
    [' the', 'cat']
  """
  from softsae_jax.bridge.vocab import PLAIN, detect_style, render_token

  strs = ["" if v is None else str(v) for v in vocab]
  style = detect_style(strs)
  if style == PLAIN:
    return strs
  return [s if _is_special(s) and not s.startswith("<0x") else render_token(s, style) for s in strs]


def _load_text(ds: Dataset, n_rows: int) -> tuple[Text | None, str | None]:
  """(Text over the first ``n_rows`` rows, None) or (None, why the text sections are skipped)."""
  if "vision" in ds.manifest or (ds.manifest.get("source") or {}).get("arch") == "vision":
    return None, "Vision data (the tokens are patch positions, not text): the text passage and token contexts are skipped."
  vname = ds.manifest.get("vocab")
  has_tokens = all("tokens" in s.entry for s in ds.shards)
  if not vname or not has_tokens:
    missing = " and ".join(w for w, ok in (("per-row `tokens` side files", has_tokens), ("a `vocab` list", vname))
                           if not ok)
    return None, f"No token text in this dataset ({missing} missing): the text passage and token contexts are skipped."
  vpath = os.path.join(ds.path, str(vname))
  if not os.path.isfile(vpath):
    raise DataError(f"vocab file {vpath} listed in the manifest is missing")
  try:
    with open(vpath, encoding="utf-8") as f:
      vocab = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"vocab file {vpath} is not valid JSON ({e})") from None
  if not isinstance(vocab, list):
    raise DataError(f"vocab file {vpath}: expected a JSON list of strings, got {type(vocab).__name__}")
  has_doc = all("doc_index" in s.entry for s in ds.shards)
  toks, docs = [], []
  for i, shard in enumerate(ds.shards):
    if shard.start >= n_rows:
      break
    hi = min(shard.rows, n_rows - shard.start)
    toks.append(np.asarray(ds.side("tokens", i)[:hi], np.int64))
    if has_doc:
      docs.append(np.asarray(ds.side("doc_index", i)[:hi], np.int64).reshape(hi, -1))
  doc_N2 = np.concatenate(docs) if has_doc else None
  if doc_N2 is not None and doc_N2.shape[1] < 2:
    doc_N2 = None
  return Text(np.concatenate(toks), None if doc_N2 is None else doc_N2[:, 0],
              None if doc_N2 is None else doc_N2[:, 1], display_vocab(vocab)), None


# --------------------------------------------------------------------------- plots


def _figure(w: float, h: float):
  from matplotlib.figure import Figure

  return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _img(fig, alt: str) -> str:
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
  data = base64.b64encode(buf.getvalue()).decode("ascii")
  w, h = fig.get_size_inches() * 100
  return (f'<img class="plot" alt="{html.escape(alt)}" width="{int(w)}" height="{int(h)}" '
          f'src="data:image/png;base64,{data}">')


def _style_axes(ax) -> None:
  ax.grid(True, alpha=0.3, linewidth=0.6)
  for side in ("top", "right"):
    ax.spines[side].set_visible(False)


def _plot_curves(runs: list[RunStats]) -> str | None:
  if not any(r.metrics for r in runs):
    return None
  fig = _figure(11, 6.4)
  axes = fig.subplots(2, 2)
  panels = (("loss", "training loss", True), ("fvu", "FVU (train batch)", False), (None, "", False),
            ("dead_frac", "dead fraction (AuxK window)", False))
  main_k = runs[0].model.cfg.sae.k
  for ax, (key, title, logy) in zip(axes.flat, panels):
    for r, color in zip(runs, RUN_COLORS):
      steps = np.array([m["step"] for m in r.metrics], float)
      label = f"{r.name} ({r.arch})"
      if key is None:
        if r.soft:
          ax.plot(steps, [m.get("k_mean", np.nan) for m in r.metrics], color=color, lw=1.6, label=f"{label}: mean k̂")
          ax.plot(steps, [m.get("l0_mean", np.nan) for m in r.metrics], color=color, lw=1.2, ls="--",
                  label=f"{label}: mean L0")
          if any("k_budget" in m for m in r.metrics):
            ax.plot(steps, [m.get("k_budget", np.nan) for m in r.metrics], color=color, lw=1.0, ls=":",
                    label=f"{label}: k budget")
        else:
          ax.plot(steps, [m.get("l0_mean", np.nan) for m in r.metrics], color=color, lw=1.6, label=f"{label}: mean L0")
      else:
        ax.plot(steps, [m.get(key, np.nan) for m in r.metrics], color=color, lw=1.4, label=label)
    if key is None:
      ax.axhline(main_k, color="0.3", lw=0.8, ls="-.", label=f"k = {main_k} (config)")
      title = "mean k̂ and L0 per token" if any(r.soft for r in runs) else "mean L0 per token"
      ax.legend(fontsize=7.5, loc="best")
      settled = [float(m[c]) for r in runs for m in r.metrics[len(r.metrics) // 10:] for c in ("k_mean", "l0_mean")
                 if isinstance(m.get(c), (int, float)) and np.isfinite(m[c])]
      ax.set_ylim(0, 1.6 * max(settled + [main_k]))  # the k budget anneals down from D: keep the settled part readable
    elif key == "loss" and len(runs) > 1:
      ax.legend(fontsize=8)
    if key == "dead_frac":
      ax.set_ylim(0, max(0.05, 1.1 * max((m.get(key, 0.0) for r in runs for m in r.metrics), default=0.0)))
    if logy:
      ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    _style_axes(ax)
  return _img(fig, "training curves")


def _plot_k_hist(main: RunStats, others: list[RunStats]) -> str:
  fig = _figure(11, 3.8)
  ax = fig.subplots()
  k = main.model.cfg.sae.k
  v = main.valid_N
  l0_max = max(int(r.l0_N[r.valid_N].max()) for r in [main, *others])
  hi = max(l0_max, float(main.k_N[v].max()), k) + 1
  int_bins = np.arange(-0.5, hi + 0.5, 1.0)
  if main.soft:
    kh = main.k_N[v]
    width = max((kh.max() - kh.min()) / 60, 0.05)
    ax.hist(kh, bins=np.arange(kh.min(), kh.max() + width, width), density=True, color=RUN_COLORS[0], alpha=0.55,
            label=f"{main.name}: k̂ (mean {kh.mean():.2f}, std {kh.std():.2f})")
  ax.hist(main.l0_N[v], bins=int_bins, density=True, histtype="step", lw=2.0, color=RUN_COLORS[0],
          label=f"{main.name}: realised L0 (mean {main.l0_N[v].mean():.2f})")
  for r, color in zip(others, RUN_COLORS[1:]):
    ax.hist(r.l0_N[r.valid_N], bins=int_bins, density=True, histtype="step", lw=1.6, color=color, ls="--",
            label=f"{r.name} ({r.arch}, k={r.model.cfg.sae.k}): L0 (mean {r.l0_N[r.valid_N].mean():.2f})")
  ax.axvline(k, color="0.15", lw=1.2, ls="-.", label=f"k = {k} (config of {main.name})")
  ax.set_xlabel("active latents per token" + (" (k̂ is real-valued; inference keeps floor(k̂))" if main.soft else ""),
                fontsize=9)
  ax.set_ylabel("density (fraction of tokens per unit)", fontsize=9)
  ax.set_xlim(-0.5, hi + 0.5)
  ax.legend(fontsize=8)
  _style_axes(ax)
  return _img(fig, "per-token k histogram")


def _plot_k_vs_err(main: RunStats) -> tuple[str, str]:
  v = main.valid_N
  x = main.k_N[v]
  err = np.clip(main.relerr_N[v], 1e-6, None)
  what = "k̂" if main.soft else "L0"
  fig = _figure(11, 4.2)
  if np.ptp(x) == 0:
    ax = fig.subplots()
    ax.hist(np.log10(err), bins=60, color=RUN_COLORS[0], alpha=0.7)
    ax.set_xlabel("log10 relative error ||x − x̂||² / ||x||²", fontsize=9)
    ax.set_ylabel("tokens", fontsize=9)
    _style_axes(ax)
    note = (f"Every token has {what} = {int(x[0])}, so the panel shows the distribution of the per-token error; "
            f"median {np.median(err):.3g}.")
    return _img(fig, "relative error histogram"), note
  ax = fig.subplots()
  hb = ax.hexbin(x, err, gridsize=(60, 30), yscale="log", bins="log", cmap="Blues", mincnt=1, linewidths=0.2)
  fig.colorbar(hb, ax=ax, label="tokens per cell", pad=0.01)
  edges = np.unique(np.quantile(x, np.linspace(0, 1, 21)))
  if len(edges) > 2:
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    centers, meds = [], []
    for i in range(len(edges) - 1):
      sel = which == i
      if sel.sum() >= 5:
        centers.append(float(np.median(x[sel])))
        meds.append(float(np.median(err[sel])))
    ax.plot(centers, meds, color="#d62728", lw=2, marker="o", ms=3, label="median error per 5% quantile of " + what)
    ax.legend(fontsize=8, loc="upper right")
  ax.set_xlabel(f"{what} per token", fontsize=9)
  ax.set_ylabel("relative error ||x − x̂||² / ||x||²", fontsize=9)
  _style_axes(ax)
  note = (f"Spearman rank correlation of {what} and relative error: {spearman(x, err):+.3f} over {len(x)} tokens; "
          f"median relative error {np.median(err):.3g}.")
  return _img(fig, f"{what} against relative error"), note


def _plot_freq(runs: list[RunStats]) -> str:
  fig = _figure(11, 3.6)
  ax = fig.subplots()
  lows = [np.log10(r.freq_F[r.fire_F > 0]).min() for r in runs if (r.fire_F > 0).any()]
  lo = np.floor(min(lows + [-1.0]) * 4) / 4
  bins = np.arange(lo, 0.0 + 0.125, 0.125)
  for i, (r, color) in enumerate(zip(runs, RUN_COLORS)):
    live = r.freq_F[r.fire_F > 0]
    dead = int((r.fire_F == 0).sum())
    ax.hist(np.log10(live), bins=bins, histtype="stepfilled" if i == 0 else "step", alpha=0.5 if i == 0 else 1.0,
            lw=1.6, color=color, label=f"{r.name} ({r.arch}): {len(live)} live, {dead} dead of {r.model.cfg.sae.F}")
  ax.axvline(np.log10(DENSE_FREQ), color="0.2", ls="-.", lw=1, label=f"dense threshold ({DENSE_FREQ:.0%} of tokens)")
  ax.set_xlabel("log10 firing frequency (fraction of tokens on which the latent is active)", fontsize=9)
  ax.set_ylabel("latents", fontsize=9)
  ax.legend(fontsize=8)
  _style_axes(ax)
  return _img(fig, "firing frequency histogram")


# --------------------------------------------------------------------------- HTML pieces

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif;color:#1d2330;
 background:#f6f7f9;margin:0;line-height:1.45}
main{max-width:1140px;margin:0 auto;padding:18px 26px 60px;background:#fff;box-shadow:0 0 0 1px #e4e7ec}
h1{font-size:24px;margin:6px 0 2px}h2{font-size:18px;margin:34px 0 8px;padding-top:6px;border-top:2px solid #eef0f3}
.sub{color:#5b6475;font-size:13px;margin-bottom:12px}
nav{font-size:13px;margin:8px 0 4px}nav a{color:#2456a6;margin-right:14px;text-decoration:none}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top;overflow-wrap:anywhere}th{color:#5b6475;font-weight:600}
table.runs td,table.runs th{padding:4px 12px;border-bottom:1px solid #eef0f3}table.runs td.n{text-align:right;
 font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid #e4e7ec;border-radius:8px;padding:8px 14px;min-width:120px}
.card .v{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}.card .l{font-size:12px;color:#5b6475}
.note{color:#5b6475;font-size:13px;margin:4px 0}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:4px 30px}
.doc{border:1px solid #e4e7ec;border-radius:8px;padding:10px 14px;margin:10px 0;font-size:15px;line-height:2.05}
.doc .h{font-size:12px;color:#5b6475;line-height:1.4;margin-bottom:2px}
.tk{border-radius:3px;padding:1px 1px;box-shadow:inset 0 0 0 1px rgba(0,0,0,.07)}
.sp{font-style:italic;font-size:12px}
.legend{display:flex;align-items:flex-end;gap:14px;margin:10px 0 4px;font-size:13px}
.bar{position:relative;width:420px;height:16px;border:1px solid #c9ced6;border-radius:3px}
.ticks{position:relative;width:420px;height:16px;font-size:12px;font-variant-numeric:tabular-nums}
.ticks span{position:absolute;transform:translateX(-50%)}
.lat{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
.lc{border:1px solid #e4e7ec;border-radius:8px;padding:8px 10px;min-width:0}
.lc .h{font-size:13px;margin-bottom:4px}.lc .h b{font-size:14px}
.ctx{display:flex;align-items:center;font-size:13px;line-height:1.9;white-space:pre}
.ctx .v{flex:0 0 52px;text-align:right;padding-right:8px;color:#5b6475;font-variant-numeric:tabular-nums}
.ctx .l{flex:1 1 0;display:flex;justify-content:flex-end;overflow:hidden;
 -webkit-mask-image:linear-gradient(to right,transparent,#000 36px);mask-image:linear-gradient(to right,transparent,#000 36px)}
.ctx .r{flex:1 1 0;display:flex;justify-content:flex-start;overflow:hidden;
 -webkit-mask-image:linear-gradient(to left,transparent,#000 36px);mask-image:linear-gradient(to left,transparent,#000 36px)}
.ctx .c{flex:0 0 auto;font-weight:700;outline:2px solid #b4001e;border-radius:3px;min-width:.9em;text-align:center}
.cx{border-radius:3px;padding:0 1px}
.src{font-size:12px;color:#5b6475}
"""


def _fmt(x: Any, digits: int = 4) -> str:
  if isinstance(x, (bool, np.bool_)):
    return str(x)
  if isinstance(x, (int, np.integer)):
    return f"{int(x):,}"
  if isinstance(x, (float, np.floating)):
    return f"{float(x):.{digits}g}"
  return html.escape(str(x))


def _rgb_hex(rgba) -> str:
  return "#%02x%02x%02x" % tuple(int(round(255 * c)) for c in rgba[:3])


def _text_color(rgba) -> str:
  """Black or white, whichever contrasts more with the background (WCAG relative luminance)."""
  lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
  lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
  return "#111" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#fff"


class _Scale:
  """A sequential colour scale for token values, with its HTML legend."""

  def __init__(self, values: np.ndarray, integer: bool):
    import matplotlib

    # The 1-99% range, so one odd token does not wash out the rest; integer ends for counts.
    lo, hi = float(np.quantile(values, 0.01)), float(np.quantile(values, 0.99))
    if integer:
      lo, hi = np.floor(lo), np.ceil(hi)
    if hi - lo < 1e-6:  # e.g. TopK: every token has L0 = k
      lo, hi = (lo - 1, hi + 1) if integer else (lo - 0.5, hi + 0.5)
    self.lo, self.hi, self.integer = lo, hi, integer
    self.cmap = matplotlib.colormaps[TOKEN_CMAP]

  def _rgba(self, v: float):
    t = (min(max(v, self.lo), self.hi) - self.lo) / (self.hi - self.lo)
    return self.cmap(0.06 + 0.84 * t)  # skip the near-white start and the darkest end

  def style(self, v: float) -> str:
    rgba = self._rgba(v)
    return f"background:{_rgb_hex(rgba)};color:{_text_color(rgba)}"

  def legend(self, label: str) -> str:
    stops = ", ".join(f"{_rgb_hex(self._rgba(self.lo + (self.hi - self.lo) * i / 10))} {i * 10}%" for i in range(11))
    if self.integer and self.hi - self.lo <= 12:
      ticks = np.arange(self.lo, self.hi + 1)
    else:
      from matplotlib.ticker import MaxNLocator

      ticks = [t for t in MaxNLocator(7).tick_values(self.lo, self.hi) if self.lo <= t <= self.hi]
    tick_html = "".join(f'<span style="left:{100 * (t - self.lo) / (self.hi - self.lo):.2f}%">{t:.3g}</span>'
                        for t in ticks)
    return (f'<div class="legend"><div><div class="bar" style="background:linear-gradient(to right, {stops})"></div>'
            f'<div class="ticks">{tick_html}</div></div><div>{label}<br><span class="note">values outside '
            f'[{self.lo:.3g}, {self.hi:.3g}] (1st–99th percentile) take the end colours</span></div></div>')


def _token_html(s: str, *, inline_newline: bool) -> tuple[str, str, bool]:
  """(leading space, escaped visible text, newline after) for one display string."""
  lead = ""
  if s.startswith(" ") and len(s) > 1:
    lead, s = " ", s[1:]
  newline = s.endswith("\n") and not inline_newline
  if s == "":
    vis = "∅"
  elif s.strip(" ") == "":
    vis = "␣" * len(s)
  else:
    vis = s.replace("\r", "").replace("\n", "↵").replace("\t", "⇥")
  return lead, html.escape(vis), newline


def _is_special(s: str) -> bool:
  return len(s) > 2 and ((s[0] == "[" and s[-1] == "]") or (s[0] == "<" and s[-1] == ">"))


def _passage_html(main: RunStats, text: Text) -> str:
  """Coloured tokens of a few documents (evenly spaced over the rows used, each from its start)."""
  n = len(main.k_N)
  if text.doc_N is not None:
    doc_N = text.doc_N[:n]
    cut = np.flatnonzero(np.diff(doc_N) != 0) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [n]])
    picks = np.unique(np.linspace(0, len(starts) - 1, min(PASSAGE_DOCS, len(starts))).round().astype(int))
    segments = [(int(starts[i]), int(ends[i])) for i in picks]
  else:
    segments = [(0, n)]
  vals = main.k_N[main.valid_N]
  scale = _Scale(vals, integer=not main.soft)
  parts = []
  for a, b in segments:
    shown = min(b, a + PASSAGE_TOKENS * (1 if text.doc_N is not None else PASSAGE_DOCS))
    if text.doc_N is not None:
      head = (f"document {int(text.doc_N[a])} · positions {int(text.pos_N[a])}–{int(text.pos_N[shown - 1])}"
              f" · rows {a}–{shown - 1}")
    else:
      head = f"rows {a}–{shown - 1} (no doc_index: rows in data order)"
    spans = []
    for row in range(a, shown):
      s = text.show(row)
      lead, vis, newline = _token_html(s, inline_newline=False)
      cls = "tk sp" if _is_special(s) else "tk"
      if main.valid_N[row]:
        kv, l0 = float(main.k_N[row]), int(main.l0_N[row])
        title = f"{s!r} · k̂ {kv:.2f} · L0 {l0}" if main.soft else f"{s!r} · L0 {l0}"
        spans.append(f'{lead}<span class="{cls}" style="{scale.style(kv)}" data-row="{row}" data-k="{kv:.4f}" '
                     f'data-l0="{l0}" title="{html.escape(title)}">{vis}</span>')
      else:
        spans.append(f'{lead}<span class="{cls}" style="background:#ddd;color:#777" data-row="{row}" data-k="nan" data-l0="0" '
                     f'title="{html.escape(repr(s) + " · non-finite row, skipped")}">{vis}</span>')
      if newline:
        spans.append("<br>")
    more = f" · {b - shown} more tokens in this document" if b > shown and text.doc_N is not None else ""
    parts.append(f'<div class="doc"><div class="h">{head}{more}</div>{"".join(spans)}</div>')
  if main.soft:
    label = ("token background = k̂, the number of active latents SoftSAE predicts for the token "
             "(inference keeps the floor(k̂) largest); hover a token for k̂ and the realised L0")
  else:
    label = f"token background = L0, the latents active on the token ({main.arch}); hover a token for the value"
  return scale.legend(label) + "".join(parts)


def _top_rows(main: RunStats, f: int) -> list[tuple[int, float]]:
  """(row, activation) of latent ``f``'s largest activations on the rows used, largest first."""
  return [(int(r), float(v)) for r, v in zip(main.top_row_MF[:, f], main.top_val_MF[:, f]) if v > 0 and r >= 0]


def _contexts(main: RunStats, ds: Dataset, text: Text, latents: list[int], batch_size: int
              ) -> dict[int, list[tuple[int, float, list[tuple[int, float]]]]]:
  """latent -> [(row, activation, [(window row, that latent's activation there), ...]), ...].

  Windows are ±WINDOW rows within the row's document; their activations come from one more
  inference pass over just those rows.
  """
  n_text = len(text.tokens_N)
  plan: dict[int, list[tuple[int, float, list[int]]]] = {}
  need: set[int] = set()
  for f in latents:
    plan[f] = []
    for row, val in _top_rows(main, f):
      win = [r for r in range(max(0, row - WINDOW), min(n_text, row + WINDOW + 1))
             if text.doc_N is None or text.doc_N[r] == text.doc_N[row]]
      plan[f].append((row, val, win))
      need.update(win)
  rows_R = np.array(sorted(need), np.int64)
  act_of: dict[int, np.ndarray] = {}
  x_RD = read_rows(ds, rows_R).astype(np.float32)
  ok_R = np.isfinite(x_RD).all(axis=1)
  acts_RL = main.model.encode(np.where(ok_R[:, None], x_RD, 0.0), batch_size=batch_size)[:, latents]
  acts_RL[~ok_R] = 0.0
  for j, row in enumerate(rows_R):
    act_of[int(row)] = acts_RL[j]
  col = {f: j for j, f in enumerate(latents)}
  return {f: [(row, val, [(w, float(act_of[w][col[f]])) for w in win]) for row, val, win in plan[f]]
          for f in latents}


def _pick_latents(main: RunStats) -> tuple[list[int], set[int]]:
  fire = main.fire_F
  by_freq = [int(f) for f in np.argsort(-fire, kind="stable")[:N_FREQ_LATENTS] if fire[f] > 0]
  by_max = [int(f) for f in np.argsort(-main.max_F, kind="stable") if main.max_F[f] > 0 and int(f) not in by_freq]
  return by_freq + by_max[:N_MAXACT_LATENTS], set(by_max[:N_MAXACT_LATENTS])


def _context_line(text: Text, f: int, row: int, val: float, win: list[tuple[int, float]], vmax: float, cmap) -> str:
  """One context: the value, then the window with the activating token outlined and centred; every
  token is shaded by latent ``f``'s activation on it."""
  pieces: dict[str, list[str]] = {"l": [], "c": [], "r": []}
  for w, a in win:
    s = text.show(w)
    lead, vis, _ = _token_html(s, inline_newline=True)
    side = "c" if w == row else ("l" if w < row else "r")
    style = ""
    if a > 0:
      rgba = cmap(0.1 + 0.45 * min(a / max(vmax, 1e-12), 1.0))  # light enough for dark text
      style = f' style="background:{_rgb_hex(rgba)};color:{_text_color(rgba)}"'
    span = f'<span class="cx"{style} title="{html.escape(f"{s!r} · latent {f} = {a:.3g}")}">{vis}</span>'
    # The centre token's leading space goes at the end of the left part, so the centre column stays tight.
    pieces[side].append(span if side == "c" else lead + span)
    if side == "c":
      pieces["l"].append(lead)
  return (f'<div class="ctx" title="row {row}"><span class="v">{val:.3g}</span>'
          f'<span class="l"><span>{"".join(pieces["l"])}</span></span><span class="c">{pieces["c"][0]}</span>'
          f'<span class="r"><span>{"".join(pieces["r"])}</span></span></div>')


def _latents_html(main: RunStats, ds: Dataset, text: Text | None, batch_size: int) -> str:
  latents, by_max = _pick_latents(main)
  if not latents:
    return '<p class="note">No latent fired on these rows.</p>'
  ctx = _contexts(main, ds, text, latents, batch_size) if text is not None else None
  import matplotlib

  cmap = matplotlib.colormaps["Oranges"]
  cards = []
  for f in latents:
    why = "largest activation" if f in by_max else "firing frequency"
    head = (f'<div class="h"><b>latent {f}</b> · fires on {100 * main.freq_F[f]:.2f}% of tokens · '
            f'max {main.max_F[f]:.3g} · <span class="src">shown for its {why}</span></div>')
    if ctx is None:
      lines = [f'<div class="ctx" title="row {row}"><span class="v">{val:.3g}</span><span>row {row}</span></div>'
               for row, val in _top_rows(main, f)]
    else:
      lines = [_context_line(text, f, row, val, win, float(main.max_F[f]), cmap) for row, val, win in ctx[f]]
    cards.append(f'<div class="lc">{head}{"".join(lines)}</div>')
  intro = (f'<p class="note">The {N_FREQ_LATENTS} latents that fire most often and up to {N_MAXACT_LATENTS} more with the '
           f"largest activations; for each, the {N_CONTEXTS} tokens where it is largest (value on the left, token "
           f"outlined) with ±{WINDOW} tokens of the same document, shaded by the same latent's activation.</p>")
  return intro + f'<div class="lat">{"".join(cards)}</div>'


def _summary(r: RunStats) -> dict[str, Any]:
  v = r.valid_N
  l0 = r.l0_N[v].astype(np.float64)
  out = {"fvu": r.fvu, "l0_mean": float(l0.mean()), "l0_std": float(l0.std()),
         "dead": float(np.mean(r.fire_F == 0)), "dense": float(np.mean(r.freq_F > DENSE_FREQ)),
         "relerr_median": float(np.median(r.relerr_N[v]))}
  if r.soft:
    kh = r.k_N[v]
    out.update({"k_mean": float(kh.mean()), "k_std": float(kh.std()), "k_min": float(kh.min()),
                "k_max": float(kh.max()), "k_q05": float(np.quantile(kh, 0.05)),
                "k_q50": float(np.quantile(kh, 0.5)), "k_q95": float(np.quantile(kh, 0.95))})
  return out


def _header_html(main: RunStats, runs: list[RunStats], ds: Dataset, n_rows: int) -> str:
  cfg = main.model.cfg
  s = _summary(main)
  cards = [("FVU", f"{s['fvu']:.4f}", "1 − explained variance"),
           ("mean L0", f"{s['l0_mean']:.2f}", f"std {s['l0_std']:.2f}")]
  if main.soft:
    cards.append(("mean k̂", f"{s['k_mean']:.2f}", f"std {s['k_std']:.2f}"))
    cards.append(("k̂ 5–50–95%", f"{s['k_q05']:.2f} · {s['k_q50']:.2f} · {s['k_q95']:.2f}",
                  f"min {s['k_min']:.2f}, max {s['k_max']:.2f}"))
  cards += [("dead", f"{100 * s['dead']:.1f}%", "latents never active here"),
            ("dense", f"{100 * s['dense']:.1f}%", f"active on > {DENSE_FREQ:.0%} of tokens")]
  card_html = "".join(f'<div class="card"><div class="l">{html.escape(a)}</div><div class="v">{html.escape(b)}</div>'
                      f'<div class="l">{html.escape(c)}</div></div>' for a, b, c in cards)
  run_rows = [("arch", cfg.sae.arch), ("latents F", cfg.sae.F), ("d_model D", cfg.sae.d_in),
              ("k (config)", cfg.sae.k)]
  if main.soft:
    run_rows.append(("k_max (k̂ bound)", cfg.sae.kmax))
  run_rows += [("checkpoint step", f"{main.model.step:,} of {cfg.train.steps:,}"),
               ("batch size", cfg.train.batch_size), ("norm factor", main.model.norm_factor),
               ("workdir", os.path.abspath(main.workdir))]
  src = ds.manifest.get("source") or {}
  data_rows = [("data", os.path.abspath(ds.path)),
               ("rows used", f"{main.n_valid:,} of {ds.n_rows:,} (the first {n_rows:,} in data order"
                             + (f"; {n_rows - main.n_valid} non-finite skipped)" if main.n_valid < n_rows else ")")),
               ("dtype", ds.dtype)]
  data_rows += [(f"source.{k}", v if not isinstance(v, (dict, list)) else json.dumps(v)) for k, v in src.items()]
  if not src:
    data_rows.append(("source", "(no source block in the manifest)"))

  def table(rows):
    return "<table>" + "".join(f"<tr><th>{html.escape(str(a))}</th><td>{_fmt(b)}</td></tr>" for a, b in rows) + "</table>"

  out = f'<div class="cards">{card_html}</div><div class="cols"><div>{table(run_rows)}</div><div>{table(data_rows)}</div></div>'
  if len(runs) > 1:
    head = ("<tr><th>run</th><th>arch</th><th>k</th><th>step</th><th>FVU</th><th>mean L0</th><th>k̂ mean ± std</th>"
            "<th>median rel. error</th><th>dead</th><th>dense</th></tr>")
    body = []
    for r in runs:
      rs = _summary(r)
      kh = f"{rs['k_mean']:.2f} ± {rs['k_std']:.2f}" if r.soft else "–"
      body.append(f"<tr><td>{html.escape(r.name)}</td><td>{r.arch}</td><td class=n>{r.model.cfg.sae.k}</td>"
                  f"<td class=n>{r.model.step:,}</td><td class=n>{rs['fvu']:.4f}</td><td class=n>{rs['l0_mean']:.2f}</td>"
                  f"<td class=n>{kh}</td><td class=n>{rs['relerr_median']:.3g}</td>"
                  f"<td class=n>{100 * rs['dead']:.1f}%</td><td class=n>{100 * rs['dense']:.1f}%</td></tr>")
    out += f'<p class="note">All runs evaluated on the same rows:</p><table class="runs">{head}{"".join(body)}</table>'
  return out


# --------------------------------------------------------------------------- downstream evaluations


EVAL_FILES = (("fidelity.json", "softsae fidelity --workdir WORKDIR ..."),
              ("probe.json", "softsae probe --workdir WORKDIR --data LABELLED_ACTS"),
              ("eval.json", "softsae eval --workdir WORKDIR --data ACTS --compare TOPK_RUN --out WORKDIR/eval.json"))
"""The result files the report looks for in the workdir, and the command that writes each."""

_FIDELITY_KEYS = {
    "causal": ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "ce_loss_score", "ce_loss_score_mean", "kl_sae", "kl_zero",
               "kl_mean", "kl_div_score", "kl_div_score_mean", "khat_kl_spearman", "l0_kl_spearman"),
    "encoder": ("cos_sae", "cos_zero", "cos_mean", "emb_score_zero", "emb_score_mean", "sim_spearman_sae",
                "sim_spearman_zero", "sim_spearman_mean", "retrieval_at_1_sae", "retrieval_at_1_mean"),
    "vision": ("kl_sae", "kl_zero", "kl_mean", "kl_div_score", "top1_agree_sae", "top1_agree_zero", "top1_agree_mean"),
}


def _read_eval(workdir: str, name: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, name)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, ValueError):
    return None
  return obj if isinstance(obj, dict) else None


def _kv_table(rows: list[tuple[str, Any]]) -> str:
  return "<table>" + "".join(f"<tr><th>{html.escape(str(a))}</th><td>{_fmt(b)}</td></tr>" for a, b in rows) + "</table>"


def _evals_html(workdir: str) -> str:
  """The downstream-evaluation section: one block per result file found (:data:`EVAL_FILES`)."""
  blocks = []
  fid = _read_eval(workdir, "fidelity.json")
  if fid is not None:
    meta = fid.get("meta") or {}
    keys = _FIDELITY_KEYS.get(meta.get("kind"), ())
    rows = [(k, fid[k]) for k in keys if k in fid] + [(k, fid[k]) for k in ("n_docs", "n_windows", "n_tokens") if k in fid]
    where = f"{meta.get('model', '?')} block {meta.get('layer', '?')} ({meta.get('kind', '?')})"
    blocks.append(f"<h3>Spliced into the model: fidelity.json</h3><p class=\"note\">{html.escape(where)}; clean vs "
                  "SAE, zero- and mean-ablated runs. Command: <code>" + html.escape(meta.get("command", "")) +
                  "</code></p>" + _kv_table(rows))
  pr = _read_eval(workdir, "probe.json")
  if pr is not None and isinstance(pr.get("sae_acc"), dict):
    ks = sorted(pr["sae_acc"], key=int)
    head = "<tr><th>k</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in ks) + "</tr>"
    body = "".join(f"<tr><td>{label}</td>" + "".join(f"<td class=n>{_fmt(pr[key].get(k))}</td>" for k in ks) + "</tr>"
                   for label, key in (("SAE latents", "sae_acc"), ("raw dimensions", "raw_acc")))
    tpp = ", ".join(f"N={n}: {_fmt(v)}" for n, v in sorted((pr.get("tpp") or {}).items(), key=lambda kv: int(kv[0])))
    blocks.append(f"<h3>Sparse probing and TPP: probe.json</h3><p class=\"note\">{len(pr.get('classes', []))} classes "
                  f"({html.escape(', '.join(pr.get('classes', [])))}), {pr.get('n_docs')} documents; mean balanced test "
                  f"accuracy (chance 0.5). Command: <code>{html.escape((pr.get('meta') or {}).get('command', ''))}"
                  f"</code></p><table class=\"runs\">{head}{body}</table>"
                  + _kv_table([("full raw probe", pr.get("full_acc")), ("TPP", tpp or "–")]))
  ev = _read_eval(workdir, "eval.json")
  if ev is not None and isinstance(ev.get("compare"), dict):
    c = ev["compare"]
    rows = [(k, v) for k, v in c.items() if not isinstance(v, (dict, list))]
    blocks.append("<h3>k̂ against a fixed-k run, the norm and a local dimension: eval.json</h3>" + _kv_table(rows))
  if not blocks:
    names = "; ".join(f"WORKDIR/{n} ({c})" for n, c in EVAL_FILES)
    return f'<p class="note">No downstream evaluation next to this run. The report shows: {html.escape(names)}.</p>'
  return "".join(blocks)


# --------------------------------------------------------------------------- the report


def _run_names(workdirs: Sequence[str]) -> list[str]:
  names = [os.path.basename(os.path.normpath(os.path.abspath(w))) or w for w in workdirs]
  return [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]


def build_report(workdir: str, data_dir: str, out_path: str | None = None, compare: Sequence[str] = (),
                 max_rows: int = DEFAULT_MAX_ROWS, *, batch_size: int = 1024, skip_nonfinite: bool | None = None,
                 mesh=None) -> str:
  """Writes the HTML report of the run in ``workdir`` on ``data_dir`` and returns its path.

  Args:
    workdir: a workdir written by ``softsae train``.
    data_dir: a ``softsae-activations/1`` directory with the run's d_model.
    out_path: the HTML file to write; None means ``WORKDIR/report.html``.
    compare: other workdirs, evaluated on the same rows and overlaid.
    max_rows: the report uses the first ``max_rows`` rows in data order.
    batch_size: rows per inference call.
    skip_nonfinite: mask NaN/Inf rows instead of stopping; None uses the run's ``data.skip_nonfinite``.
    mesh: the inference mesh (``--set mesh.model=4`` splits the latents over 4 devices); None: the default.

  Returns:
    The path written.

  Raises:
    CheckpointError: a workdir is missing or holds no checkpoint.
    DataError: the data is invalid or its width differs from a run's d_model.

  Examples:
    >>> build_report("runs/soft", "acts", compare=["runs/topk"])  # doctest: +SKIP
    'runs/soft/report.html'
  """
  if max_rows < 1:
    raise DataError(f"max_rows must be >= 1, got {max_rows}")
  if batch_size < 1:
    raise DataError(f"batch_size must be >= 1, got {batch_size}")
  main_model = load(workdir, mesh=mesh)
  ds = open_dataset(data_dir, expect_d_model=main_model.d_in)
  others = []
  for w in compare:
    m = load(w, mesh=mesh)
    if m.d_in != ds.d_model:
      raise DataError(f"{data_dir}: d_model is {ds.d_model} but the --compare run {w} was trained on d_model={m.d_in}")
    others.append((w, m))
  n_rows = min(max_rows, ds.n_rows)
  batch_size = min(batch_size, n_rows)
  skip = main_model.cfg.data.skip_nonfinite if skip_nonfinite is None else skip_nonfinite
  names = _run_names([workdir, *compare])
  main = _scan(names[0], workdir, main_model, ds, n_rows, batch_size, skip, keep_top=True)
  runs = [main] + [_scan(n, w, m, ds, n_rows, batch_size, skip, keep_top=False)
                   for n, (w, m) in zip(names[1:], others)]
  text, why_no_text = _load_text(ds, min(ds.n_rows, n_rows + WINDOW))

  what = "k̂" if main.soft else "L0"
  sections = []
  sections.append(("summary", "Run and evaluation", _header_html(main, runs, ds, n_rows)))
  curves = _plot_curves(runs)
  sections.append(("curves", "Training curves",
                   curves or '<p class="note">No metrics.jsonl in the workdir: no training curves.</p>'))
  hist_note = ("SoftSAE predicts a real k̂ per token; at inference it keeps the floor(k̂) largest ReLU activations, "
               "so the realised L0 is floor(k̂) or less (when fewer latents are positive)." if main.soft else
               f"{main.arch} has no per-token k̂; the realised L0 is shown.")
  sections.append(("khist", f"Per-token {what} distribution",
                   f'<p class="note">{hist_note}</p>{_plot_k_hist(main, runs[1:])}'))
  img, note = _plot_k_vs_err(main)
  sections.append(("kerr", f"{what} against reconstruction error", f'{img}<p class="note">{note}</p>'))
  if text is not None:
    sections.append(("text", f"Per-token {what} over text", _passage_html(main, text)))
  else:
    sections.append(("text", f"Per-token {what} over text", f'<p class="note">{html.escape(why_no_text)}</p>'))
  lat_intro = "" if text is not None else f'<p class="note">{html.escape(why_no_text)} Top rows are listed by index.</p>'
  sections.append(("latents", "Top-activating contexts", lat_intro + _latents_html(main, ds, text, batch_size)))
  s = _summary(main)
  dead_note = (f'<p class="note">On these {main.n_valid:,} tokens: {100 * s["dead"]:.1f}% of the {main.model.cfg.sae.F} '
               f'latents never fire (dead), {100 * s["dense"]:.1f}% fire on more than {DENSE_FREQ:.0%} of tokens (dense).')
  if main.metrics and "dead_frac" in main.metrics[-1]:
    dead_note += (f" Training's last logged dead fraction (no activation within sae.dead_tokens="
                  f"{main.model.cfg.dead_tokens:,} tokens): {100 * main.metrics[-1]['dead_frac']:.1f}%.")
  sections.append(("dead", "Dead and dense latents", dead_note + "</p>" + _plot_freq(runs)))
  sections.append(("evals", "Downstream evaluations", _evals_html(workdir)))

  title = f"softsae report · {main.name} · {main.arch} F={main.model.cfg.sae.F} k={main.model.cfg.sae.k}"
  nav = "".join(f'<a href="#{sid}">{i + 1}. {html.escape(t)}</a>' for i, (sid, t, _) in enumerate(sections))
  body = "".join(f'<section id="{sid}"><h2>{i + 1}. {html.escape(t)}</h2>{content}</section>'
                 for i, (sid, t, content) in enumerate(sections))
  stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
          f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body><main>'
          f'<h1>{html.escape(title)}</h1><div class="sub">{html.escape(os.path.abspath(workdir))} on '
          f'{html.escape(os.path.abspath(data_dir))} · generated {stamp} by softsae report</div><nav>{nav}</nav>'
          f'{body}</main></body></html>\n')
  out_path = out_path or os.path.join(workdir, "report.html")
  parent = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(parent, exist_ok=True)
  tmp = out_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(page)
  os.replace(tmp, out_path)
  return out_path


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the report flags to ``parser`` (the ``softsae report`` subparser or a standalone one).

  Args:
    parser: an ``argparse.ArgumentParser``; its description is set if still empty.

  Examples:
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> a = p.parse_args(["--workdir", "w", "--data", "d", "--compare", "t1", "t2", "--max-rows", "500"])
    >>> a.compare, a.max_rows, a.out
    (['t1', 't2'], 500, None)
  """
  if not parser.description:
    parser.description = ("Write one self-contained HTML page about a trained SAE: training curves, the per-token "
                          "k-hat/L0 distribution and its relation to the reconstruction error, text coloured by "
                          "k-hat, top-activating contexts, dead and dense latents.")
  parser.add_argument("--workdir", required=True, help="a workdir written by `softsae train`")
  parser.add_argument("--data", required=True, help="a softsae-activations/1 directory (the run's d_model)")
  parser.add_argument("--out", help="the HTML file to write (default: WORKDIR/report.html)")
  parser.add_argument("--compare", nargs="+", action="extend", default=[], metavar="WORKDIR",
                      help="other workdirs to evaluate on the same rows and overlay (e.g. a TopK run at the same k)")
  parser.add_argument("--max-rows", type=positive_int, default=DEFAULT_MAX_ROWS, metavar="N",
                      help=f"use the first N rows of the data, in order (default: {DEFAULT_MAX_ROWS})")
  parser.add_argument("--batch-size", type=positive_int, default=1024, metavar="B", help="rows per inference call (default: 1024)")
  parser.add_argument("--skip-nonfinite", dest="skip_nonfinite", action="store_true", default=None,
                      help="mask NaN/Inf rows instead of stopping (default: the run's data.skip_nonfinite)")
  from softsae_jax.commands import add_mesh_argument

  add_mesh_argument(parser)


def run(args: argparse.Namespace) -> int:
  """Builds the report (``softsae report``) and prints the path written on stderr.

  Args:
    args: flags parsed by a parser set up with :func:`add_arguments`.

  Returns:
    The exit code, 0.

  Raises:
    CheckpointError, DataError: as :func:`build_report`; the CLI prints them as one ``error:`` line.
  """
  from softsae_jax.evaluate import mesh_from_overrides

  path = build_report(args.workdir, args.data, args.out, args.compare, max_rows=args.max_rows,
                      batch_size=args.batch_size, skip_nonfinite=args.skip_nonfinite,
                      mesh=mesh_from_overrides(args.set))
  print(f"wrote {path}", file=sys.stderr)
  return 0
