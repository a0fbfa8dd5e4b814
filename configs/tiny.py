"""A tiny SoftSAE for smoke tests and first contact: trains in about a minute on 2 CPU cores.

Run:
  softsae train --data DATA --workdir runs/tiny --config configs/tiny.py
  softsae eval  --data DATA --workdir runs/tiny

Expected on the small synthetic mixture (d=48, true k in {2,4,8,16}; e.g.
`synthetic.write_dataset(DIR, synthetic.make_preset("small", "mixture")[0])`): FVU about 0.36, mean
inference L0 about 6.6 (mean k-hat about 7.1, under the budget k=8), no dead latents (measured
2026-11-29 on a 2-core CPU, 14 s).
"""

from softsae_jax.config import Config, SaeConfig, TrainConfig


def get_config() -> Config:
  return Config(
      sae=SaeConfig(arch="softsae", expansion=8, k=8),
      train=TrainConfig(steps=600, batch_size=512, lr=1e-3, checkpoint_every=200, log_every=20),
  )
