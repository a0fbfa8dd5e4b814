"""Pytrees shared across the package.

Dimension key (used in every array name as a suffix, e.g. ``x_BD``, ``acts_BF``):

* ``B`` rows (tokens / samples) in a batch
* ``D`` input width (d_model)
* ``F`` latents (dictionary size)
* ``K`` a static top-k width (e.g. ``k_max``)
* ``N`` rows in a shard or a dataset
* ``G`` Matryoshka groups
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

Array = jax.Array


class Params(NamedTuple):
  """SAE parameters; float32. Field names are checkpoint keys: never rename.

  The four fields every architecture has, plus ``extra``: the architecture's own parameters as an
  optional subtree (``None`` for TopK, BatchTopK, Matryoshka and ReLU; :class:`KEstimator` for
  SoftSAE; :class:`JumpThreshold` for JumpReLU), defined by its entry in :mod:`softsae_jax.archs`.
  """

  w_enc: Array  # [D, F]
  b_enc: Array  # [F]
  w_dec: Array  # [F, D]; rows are unit-norm dictionary atoms
  b_dec: Array  # [D]
  extra: Any = None


class KEstimator(NamedTuple):
  """SoftSAE's k-estimator MLP D -> F -> 1: k-hat = k_max * sigmoid(w_k2 . ReLU((x - b_dec) w_k1 + b_k1) + b_k2);
  with ``sae.k_input=top_acts`` M -> H -> 1 on the M largest pre-activations (M = k_max + 16, H = k_hidden)."""

  w_k1: Array  # [D, F] (top_acts: [M, H])
  b_k1: Array  # [F] (top_acts: [H])
  w_k2: Array  # [F] (top_acts: [H])
  b_k2: Array  # []


class JumpThreshold(NamedTuple):
  """JumpReLU's per-latent threshold theta (normalised units): a latent fires when its pre-activation
  exceeds it."""

  threshold: Array  # [F]


class Codes(NamedTuple):
  """What `encode` returns.

  ``pre_BF`` is the post-ReLU activation before any top-k selection; ``acts_BF`` the code that is
  decoded (hard: selected ReLU values, zero elsewhere; soft: ReLU values times the soft weights);
  ``k_B`` the per-row k (SoftSAE's k-hat, real-valued; for fixed-k archs the count used).
  """

  pre_BF: Array
  acts_BF: Array
  k_B: Array


class TrainState(NamedTuple):
  """The whole training state: one immutable pytree, saved as-is in checkpoints."""

  step: Array  # [] int32: number of optimizer steps taken
  params: Params
  opt_state: Any
  key: Array  # PRNG key data (uint32 [2]); per-step keys are fold_in(key, step)
  since_fired_F: Array  # [F] int32 tokens since each latent last fired (AuxK dead mask)
  arch_state: Any  # the architecture's non-trained state (BatchTopK/Matryoshka: the [] float32
  #                  inference threshold EMA); None for the others
  norm_factor: Array  # [] float32 raw activations are divided by this before the SAE sees them
  n_skipped: Array  # [] int32 non-finite rows masked out of training so far


class Metrics(NamedTuple):
  """Per-step training metrics (scalars)."""

  loss: Array
  mse: Array
  fvu: Array
  sparsity_loss: Array  # the arch's sparsity term, weighted (SoftSAE k budget, ReLU L1, JumpReLU L0)
  aux_loss: Array
  l0_mean: Array
  k_mean: Array
  k_min: Array
  k_max: Array
  dead_frac: Array
  k_budget: Array
  alpha: Array
  lr: Array
  grad_norm: Array
