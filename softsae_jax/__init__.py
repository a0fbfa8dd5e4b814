"""softsae_jax: sparse autoencoders in JAX, with SoftSAE's adaptive per-input k.

Re-exports only. Modules: ``topk`` (LapSum soft top-k, hard top-k), ``sae`` (building blocks shared
by the SAE family), ``archs`` (the table of architectures: init, loss terms, inference rule, state
update), ``losses``, ``optim``, ``sharding`` (mesh and logical-axis rules), ``train`` (the jitted
step), ``trainer`` (the training run), ``evaluate`` (the inference engine: ``load(workdir)``, metrics,
codes), ``data``/``shards`` (activation shards), ``stats``, ``files``, ``synthetic`` (ground-truth
data), ``report``, ``bench``, ``bridge`` (PyTorch export; needs torch).

A trained run in a notebook::

  model = softsae_jax.load("runs/demo/softsae")
  codes = model.encode(x)            # raw-unit codes [..., F]
  x_hat = model.decode(codes)        # == model.reconstruct(x)
"""

from softsae_jax.config import Config as Config
from softsae_jax.config import DataConfig as DataConfig
from softsae_jax.config import SaeConfig as SaeConfig
from softsae_jax.config import TrainConfig as TrainConfig
from softsae_jax.optim import make_optimizer as make_optimizer
from softsae_jax.archs import ARCHS as ARCHS
from softsae_jax.archs import encode as encode
from softsae_jax.archs import estimate_k as estimate_k
from softsae_jax.archs import forward as forward
from softsae_jax.archs import init_params as init_params
from softsae_jax.sae import decode as decode
from softsae_jax.topk import hard_topk as hard_topk
from softsae_jax.topk import hard_topk_mask as hard_topk_mask
from softsae_jax.topk import soft_topk as soft_topk
from softsae_jax.train import init_train_state as init_train_state
from softsae_jax.train import make_train_step as make_train_step
from softsae_jax.train import train_step as train_step
from softsae_jax.types import Codes as Codes
from softsae_jax.types import Params as Params
from softsae_jax.types import TrainState as TrainState

__version__ = "0.1.0"

_LAZY = {"load": "softsae_jax.evaluate", "Model": "softsae_jax.evaluate"}


def __getattr__(name: str):
  """``load`` and ``Model`` (the inference engine) import orbax: re-exported lazily, so that
  ``import softsae_jax`` (and ``softsae --help``) stays light."""
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'softsae_jax' has no attribute {name!r}")
