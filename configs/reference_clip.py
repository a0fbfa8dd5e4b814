"""The authors' SoftSAE CLIP recipe (Stępień et al., arXiv 2605.06610; github.com/St0pien/SoftSAE,
``soft_sae_clip/configs/SoftSAE_220.json`` and ``clip_train_eval.py``): CLIP ViT-B/16 image embeddings
(D = 512) of CC3M, F = 4096, k = 220, 40 000 steps of 8192, the authors' gradients (``soft_grad=faithful``).

Every value below is pinned by tests/test_reference_configs.py to its source. Fractions are the
authors' step counts over T = 40 000: warmup 1900, linear decay from 6500, k anneal 1600 (the budget
goes 512 -> k), no alpha anneal (alpha = 1e-4 from step 0: the json's ``null``; their sweep script
anneals over 1000 steps), hard phase 6000 steps; AuxK's dead window is 400 000 samples; seed 42;
float32. ``sae.k_max = 1024`` is what their code effectively uses (2 x D: the model is built with
k = D when k-annealing, a bug, docs/method.md §7); set ``sae.k_max=440`` for the intended 2k. Their
baselines anneal k from D too: ``train.k_anneal_baselines``. Their sweep: k in 60 ... 260
(``--set sweep.k=60,100,140,180,220,260``; keep sae.k_max=1024 for all of them, as theirs did).

Not reproduced: their SCALE_SHIFT normalisation (a per-dimension shift and one scale; here one scalar
factor, docs/method.md §2.4), and their evaluation on the ImageNet *train* split.

Run:
  softsae train --data ACTS --workdir runs/reference_clip --config configs/reference_clip.py
"""

from softsae_jax.config import Config, SaeConfig, TrainConfig

T = 40_000


def get_config() -> Config:
  return Config(
      sae=SaeConfig(arch="softsae", n_latents=4096, k=220, k_max=1024, alpha=1e-4, alpha_start=1.0,
                    soft_grad="faithful", k_control="none", k_input="x", alpha_k=0.0,
                    k_loss_weight=1.0, k_loss_beta=5.0,
                    auxk_alpha=1.0 / 32.0,
                    top_k_aux=None, dead_tokens=400_000, compute_dtype="float32"),
      train=TrainConfig(steps=T, batch_size=8192, lr=6e-4, warmup_frac=1900 / T, decay_start_frac=6500 / T,
                        k_anneal_frac=1600 / T, alpha_anneal_frac=0.0, hard_frac=6000 / T, hard_freeze=True,
                        k_lr_scale=1.0, k_anneal_baselines=True, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0, seed=42,
                        checkpoint_every=1000, log_every=100),
  )
