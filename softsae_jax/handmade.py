"""Hand-made SAEs written as ``softsae train`` workdirs (for tests, baselines and known-answer checks).

:func:`write_workdir` saves given parameters as a finished run — ``config.json``, ``run.json`` and one
checkpoint — so every command that reads a workdir (``eval``, ``encode``, ``report``, ``fidelity``,
``probe``, ``bench``) runs on it through the inference engine exactly as on a trained run.

Two known dictionaries:

* :func:`identity_params`: a ReLU SAE with ``F = 2 D`` latents, ``w_enc = [I, -I]``,
  ``w_dec = [I; -I]`` (unit-norm rows) and zero biases, so ``decode(encode(x)) = relu(x) - relu(-x) = x``
  exactly in float32 (with ``norm_factor = 1``);
* :func:`zero_params`: a ReLU SAE whose decoder and biases are 0, so every reconstruction is 0.

Examples:
  >>> import numpy as np
  >>> p = identity_params(3)
  >>> x = np.array([[1.5, -2.0, 0.0]], np.float32)
  >>> codes = np.maximum(x @ np.asarray(p.w_enc), 0)
  >>> (codes @ np.asarray(p.w_dec)).tolist()
  [[1.5, -2.0, 0.0]]
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from softsae_jax import files
from softsae_jax.config import Config, SaeConfig
from softsae_jax.types import Params


def relu_config(d: int, n_latents: int, **sae_fields: Any) -> Config:
  """A resolved relu :class:`Config` with ``d`` inputs and ``n_latents`` latents (k = 1: unused by relu)."""
  return Config(sae=SaeConfig(arch="relu", d_in=d, n_latents=n_latents, k=1, **sae_fields)).resolve(d)


def identity_params(d: int) -> Params:
  """The exact-identity ReLU dictionary with ``2 d`` latents (see the module docstring)."""
  eye = np.eye(d, dtype=np.float32)
  return Params(w_enc=np.concatenate([eye, -eye], axis=1), b_enc=np.zeros(2 * d, np.float32),
                w_dec=np.concatenate([eye, -eye], axis=0), b_dec=np.zeros(d, np.float32))


def zero_params(d: int, n_latents: int) -> Params:
  """A ReLU dictionary that reconstructs every row as 0 (zero decoder and biases; the encoder is a
  fixed pattern so that the codes are not all zero)."""
  w_enc = np.zeros((d, n_latents), np.float32)
  w_enc[np.arange(n_latents) % d, np.arange(n_latents)] = 1.0
  return Params(w_enc=w_enc, b_enc=np.zeros(n_latents, np.float32), w_dec=np.zeros((n_latents, d), np.float32),
                b_dec=np.zeros(d, np.float32))


def write_workdir(workdir: str, cfg: Config, params: Params, *, norm_factor: float = 1.0, arch_state: Any = None,
                  data: str | None = None, step: int | None = None) -> str:
  """Writes ``params`` as a finished run in ``workdir`` (which must not hold a run yet).

  Args:
    workdir: the directory to create.
    cfg: the run's config; resolved against ``params``' width if needed.
    params: the parameters in *normalised* units (as training stores them); arrays of the shapes
      :func:`softsae_jax.archs.init_params` gives for ``cfg`` (``extra`` included for softsae/jumprelu).
    norm_factor: the scalar the run divides raw activations by (1: raw units = normalised units).
    arch_state: the arch's state (BatchTopK/Matryoshka: their inference threshold); None keeps the
      initial one.
    data: an activation directory recorded as the run's training data in ``run.json`` (where
      ``softsae fidelity`` finds its model and layer); None records none.
    step: the checkpoint step (default ``cfg.train.steps``, a finished run).

  Returns:
    ``workdir``.
  """
  import jax
  import jax.numpy as jnp

  from softsae_jax.checkpoint import Checkpointer
  from softsae_jax.optim import make_optimizer
  from softsae_jax.train import init_train_state

  d = int(np.asarray(params.w_enc).shape[0])
  cfg = cfg if cfg.sae.d_in is not None and cfg.sae.n_latents is not None else cfg.resolve(d)
  if os.path.exists(os.path.join(workdir, "checkpoints")):
    raise FileExistsError(f"{workdir} already holds a run")
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  tx = make_optimizer(cfg)
  state = init_train_state(jax.random.key(cfg.train.seed), cfg, tx, norm_factor=norm_factor)
  step = cfg.train.steps if step is None else step
  state = state._replace(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params),
                         arch_state=state.arch_state if arch_state is None else jnp.asarray(arch_state, jnp.float32))
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, "config.json"), cfg.to_dict())
  run: dict[str, Any] = {"norm_factor": norm_factor, "handmade": True}
  if data is not None:
    from softsae_jax.shards import open_dataset
    from softsae_jax.trainer import data_info

    run["data"] = data_info(open_dataset(data))
  files.write_json(os.path.join(workdir, "run.json"), run)
  ck = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1)
  try:
    ck.save(step, state, {"seed": cfg.train.seed, "step": step, "handmade": True}, cfg.to_dict())
  finally:
    ck.close()
  return workdir
