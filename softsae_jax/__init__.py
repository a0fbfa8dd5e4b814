"""softsae_jax: sparse autoencoders in JAX, with SoftSAE's adaptive per-input k.

Re-exports only. Modules: ``topk`` (LapSum soft top-k, hard top-k), ``sae`` (building blocks shared
by the SAE family), ``archs`` (the table of architectures: init, loss terms, inference rule, state
update), ``losses``, ``optim``, ``sharding`` (mesh and logical-axis rules), ``train`` (the jitted
step), ``trainer`` (the training run), ``evaluate`` (the inference engine: ``load(workdir)``, metrics,
codes), ``data``/``shards`` (activation shards), ``stats``, ``files``, ``synthetic`` (ground-truth
data), ``report``, ``bench``, ``bridge`` (PyTorch export; needs torch), ``interop`` / ``convert``
(SAELens, dictionary_learning, sparsify, Gemma Scope formats), ``torch_module`` (our SAELens exports
in PyTorch), ``flax_adapter`` (a trained SAE as an NNX module).

Every name below is re-exported lazily (imported on first use): ``import softsae_jax`` imports no
jax, so the torch-only module ``softsae_jax.torch_module`` also works where jax is not installed
(e.g. SAEBench's environment).

A trained run in a notebook::

  model = softsae_jax.load("runs/demo/softsae")
  codes = model.encode(x)            # raw-unit codes [..., F]
  x_hat = model.decode(codes)        # == model.reconstruct(x)
"""

__version__ = "0.1.0"

# name -> module: each public name is imported from its module on first access (PEP 562), so that
# ``import softsae_jax`` (and ``softsae --help``) imports neither jax nor orbax.
_LAZY = {
    "Config": "softsae_jax.config",
    "DataConfig": "softsae_jax.config",
    "SaeConfig": "softsae_jax.config",
    "TrainConfig": "softsae_jax.config",
    "make_optimizer": "softsae_jax.optim",
    "ARCHS": "softsae_jax.archs",
    "encode": "softsae_jax.archs",
    "estimate_k": "softsae_jax.archs",
    "forward": "softsae_jax.archs",
    "init_params": "softsae_jax.archs",
    "decode": "softsae_jax.sae",
    "hard_topk": "softsae_jax.topk",
    "hard_topk_mask": "softsae_jax.topk",
    "soft_topk": "softsae_jax.topk",
    "init_train_state": "softsae_jax.train",
    "make_train_step": "softsae_jax.train",
    "train_step": "softsae_jax.train",
    "Codes": "softsae_jax.types",
    "Params": "softsae_jax.types",
    "TrainState": "softsae_jax.types",
    "load": "softsae_jax.evaluate",
    "Model": "softsae_jax.evaluate",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name in _LAZY:
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'softsae_jax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
