"""The authors' SoftSAE LLM recipe (Stępień et al., arXiv 2605.06610; github.com/St0pien/SoftSAE,
``soft_sae_llm/demo_config.py`` and ``demo.py``): Gemma-2-2B, residual stream after block 12 (D = 2304),
F = 16 384, 500 M tokens in batches of 2048 (244 140 steps), the authors' gradients (``soft_grad=faithful``).

Every value below is pinned by tests/test_reference_configs.py to its source line. Fractions are the
authors' step counts over T = 244 140: warmup 1000, k anneal int(0.01 T) = 2441, alpha anneal 2500,
hard phase 10 000 steps; AuxK's dead window is 10 M tokens. Their baselines (TopK, BatchTopK,
Matryoshka) anneal k from D as well: ``train.k_anneal_baselines``. They train under bf16 autocast:
``sae.compute_dtype=bfloat16`` (k-hat stays float32 here, docs/method.md §2.2).

The authors sweep k over 20, 40, 80, 160, 320, 640 (k_max = 2k each); this file sets k = 80. All six in
one run: ``--set sweep.k=20,40,80,160,320,640`` (docs/scale-out.md, "Sweeps"); a baseline:
``--set sae.arch=topk``. What differs from their code, by design (docs/method.md §3.4, §7): the schedules'
off-by-one at step 0, their 0.99 alpha at step 0 (1.0 here), and their data buffer (FineWeb text
packed to 1024-token contexts, BOS/padding dropped, rows above 10x the median norm dropped); export
yours with ``softsae export --model google/gemma-2-2b --layer 12 ...`` from a local copy.

Run:
  softsae train --data ACTS --workdir runs/reference_llm --config configs/reference_llm.py
"""

from softsae_jax.config import Config, SaeConfig, TrainConfig

T = 244_140  # int(500_000_000 / 2048)


def get_config() -> Config:
  return Config(
      sae=SaeConfig(arch="softsae", n_latents=16_384, k=80, k_max=None, alpha=1e-4, alpha_start=1.0,
                    soft_grad="faithful", k_control="none", k_input="x", alpha_k=0.0,
                    k_loss_weight=1.0, k_loss_beta=5.0,
                    auxk_alpha=1.0 / 32.0,
                    top_k_aux=None, dead_tokens=10_000_000, compute_dtype="bfloat16"),
      train=TrainConfig(steps=T, batch_size=2048, lr=3e-4, warmup_frac=1000 / T, decay_start_frac=0.8,
                        k_anneal_frac=0.01, alpha_anneal_frac=2500 / T, hard_frac=10_000 / T,
                        hard_freeze=True, k_lr_scale=1.0, k_anneal_baselines=True, b1=0.9, b2=0.999,
                        eps=1e-8, grad_clip=1.0, seed=0, checkpoint_every=1000, log_every=100),
  )
