"""SoftSAE on all-MiniLM-L6-v2 block-3 activations (D=384), F = 4 x 384 = 1536, target mean k = 16.

This is the config `make demo` uses. Run:
  softsae export --model <minilm folder> --layer 3 --out runs/demo/acts --text-file docs.txt
  softsae train --data runs/demo/acts --workdir runs/demo/softsae --config configs/minilm_l3_x4.py
  softsae eval  --data runs/demo/acts --workdir runs/demo/softsae

Expected (2-core CPU, ~90k tokens of Python's documentation, 1500 steps): FVU about 0.15-0.25 at a
mean inference L0 near 15; see docs/results.md for measured numbers.
"""

from softsae_jax.config import Config, SaeConfig, TrainConfig


def get_config() -> Config:
  return Config(
      sae=SaeConfig(arch="softsae", expansion=4, k=16),
      train=TrainConfig(steps=1500, batch_size=512, lr=1e-3, checkpoint_every=500, log_every=25),
  )
