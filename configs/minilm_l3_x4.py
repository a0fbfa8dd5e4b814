"""SoftSAE on all-MiniLM-L6-v2 block-3 activations (D=384), F = 4 x 384 = 1536, target mean k = 16.

This is the config `make demo` uses. Run:
  softsae export --model <minilm folder> --layer 3 --out runs/demo/acts --text-file docs.txt
  softsae train --data runs/demo/acts --workdir runs/demo/softsae --config configs/minilm_l3_x4.py
  softsae eval  --data runs/demo/acts --workdir runs/demo/softsae

Expected (measured 2026-11-30, 2-core CPU, `make demo`'s 1000 steps on 85% of Python's documentation
topics, evaluated on the other 15%): held-out FVU 0.168 at a mean inference L0 of 14.4 (k-hat 14.9 +-
3.9, L0 5-95% range 7-21); TopK at k=14 trained and evaluated the same way: FVU 0.171. 1500 steps (this file's default) take about 2 minutes.
"""

from softsae_jax.config import Config, SaeConfig, TrainConfig


def get_config() -> Config:
  return Config(
      sae=SaeConfig(arch="softsae", expansion=4, k=16),
      train=TrainConfig(steps=1500, batch_size=512, lr=1e-3, checkpoint_every=500, log_every=25),
  )
