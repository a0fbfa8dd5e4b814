"""The same mixture experiment as benchmarks/btk_diag.py, with dictionary_learning's own trainers (PyTorch).

An independent implementation check: if the reference BatchTopK/Matryoshka trainers (saprmarks/
dictionary_learning, ``trainers/batch_top_k.py`` etc.) show the same gap to TopK on the same data and
schedule, the gap is not a bug of this library. Needs torch, einops and a checkout of dictionary_learning
(``--dl-path``: the directory that holds the ``dictionary_learning`` package; its ``__init__.py`` files
import optional dependencies, so empty them in a scratch copy, see the docs/results.md section).

    PYTHONPATH=.:$DL_DIR python benchmarks/btk_reference.py --archs topk,batchtopk --k 6   # DL_DIR: that scratch copy

The data, its normalisation (one scalar, sqrt(mean ||x||^2)), lr (2e-4/sqrt(F/2^14)), warm-up (5%),
decay (from 80%), batch (512), steps (2800), threshold start (5%) and epoch shuffling are those of
btk_diag.py; k is not annealed (``k_anneal_steps=None``); AuxK uses the reference's 10 M-token dead
threshold (never active here).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from softsae_jax.bench.metrics import dictionary_recovery
from softsae_jax.bench.protocols import BENCH_PRESETS


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--archs", default="topk,batchtopk,matryoshka")
  ap.add_argument("--k", type=int, default=6)
  ap.add_argument("--steps", type=int, default=2800)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--lr", type=float)
  ap.add_argument("--data", action="append", default=[], help="mixture generator kwarg key=value (json value)")
  a = ap.parse_args()

  import torch as t
  t.set_num_threads(2)
  from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
  from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
  from dictionary_learning.trainers.top_k import TopKTrainer

  from benchmarks.btk_diag import make_data

  dkw = {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in a.data}
  train_set, test_set = make_data("small", a.seed, **dkw)
  p = BENCH_PRESETS["small"]
  x_ND = train_set.x_ND
  nf = float(np.sqrt(np.mean(np.sum(x_ND.astype(np.float64) ** 2, axis=1))))
  xt = t.tensor(x_ND / nf, dtype=t.float32)
  xe = t.tensor(test_set.x_ND / nf, dtype=t.float32)
  true_k = test_set.true_k_N
  b, steps, f, d = p["batch_size"], a.steps, p["n_latents"], x_ND.shape[1]
  common = dict(steps=steps, activation_dim=d, dict_size=f, k=a.k, layer=0, lm_name="synthetic", lr=a.lr,
                warmup_steps=int(round(0.05 * steps)), decay_start=int(round(0.8 * steps)), seed=a.seed,
                device="cpu")
  for arch in a.archs.split(","):
    if arch == "topk":
      tr = TopKTrainer(**common)
    elif arch == "batchtopk":
      tr = BatchTopKTrainer(**common, threshold_start_step=int(round(0.05 * steps)))
    else:
      tr = MatryoshkaBatchTopKTrainer(**common, threshold_start_step=int(round(0.05 * steps)),
                                      group_fractions=[1 / 32, 1 / 16, 1 / 8, 1 / 4, 17 / 32])
    rng = np.random.default_rng(a.seed)
    per_epoch = len(xt) // b
    t0 = time.time()
    for step in range(steps):
      e, i = divmod(step, per_epoch)
      if i == 0:
        order = t.tensor(rng.permutation(len(xt)))
      tr.update(step, xt[order[i * b:(i + 1) * b]])
    secs = time.time() - t0
    ae = tr.ae
    w_dec = (ae.decoder.weight.T if hasattr(ae, "decoder") else ae.W_dec).detach().numpy()
    rec = dictionary_recovery(test_set.atoms_AD, w_dec)
    line = {"impl": "dictionary_learning", "arch": arch, "k": a.k, "secs": round(secs, 1),
            "recovery": round(rec["mean_max_cos"], 3), "frac>0.9": round(rec["frac_recovered"], 3)}
    with t.no_grad():
      rules = {"rowtopk": None} if arch == "topk" else {"threshold": True, "batchtopk": False}
      for rule, use_thr in rules.items():
        if arch == "topk":
          f_acts = ae.encode(xe)
        else:
          nb = len(xe) // b
          f_acts = (ae.encode(xe, use_threshold=True) if use_thr else
                    t.cat([ae.encode(xe[j * b:(j + 1) * b], use_threshold=False) for j in range(nb)]))
        xs = xe[:len(f_acts)]
        r = ae.decode(f_acts)
        fvu = float(((xs - r) ** 2).sum() / ((xs - xs.mean(0)) ** 2).sum())
        l0_B = (f_acts > 0).sum(1).numpy()
        line[rule] = {"fvu": round(fvu, 4), "l0": round(float(l0_B.mean()), 2),
                      "l0_by_k": {int(c): round(float(l0_B[true_k[:len(l0_B)] == c].mean()), 2)
                                  for c in np.unique(true_k)}}
      if arch != "topk":
        line["thr_learned"] = round(float(ae.threshold), 4)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
