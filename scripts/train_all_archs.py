"""Trains every arch with the library defaults on a synthetic set and prints FVU first -> last -> eval.

The acceptance check of the training CLI: on 100k rows of d=64 sparse-mixture data, `softsae train`
with no config works for every arch (softsae, topk, batchtopk, relu, matryoshka, jumprelu), and FVU falls.

Run:  python scripts/train_all_archs.py [--rows 100000] [--d 64] [--out runs/all_archs] [--set key=value ...]
Each run is the real CLI (`softsae train` / `softsae eval`) with only --data/--workdir (and --set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from softsae_jax import synthetic

from softsae_jax.config import ARCHS  # noqa: E402  every arch of the library


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=100_000)
  ap.add_argument("--d", type=int, default=64)
  ap.add_argument("--out", default="runs/all_archs")
  ap.add_argument("--archs", default=",".join(ARCHS))
  ap.add_argument("--set", action="append", default=[])
  a = ap.parse_args()
  data = os.path.join(a.out, "data")
  if not os.path.exists(os.path.join(data, "manifest.json")):
    mix = synthetic.make_mixture(a.rows, a.d, 8 * a.d, k_values=(4, 8, 16, 32), seed=0)
    synthetic.write_dataset(data, mix)
  rows = []
  for arch in a.archs.split(","):
    wd = os.path.join(a.out, arch)
    sets = [x for s in [f"sae.arch={arch}", *a.set] for x in ("--set", s)]
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "softsae_jax.cli", "train", "--data", data, "--workdir", wd,
                        "--quiet", *sets])
    if r.returncode:
      return r.returncode
    dt = time.time() - t
    out = os.path.join(wd, "eval.json")
    subprocess.run([sys.executable, "-m", "softsae_jax.cli", "eval", "--data", data, "--workdir", wd, "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    ev = json.load(open(out))
    m = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    rows.append((arch, m[0]["step"], m[0]["fvu"], m[-1]["step"], m[-1]["fvu"], ev["fvu"], ev["l0_mean"], dt))
  print(f"{'arch':11s} {'fvu@first':>10s} {'fvu@last':>9s} {'eval fvu':>9s} {'eval L0':>8s} {'train s':>8s}")
  for arch, s0, f0, s1, f1, fe, l0, dt in rows:
    print(f"{arch:11s} {f0:10.4f} {f1:9.4f} {fe:9.4f} {l0:8.2f} {dt:8.0f}   (steps {s0} -> {s1})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
