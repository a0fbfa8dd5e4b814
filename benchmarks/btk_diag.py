"""Diagnose BatchTopK / Matryoshka on the synthetic mixture (docs/results.md, "BatchTopK on the mixture").

Trains TopK, BatchTopK and Matryoshka in memory with the library's own train step (the bench's
settings: preset ``small`` mixture, F = 384, batch 512) and evaluates every model on the held-out set
with three inference rules: the learned threshold (the library's rule), batch top-k at the training k
(over batches of the training batch size), and per-row top-k. Also prints the dictionary recovery
(the bench's metric), how many learned atoms match a true atom, and dead / dense latents.

    PYTHONPATH=. python benchmarks/btk_diag.py --archs topk,batchtopk --k 6 --steps 2800
    PYTHONPATH=. python benchmarks/btk_diag.py --archs batchtopk --k 6 --set sae.dead_tokens=20000

``--set`` overrides config fields for every model (``section.key=value``; e.g. the authors' k anneal
of the baselines: ``--set train.k_anneal_baselines=true``). Deterministic given
``--seed``. This is an in-memory copy of the trainer's loop (epoch shuffles by numpy, not grain), so
numbers differ from ``softsae bench synthetic`` in the last digits, not in kind.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from softsae_jax import archs, synthetic
from softsae_jax.bench.metrics import atom_cosines, dictionary_recovery
from softsae_jax.bench.protocols import BENCH_PRESETS
from softsae_jax.config import Config, apply_overrides
from softsae_jax.optim import make_optimizer
from softsae_jax.sae import batch_topk, decode, pre_acts
from softsae_jax.train import geometric_median, init_train_state, train_step


def make_data(preset: str, seed: int, **kw):
  spec = dict(BENCH_PRESETS[preset]["data"]["mixture"])
  spec.update(kw)
  return synthetic.make_mixture_pair(**spec, seed=seed)


def probe(state, cfg: Config, probe_x, probe_k, atoms_AD, k: int):
  """On a fixed held-out batch: dictionary recovery, and each true-k class's mean L0 under the arch's
  training selection (per-row top-k for topk, batch top-k otherwise)."""
  x = jnp.asarray(probe_x / float(state.norm_factor), jnp.float32)
  pre = pre_acts(state.params, x, cfg.sae)
  if cfg.sae.arch == "topk":
    l0 = np.full(len(probe_x), float(k))
  else:
    l0 = np.asarray((batch_topk(pre, k) > 0).sum(1))
  rec = dictionary_recovery(atoms_AD, np.asarray(state.params.w_dec))["mean_max_cos"]
  return round(rec, 3), {int(c): round(float(l0[probe_k == c].mean()), 2) for c in np.unique(probe_k)}


def train(cfg: Config, x_ND: np.ndarray, log_every: int = 0, probe_fn=None):
  """The trainer's loop in memory; returns the final state and the metric history."""
  nf = float(np.sqrt(np.mean(np.sum(x_ND.astype(np.float64) ** 2, axis=1))))
  b = cfg.train.batch_size
  rng = np.random.default_rng(cfg.train.seed)
  n = len(x_ND)
  per_epoch = n // b
  order = None
  tx = make_optimizer(cfg)
  step_fn = jax.jit(lambda s, x, v: train_step(s, x, v, cfg=cfg, tx=tx), donate_argnums=0)
  hist = []
  state = None
  for step in range(cfg.train.steps):
    e, i = divmod(step, per_epoch)
    if i == 0:
      order = rng.permutation(n)
    xb = x_ND[order[i * b:(i + 1) * b]]
    if state is None:
      state = init_train_state(jax.random.key(cfg.train.seed), cfg, tx,
                               b_dec_D=geometric_median(xb.astype(np.float64) / nf), norm_factor=nf)
    state, m = step_fn(state, jnp.asarray(xb), jnp.ones((b,), bool))
    if log_every and (step % log_every == 0 or step == cfg.train.steps - 1):
      hist.append({"probe": probe_fn(state) if probe_fn else None, "step": step, "fvu": float(m.fvu), "l0": float(m.l0_mean), "dead": float(m.dead_frac),
                   "aux": float(m.aux_loss), "thr": None if state.arch_state is None else float(state.arch_state)})
  return state, hist


def select_by_norm() -> None:
  """Makes BatchTopK's and Matryoshka's training selection rank ``pre / ||x - b_dec||`` instead of ``pre``
  (the kept values are still ``pre``): the batch budget is then shared out by how strongly a latent
  fires relative to its row's norm, not by the row's norm. A diagnostic, not a method of the library;
  the learned threshold is meaningless then (it tracks the smallest kept ``pre``)."""
  from softsae_jax import losses
  from softsae_jax.archs import Terms, _count, _dense_terms

  def select(params, x_BD, cfg):
    pre_BF = pre_acts(params, x_BD, cfg.sae)
    norm_B1 = jnp.linalg.norm(x_BD - params.b_dec[None, :], axis=1, keepdims=True)
    score_BF = jax.lax.stop_gradient(pre_BF / jnp.maximum(norm_B1, 1e-6))
    return pre_BF, jnp.where(batch_topk(score_BF, cfg.sae.k) > 0, pre_BF, 0.0)

  def btk_terms(params, x_BD, valid_B, sched, cfg, mesh):
    pre_BF, acts_BF = select(params, x_BD, cfg)
    return _dense_terms(params, x_BD, valid_B, acts_BF, pre_BF, cfg.sae)

  def mat_terms(params, x_BD, valid_B, sched, cfg, mesh):
    pre_BF, acts_BF = select(params, x_BD, cfg)
    main, recon_BD = losses.matryoshka_loss(params, x_BD, acts_BF, cfg.sae.group_sizes(), valid_B)
    return Terms(recon_BD, acts_BF, pre_BF, _count(acts_BF), main, jnp.zeros((), jnp.float32))

  archs.ARCHS["batchtopk"] = archs.ARCHS["batchtopk"]._replace(train_terms=btk_terms)
  archs.ARCHS["matryoshka"] = archs.ARCHS["matryoshka"]._replace(train_terms=mat_terms)


def fvu_np(x, r):
  return float(np.sum((x - r) ** 2) / np.sum((x - x.mean(0)) ** 2))


def evaluate(state, cfg: Config, x_ND: np.ndarray, batch: int, k: int):
  """FVU / L0 on normalised held-out rows with each inference rule that applies."""
  sae = cfg.sae
  p = state.params
  x = jnp.asarray(x_ND / float(state.norm_factor), jnp.float32)
  pre = pre_acts(p, x, sae)
  out = {}

  def rec(name, acts):
    r = np.asarray(decode(p, acts, sae))
    l0 = np.asarray((acts > 0).sum(1))
    out[name] = {"fvu": fvu_np(np.asarray(x), r), "l0": float(l0.mean()), "l0_B": l0,
                 "fired_F": np.asarray((acts > 0).any(0)), "freq_F": np.asarray((acts > 0).mean(0))}

  vals, idx = jax.lax.top_k(pre, k)
  rec("rowtopk", jnp.zeros_like(pre).at[jnp.arange(pre.shape[0])[:, None], idx].set(vals))
  if sae.arch in ("batchtopk", "matryoshka"):
    thr = float(state.arch_state)
    rec("threshold", jnp.where(pre > thr, pre, 0.0))
    nb = x.shape[0] // batch
    acts = jnp.concatenate([batch_topk(pre[i * batch:(i + 1) * batch], k) for i in range(nb)])
    pre_c = pre[:nb * batch]
    out_b = {}
    r = np.asarray(decode(p, acts, sae))
    l0 = np.asarray((acts > 0).sum(1))
    out_b = {"fvu": fvu_np(np.asarray(x[:nb * batch]), r), "l0": float(l0.mean()), "l0_B": l0,
             "fired_F": np.asarray((acts > 0).any(0)), "freq_F": np.asarray((acts > 0).mean(0))}
    out["batchtopk"] = out_b
    out["_thr"] = thr
    # The threshold that gives the same L0 as batch top-k on these rows (the "right" threshold).
    flat = np.sort(np.asarray(pre_c).ravel())[::-1]
    out["_thr_batch"] = float(flat[k * pre_c.shape[0] - 1])
  return out


def recovery_detail(atoms_AD, w_FD):
  cos_AF = atom_cosines(atoms_AD, w_FD)
  rec = dictionary_recovery(atoms_AD, w_FD)
  best_F = cos_AF.max(axis=0)  # each learned atom's best true match
  return {**rec, "learned_matching_0.9": int((best_F > 0.9).sum()),
          "true_matched_by_distinct": int(len(set(cos_AF.argmax(1)[cos_AF.max(1) > 0.9].tolist())))}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--archs", default="topk,batchtopk,matryoshka")
  ap.add_argument("--k", type=int, default=6)
  ap.add_argument("--steps", type=int, default=2800)
  ap.add_argument("--preset", default="small")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--data", action="append", default=[], help="mixture generator kwarg key=value (json value)")
  ap.add_argument("--log-every", type=int, default=0)
  ap.add_argument("--select-by-norm", action="store_true", help="batchtopk, matryoshka: rank pre / ||x - b_dec|| (diagnostic)")
  ap.add_argument("--json", help="write the summary here")
  a = ap.parse_args()
  dkw = {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in a.data}
  if a.select_by_norm:
    select_by_norm()
  train_set, test_set = make_data(a.preset, a.seed, **dkw)
  p = BENCH_PRESETS[a.preset]
  true_k = test_set.true_k_N
  summary = []
  for arch in a.archs.split(","):
    cfg = apply_overrides(Config(), [f"sae.arch={arch}", f"sae.k={a.k}", f"sae.n_latents={p['n_latents']}",
                                     f"train.steps={a.steps}", f"train.batch_size={p['batch_size']}",
                                     f"train.seed={a.seed}"] + a.set).resolve(train_set.x_ND.shape[1])
    t0 = time.time()
    k_target = a.k
    state, hist = train(cfg, train_set.x_ND, a.log_every,
                        lambda st, cfg=cfg: probe(st, cfg, test_set.x_ND[:p["batch_size"]], true_k[:p["batch_size"]],
                                                  test_set.atoms_AD, k_target))
    secs = time.time() - t0
    ev = evaluate(state, cfg, test_set.x_ND, p["batch_size"], a.k)
    rec = recovery_detail(test_set.atoms_AD, np.asarray(state.params.w_dec))
    for h in hist:
      print(f"  {arch} step {h['step']}: fvu {h['fvu']:.4f} l0 {h['l0']:.2f} dead {h['dead']:.3f} "
            f"aux {h['aux']:.4f} thr {h['thr']} recovery, L0 by true k {h['probe']}")
    line = {"arch": arch, "k": a.k, "secs": round(secs, 1), "recovery": round(rec["mean_max_cos"], 3),
            "frac>0.9": round(rec["frac_recovered"], 3), "learned>0.9": rec["learned_matching_0.9"]}
    for rule in ("threshold", "batchtopk", "rowtopk"):
      if rule in ev:
        e = ev[rule]
        l0_by = {int(c): round(float(e["l0_B"][true_k[:len(e["l0_B"])] == c].mean()), 2) for c in np.unique(true_k)}
        line[rule] = {"fvu": round(e["fvu"], 4), "l0": round(e["l0"], 2), "dead": round(float(1 - e["fired_F"].mean()), 3),
                      "dense>10%": int((e["freq_F"] > 0.1).sum()), "l0_by_k": l0_by}
    if "_thr" in ev:
      line["thr_learned"] = round(ev["_thr"], 4)
      line["thr_batch_equiv"] = round(ev["_thr_batch"], 4)
    if arch == "matryoshka":  # atoms matching a true atom (> 0.9) in each nested group
      best_F = atom_cosines(test_set.atoms_AD, np.asarray(state.params.w_dec)).max(axis=0)
      bounds = np.cumsum((0,) + cfg.sae.group_sizes())
      line["learned>0.9_by_group"] = [f"{int((best_F[lo:hi] > 0.9).sum())}/{hi - lo}"
                                      for lo, hi in zip(bounds[:-1], bounds[1:])]
    print(json.dumps(line), flush=True)
    summary.append(line)
  if a.json:
    with open(a.json, "w") as f:
      json.dump({"args": vars(a), "results": summary}, f, indent=1)


if __name__ == "__main__":
  main()
