"""A tiny SoftSAE for smoke tests and first contact: trains in about a minute on 2 CPU cores.

Run:
  softsae train --data DATA --workdir runs/tiny --config configs/tiny.py
  softsae eval  --data DATA --workdir runs/tiny

Expected on the small synthetic mixture (`softsae bench synthetic --preset small` writes one):
FVU well below 1 (about 0.3-0.5 after 600 steps), mean k-hat near the target k=8, no dead latents.
"""

from softsae_jax.config import Config, SaeConfig, TrainConfig


def get_config() -> Config:
  return Config(
      sae=SaeConfig(arch="softsae", expansion=8, k=8),
      train=TrainConfig(steps=600, batch_size=512, lr=1e-3, checkpoint_every=200, log_every=20),
  )
