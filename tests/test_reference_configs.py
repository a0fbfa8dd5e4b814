"""The authors' recipes (configs/reference_llm.py, configs/reference_clip.py): every value pinned to its
source in St0pien/SoftSAE (docs/method.md §3.7). A changed value, or a new non-default key that is not
pinned here, fails."""

import dataclasses
import os

import pytest

from softsae_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# key -> (value, source). Step counts are checked as round(frac * T), the way the schedules use them.
LLM = {  # soft_sae_llm/demo_config.py, demo.py
    "sae.arch": ("softsae", "SoftSAE trainer"),
    "sae.n_latents": (16_384, "dict sizes [2**14]"),
    "sae.k": (80, "TARGET_L0s = [20, 40, 80, 160, 320, 640]: one of them"),
    "sae.k_max": (None, "constructor default 2k"),
    "sae.alpha": (1e-4, "soft_topk_alpha default"),
    "sae.alpha_start": (1.0, "update_annealed_alpha starts at 1.0"),
    "sae.soft_grad": ("faithful", "the authors' gradients"),
    "sae.k_loss_weight": (1.0, "k_loss_weight"),
    "sae.k_loss_beta": (5.0, "softplus beta 5"),
    "sae.auxk_alpha": (1 / 32, "auxk_alpha"),
    "sae.top_k_aux": (None, "D // 2 = 1152"),
    "sae.dead_tokens": (10_000_000, "dead_feature_threshold"),
    "sae.compute_dtype": ("bfloat16", "torch.autocast(bfloat16)"),
    "train.steps": (244_140, "int(500_000_000 / 2048)"),
    "train.batch_size": (2048, "sae_batch_size"),
    "train.lr": (3e-4, "learning_rates = [0.0003]"),
    "train.decay_start_frac": (0.8, "decay_start = int(0.8 * T)"),
    "train.hard_freeze": (True, "torch.no_grad() in the hard phase"),
    "train.k_lr_scale": (1.0, "one Adam over model.parameters()"),
    "sae.k_control": ("none", "the k loss alone sets the budget"),
    "sae.k_input": ("x", "k_estimator = Sequential(Linear(d_in, d_sae), ReLU, Linear(d_sae, 1)) on x - b_dec"),
    "sae.alpha_k": (0.0, "one soft top-k: k's gradient at the forward's alpha"),
    "train.k_anneal_baselines": (True, "baselines anneal k from D"),
    "train.grad_clip": (1.0, "clip_grad_norm_(..., 1.0)"),
    "train.seed": (0, "seed"),
    "train.checkpoint_every": (1000, "backup every 1000 steps"),
    "train.log_every": (100, "wandb every 100 steps"),
}
LLM_STEPS = {"train.warmup_frac": 1000, "train.k_anneal_frac": 2441, "train.alpha_anneal_frac": 2500,
             "train.hard_frac": 10_000, "train.decay_start_frac": 195_312}

CLIP = {  # soft_sae_clip/configs/SoftSAE_220.json, clip_train_eval.py
    "sae.arch": ("softsae", "SoftTopKSAE"),
    "sae.n_latents": (4096, "dict_size"),
    "sae.k": (220, "k"),
    "sae.k_max": (1024, "effective 2 * D (model built with k = D when annealing)"),
    "sae.alpha": (1e-4, "soft_topk_alpha"),
    "sae.alpha_start": (1.0, "constructor alpha 1 (unused: no alpha anneal)"),
    "sae.soft_grad": ("faithful", "the authors' gradients"),
    "sae.k_loss_weight": (1.0, "k_loss_weight"),
    "sae.k_loss_beta": (5.0, "beta 5.0 hard-coded"),
    "sae.auxk_alpha": (1 / 32, "json default"),
    "sae.top_k_aux": (None, "D // 2 = 256"),
    "sae.dead_tokens": (400_000, "dead_feature_threshold"),
    "sae.compute_dtype": ("float32", "no autocast"),
    "train.steps": (40_000, "-n default 40000"),
    "train.batch_size": (8192, "batch_size"),
    "train.lr": (6e-4, "lr"),
    "train.hard_freeze": (True, "torch.no_grad() in the hard phase"),
    "train.k_lr_scale": (1.0, "one Adam over model.parameters()"),
    "sae.k_control": ("none", "the k loss alone sets the budget"),
    "sae.k_input": ("x", "k_estimator = Sequential(Linear(d_in, d_sae), ReLU, Linear(d_sae, 1)) on x - b_dec"),
    "sae.alpha_k": (0.0, "one soft top-k: k's gradient at the forward's alpha"),
    "train.k_anneal_baselines": (True, "baselines anneal k from D"),
    "train.grad_clip": (1.0, "clip_grad_norm_(..., 1.0)"),
    "train.seed": (42, "seed"),
    "train.checkpoint_every": (1000, "ours"),
    "train.log_every": (100, "ours"),
}
CLIP_STEPS = {"train.warmup_frac": 1900, "train.decay_start_frac": 6500, "train.k_anneal_frac": 1600,
              "train.alpha_anneal_frac": 0, "train.hard_frac": 6000}


def _flat(cfg):
  return {f"{s}.{k}": v for s, vals in cfg.to_dict().items() for k, v in vals.items()}


@pytest.mark.parametrize("name,pinned,steps", [("reference_llm", LLM, LLM_STEPS), ("reference_clip", CLIP, CLIP_STEPS)])
def test_reference_config_values_are_the_authors(name, pinned, steps):
  cfg = config_lib.load_config_file(os.path.join(ROOT, "configs", f"{name}.py"))
  flat = _flat(cfg)
  for key, (value, source) in pinned.items():
    assert flat[key] == value, f"{name}: {key} = {flat[key]!r}, the authors' ({source}) is {value!r}"
  t = cfg.train.steps
  for key, n in steps.items():
    assert int(round(flat[key] * t)) == n, f"{name}: {key} gives {round(flat[key] * t)} steps, the authors' {n}"
  # Nothing else departs from the defaults unpinned (bookkeeping keys excepted).
  default = _flat(config_lib.Config())
  free = {"train.b1", "train.b2", "train.eps"}  # pinned at the defaults, Adam's (0.9, 0.999, 1e-8)
  changed = {k for k in flat if flat[k] != default[k]} - set(pinned) - set(steps) - free
  assert not changed, f"{name}: unpinned non-default keys {sorted(changed)}"
  assert (cfg.train.b1, cfg.train.b2, cfg.train.eps) == (0.9, 0.999, 1e-8)
  assert cfg.dead_tokens == pinned["sae.dead_tokens"][0]


def test_reference_clip_k_max_resolves_to_the_authors_effective_value():
  cfg = config_lib.load_config_file(os.path.join(ROOT, "configs", "reference_clip.py")).resolve(512)
  assert cfg.sae.kmax == 1024 and cfg.sae.F == 4096
  llm = config_lib.load_config_file(os.path.join(ROOT, "configs", "reference_llm.py"))
  assert llm.resolve(2304).sae.kmax == 160 and llm.resolve(2304).sae.k_aux == 1152
  swept = dataclasses.replace(llm, sweep=config_lib.SweepConfig(k=(20, 40, 80, 160, 320, 640))).resolve(2304)
  assert [m.config.sae.kmax for m in swept.members()] == [40, 80, 160, 320, 640, 1280]
