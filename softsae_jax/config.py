"""Configuration: frozen, documented dataclasses; defaults follow the authors' code (docs/method.md §3.7).

A run is described by one :class:`Config` (``sae``, ``train``, ``data`` sections). Config files in
``configs/`` are Python modules with ``get_config() -> Config``; the command line overrides single
fields with ``--set section.key=value`` (type-checked, unknown keys rejected).

Schedules are given as fractions of ``train.steps`` so one config works at any run length; the
authors' LLM run (244 140 steps) used warmup 1000 (0.4%), decay from 80%, k annealing over 1%, alpha
annealing over 2500 steps (1%, our default too) and a hard top-k phase of the last 10 000 steps (4%).

This module imports no jax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from softsae_jax.errors import UserError

# The architectures; each is one entry of the table in softsae_jax/archs.py (which checks this list).
ARCHS = ("softsae", "topk", "batchtopk", "relu", "matryoshka", "jumprelu")
THRESHOLD_ARCHS = ("batchtopk", "matryoshka")  # their TrainState.arch_state is a learned global inference threshold


class ConfigError(UserError):
  """A config value or key a user must fix; the message names the key."""


@dataclasses.dataclass(frozen=True)
class SaeConfig:
  """The autoencoder.

  Attributes:
    arch: one of softsae | topk | batchtopk | relu | matryoshka | jumprelu.
    d_in: input width D; filled from the data's manifest when None.
    n_latents: dictionary size F; when None, ``expansion * d_in``.
    expansion: F / D when ``n_latents`` is None.
    k: target mean number of active latents (SoftSAE: the k budget the batch-mean k-hat is pushed
      under; topk: the fixed k; batchtopk/matryoshka: k per row on average over the batch).
    k_max: SoftSAE's k-hat upper bound (k-hat = k_max * sigmoid(.)); None means 2 * k (docs/method.md §2.1).
    alpha: final Laplace scale of the soft top-k (smaller = harder), the authors' default 1e-4.
    alpha_start: alpha at the start of annealing (the authors': 1.0).
    soft_grad: how the reconstruction gradient reaches the encoder through the soft top-k:
      "faithful" = through both the activations and the operator's weights (the authors' code);
      "stop" = only through the activations, ``acts * soft_topk(stop_gradient(acts), k_hat)``; k-hat
      keeps its gradient in both. Default "stop": at the same mean L0 it reconstructs better than
      "faithful", whose score gradient (a competition term ~1/alpha near the threshold) hurts the
      encoder; measured in docs/results.md.
    alpha_k: decoupled temperatures: when > 0, k-hat's gradient is taken from a soft top-k at Laplace
      scale max(alpha, alpha_k) (the forward weights stay at alpha): dL/dk-hat becomes the
      density-weighted mean of dL/dw over the latents within ~alpha_k of the threshold instead of the
      one or two latents at it. 0 (default, the authors'): both at alpha. Same units as the
      pre-activations (the normalised data).
    k_input: what the k-estimator reads. "top_acts" (default since 2026-12-01): the row's M = k_max + 16
      largest encoder activations, sorted, with their gradient stopped, through an M -> k_hidden -> 1
      MLP (a [B, M] input instead of a second [B, D] x [D, F] matmul); "x" (the authors',
      configs/reference_*.py): the input x - b_dec through a D -> F -> 1 MLP whose first layer starts as
      a copy of the encoder. Measured (docs/results.md §15): on the constant-norm mixture k-hat's
      Spearman with the true k 0.84 (x: 0.49) and FVU 12% below TopK's at the same L0 (x: 2%); on
      MiniLM block 3, k = 32, 3 seeds, 0.982 x TopK's FVU at matched held-out L0 (x: 1.016).
    k_hidden: the "top_acts" estimator's hidden width.
    k_top: how many top activations the "top_acts" estimator reads (M); None means min(k_max + 16, F).
      A k sweep sets it to its largest member's, so every member has the same estimator shape.
    k_loss_weight: weight of the k-budget term softplus_beta(mean k-hat - budget).
    k_loss_beta: beta of that softplus (the authors': 5).
    k_control: "integral" (default): after the k anneal and before the hard phase, the hinge's budget
      is raised by a controller offset that integrates the batch's shortfall k - mean floor(k-hat), so
      the delivered L0 is held at k (the budget as a constraint; docs/method.md §3.1). "none" (the
      authors', configs/reference_*.py): the hinge alone, so the delivered L0 lands under k (the mean
      k-hat settles below the budget and inference floors it; 8% under k on MiniLM, 17% on the
      synthetic mixture). The default since 2026-11-30: on MiniLM block 3 at k = 32 (3 seeds) it gave
      held-out L0 +0.9% of k and FVU 0.977x TopK's at matched L0, against -7.8% and 0.985x
      (docs/results.md §10).
    k_control_rate: the integral controller's gain (offset change per step per latent of shortfall).
    auxk_alpha: weight of the AuxK dead-latent loss (the authors': 1/32).
    top_k_aux: AuxK's k; None means D // 2.
    dead_tokens: a latent is dead (AuxK trains it; the dead fraction counts it) after this many tokens
      without firing; None means ``dead_window_frac`` of the run's tokens (:attr:`Config.dead_tokens`).
      The authors: 10 M tokens of a 500 M-token LLM run (2%), 400 000 samples of CLIP's 328 M (0.12%).
    dead_window_frac: the dead-latent window as a fraction of the run's tokens (train.steps x
      train.batch_size) when ``dead_tokens`` is None. The default 2% (the authors' LLM ratio) makes
      AuxK run in short runs too: a fixed 1 M tokens never let it start in a run of <= 1 M tokens.
    l1_coeff: L1 coefficient of the relu arch (on |f| times the decoder row norm, which is 1), in the
      normalised units (mean ||x||^2 = 1); it sets the L0 you get: tune it (0.3 gave L0 ~25 on 64-d data).
    l0_coeff: JumpReLU's L0 coefficient lambda (loss = reconstruction + lambda * mean active latents per
      row, in the normalised units); it sets the L0 you get: a smaller coefficient gives a larger L0
      (configs/tiny.py on the small synthetic mixture, 600 steps: 1e-1 -> L0 3.1, 3e-2 -> 7.4,
      1e-2 -> 19, 1e-3 -> 73).
      ``sae.k`` is not used by jumprelu except as the AuxK/report reference.
    jumprelu_bandwidth: the width epsilon of the rectangle kernel of JumpReLU's straight-through
      threshold gradients (Rajamanoharan et al. 2024: 0.001), in normalised units.
    jumprelu_init_threshold: the initial per-latent threshold theta (normalised units; paper: 0.001).
    matryoshka_fractions: nested group sizes as fractions of F (must sum to 1).
    threshold_beta: EMA factor of the BatchTopK/Matryoshka inference threshold.
    threshold_start_frac: the EMA starts after this fraction of the steps (the authors': step 1000).
    compute_dtype: matmul dtype, "float32" or "bfloat16" (params stay float32).
    sparse_grads: how the TopK step (topk, and the decode of SoftSAE's hard phase) forms its weight
      gradients, which are k-sparse per row: "on" = from the k selected latents per row (scatter-adds,
      B*k*D work: ``sae.topk_encode``'s encoder backward and ``sae.sparse_decode``'s dW_dec), "off" =
      dense [B, F] gradients and B*F*D matmuls, "auto" (default) = "on" on the CPU backend, where the
      TopK step measured 1.7x faster (d = 384 and 768, k = 32 and 64, B = 1024; docs/benchmarks.md),
      and "off" elsewhere (GPU/TPU matmuls are cheap and their scatters slow: not measured). Same gradients up to
      float32 rounding. The sparse encoder backward runs on one device only; a sweep or a mesh of
      several devices keeps it dense (the decoder's stays sparse).
    sparse_soft: SoftSAE's soft phase with ``sparse_grads`` on, on one device (not in a sweep or on a
      mesh): decode and form the encoder's gradient from the soft top-k's M = k_max + 16 candidates
      per row (B*M*D work) on every step whose batch has, in every row, a negligible tail (weights and
      densities outside the candidates below 1e-10 in total, e.g. alpha = 1e-4 after the anneal) or a
      tail of ReLU zeros, decided inside the jitted step; other steps, and False, take the dense soft
      phase (B*F*D matmuls). Same loss, gradients and metrics up to float32 rounding; the step
      measured 1.4x faster on the CPU (docs/benchmarks.md).
  """

  arch: str = "softsae"
  d_in: int | None = None
  n_latents: int | None = None
  expansion: int = 8
  k: int = 32
  k_max: int | None = None
  alpha: float = 1e-4
  alpha_start: float = 1.0
  soft_grad: str = "stop"
  alpha_k: float = 0.0
  k_input: str = "top_acts"
  k_hidden: int = 128
  k_top: int | None = None
  k_loss_weight: float = 1.0
  k_loss_beta: float = 5.0
  k_control: str = "integral"
  k_control_rate: float = 0.01
  auxk_alpha: float = 1.0 / 32.0
  top_k_aux: int | None = None
  dead_tokens: int | None = None
  dead_window_frac: float = 0.02
  l1_coeff: float = 0.3
  l0_coeff: float = 1e-2
  jumprelu_bandwidth: float = 1e-3
  jumprelu_init_threshold: float = 1e-3
  matryoshka_fractions: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 17 / 32)
  threshold_beta: float = 0.999
  threshold_start_frac: float = 0.05
  compute_dtype: str = "float32"
  sparse_grads: str = "auto"
  sparse_soft: bool = True

  def __post_init__(self):
    if self.arch not in ARCHS:
      raise ConfigError(f"sae.arch must be one of {', '.join(ARCHS)}; got {self.arch!r}")
    if self.k_control not in ("none", "integral"):
      raise ConfigError(f"sae.k_control must be 'none' or 'integral'; got {self.k_control!r}")
    if not self.alpha_k >= 0:
      raise ConfigError(f"sae.alpha_k must be >= 0 (0 = off); got {self.alpha_k}")
    if self.k_input not in ("x", "top_acts"):
      raise ConfigError(f"sae.k_input must be 'x' or 'top_acts'; got {self.k_input!r}")
    if self.k_hidden < 1:
      raise ConfigError(f"sae.k_hidden must be >= 1; got {self.k_hidden}")
    if self.k_top is not None and self.k_top < 1:
      raise ConfigError(f"sae.k_top must be >= 1 (or None); got {self.k_top}")
    if self.soft_grad not in ("faithful", "stop"):
      raise ConfigError(f"sae.soft_grad must be 'faithful' or 'stop'; got {self.soft_grad!r}")
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ConfigError(f"sae.compute_dtype must be float32 or bfloat16; got {self.compute_dtype!r}")
    if self.sparse_grads not in ("auto", "on", "off"):
      raise ConfigError(f"sae.sparse_grads must be 'auto', 'on' or 'off'; got {self.sparse_grads!r}")
    if not isinstance(self.sparse_soft, bool):
      raise ConfigError(f"sae.sparse_soft must be true or false; got {self.sparse_soft!r}")
    if self.k < 1:
      raise ConfigError(f"sae.k must be >= 1; got {self.k}")
    if self.k_max is not None and self.k_max < self.k:
      raise ConfigError(f"sae.k_max ({self.k_max}) must be >= sae.k ({self.k})")
    if self.dead_tokens is not None and self.dead_tokens < 0:
      raise ConfigError(f"sae.dead_tokens must be >= 0 (or None: sae.dead_window_frac of the run); got {self.dead_tokens}")
    if not 0.0 < self.dead_window_frac <= 1.0:
      raise ConfigError(f"sae.dead_window_frac must be in (0, 1]; got {self.dead_window_frac}")
    if not self.alpha > 0 or not self.alpha_start > 0:
      raise ConfigError(f"sae.alpha and sae.alpha_start must be > 0; got {self.alpha}, {self.alpha_start}")
    if self.expansion < 1:
      raise ConfigError(f"sae.expansion must be >= 1; got {self.expansion}")
    f = self.n_latents
    if f is None and self.d_in is not None:
      f = self.expansion * self.d_in
    if f is not None:
      if self.k >= f:
        raise ConfigError(f"sae.k ({self.k}) must be < sae.n_latents ({f})")
      if self.k_max is not None and self.k_max > f:
        raise ConfigError(f"sae.k_max ({self.k_max}) must be <= sae.n_latents ({f})")
      if self.arch == "softsae" and 2 * self.k > f and self.k_max is None:
        raise ConfigError(
            f"sae.k_max defaults to 2*sae.k = {2 * self.k} > sae.n_latents ({f}); set sae.k_max <= {f}")
    if abs(sum(self.matryoshka_fractions) - 1.0) > 1e-6 or min(self.matryoshka_fractions) <= 0:
      raise ConfigError(
          f"sae.matryoshka_fractions must be positive and sum to 1; got {self.matryoshka_fractions}")
    for name in ("l0_coeff", "l1_coeff"):
      if getattr(self, name) < 0:
        raise ConfigError(f"sae.{name} must be >= 0; got {getattr(self, name)}")
    for name in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"sae.{name} must be > 0; got {getattr(self, name)}")
    if not 0.0 <= self.threshold_beta < 1.0:
      raise ConfigError(f"sae.threshold_beta must be in [0, 1); got {self.threshold_beta}")

  # Resolved values (need d_in).
  @property
  def F(self) -> int:  # noqa: N802 - dimension letter
    if self.n_latents is not None:
      return self.n_latents
    if self.d_in is None:
      raise ConfigError("sae.d_in is unknown: resolve the config against the data first")
    return self.expansion * self.d_in

  @property
  def kmax(self) -> int:
    return self.k_max if self.k_max is not None else min(2 * self.k, self.F)

  @property
  def k_top_width(self) -> int:
    """M, how many top activations the "top_acts" k-estimator reads: ``k_top``, else k_max + 16 (the soft
    top-k's candidates); at most F."""
    return min(self.k_top if self.k_top is not None else self.kmax + 16, self.F)

  @property
  def k_aux(self) -> int:
    if self.top_k_aux is not None:
      return min(self.top_k_aux, self.F)
    return min(max(1, (self.d_in or 2) // 2), self.F)

  def group_sizes(self) -> tuple[int, ...]:
    """Matryoshka group sizes (sum to F): rounded fractions, the last group takes the rest."""
    sizes = [max(1, int(round(fr * self.F))) for fr in self.matryoshka_fractions[:-1]]
    sizes.append(self.F - sum(sizes))
    if sizes[-1] < 1:
      raise ConfigError(f"sae.matryoshka_fractions leave no latents for the last group at F={self.F}")
    return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The optimisation.

  Attributes:
    steps: optimizer steps.
    batch_size: rows per step (global, across all devices and processes).
    lr: Adam learning rate; None means 2e-4 / sqrt(F / 2**14) (the dictionary_learning default).
    k_lr_scale: SoftSAE's k-estimator learns at ``lr * k_lr_scale`` (its updates are scaled after Adam,
      so the warmup/decay schedule and clipping are shared). 1 is the authors' single learning rate.
      The estimator learns k from the dL/dk-hat signal alone, which is weak next to the encoder's
      reconstruction gradient; a larger scale lets k-hat follow the data's complexity sooner
      (docs/results.md §12).
    warmup_frac: linear warmup from 0 over this fraction of the steps.
    decay_start_frac: linear decay to 0 from this fraction of the steps to the end.
    k_anneal_frac: the k budget goes linearly from D down to sae.k over this fraction (docs/method.md §3.4).
    k_anneal_baselines: TopK, BatchTopK and Matryoshka also anneal their k from D down to sae.k over
      ``k_anneal_frac`` (the authors' baselines do; configs/reference_*.py turn it on). Off by default:
      a fixed k from step 0 is the baselines' own papers' recipe.
    alpha_anneal_frac: alpha goes linearly from sae.alpha_start to sae.alpha over this fraction
      (the reference LLM run: 2500 of 244 140 steps, 1%; a 10% anneal made k-hat collapse at its end
      and cost ~10% FVU on the synthetic benchmark, docs/results.md §3).
    hard_frac: the last fraction of the steps uses hard top-k (SoftSAE); 0 disables it.
    l0_warmup_frac: JumpReLU's L0 coefficient rises linearly from 0 to sae.l0_coeff over this fraction
      of the steps (Gemma Scope warms it up over its first 10k steps), so latents are not killed
      before the encoder has learned anything.
    hard_freeze: in the hard phase the reconstruction reaches only the decoder and b_dec, and the
      encoder/k-estimator receive updates only from AuxK (the reference's no_grad semantics, docs/method.md §3.6).
      False trains the encoder through the hard top-k (straight TopK gradients) in that phase.
    b1, b2, eps: Adam.
    grad_clip: global gradient-norm clip (the authors': 1.0).
    seed: PRNG seed for init and for the data order.
    checkpoint_every: save a checkpoint every this many steps (and at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    log_every: append a line to metrics.jsonl every this many steps.
  """

  steps: int = 5000
  batch_size: int = 1024
  lr: float | None = None
  k_lr_scale: float = 1.0
  warmup_frac: float = 0.05
  decay_start_frac: float = 0.8
  k_anneal_frac: float = 0.05
  k_anneal_baselines: bool = False
  alpha_anneal_frac: float = 0.01
  hard_frac: float = 0.05
  l0_warmup_frac: float = 0.05
  hard_freeze: bool = True
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip: float = 1.0
  seed: int = 0
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  log_every: int = 50

  def __post_init__(self):
    for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
      if getattr(self, name) < 1:
        raise ConfigError(f"train.{name} must be >= 1; got {getattr(self, name)}")
    for name in ("warmup_frac", "decay_start_frac", "k_anneal_frac", "alpha_anneal_frac", "hard_frac",
                 "l0_warmup_frac"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ConfigError(f"train.{name} must be in [0, 1]; got {v}")
    if self.decay_start_frac < self.warmup_frac:
      raise ConfigError(
          f"train.decay_start_frac ({self.decay_start_frac}) must be >= train.warmup_frac ({self.warmup_frac})")
    if self.lr is not None and not self.lr > 0:
      raise ConfigError(f"train.lr must be > 0; got {self.lr}")
    if not self.k_lr_scale > 0:
      raise ConfigError(f"train.k_lr_scale must be > 0; got {self.k_lr_scale}")
    if not 0 <= self.seed < 2 ** 32:
      raise ConfigError(f"train.seed must be in [0, 2**32); got {self.seed}")

  def lr_value(self, n_latents: int) -> float:
    return self.lr if self.lr is not None else 2e-4 / math.sqrt(n_latents / 2**14)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The activation data.

  Attributes:
    skip_nonfinite: False stops at the first NaN/Inf row, naming shard and row; True masks such
      rows out of the loss and counts them (metrics.jsonl ``n_skipped``).
    normalize: divide activations by one scalar norm factor sqrt(mean ||x||^2) estimated from
      ``norm_sample_rows`` rows (docs/method.md §2.4); inference works in raw units.
    norm_sample_rows: rows sampled (deterministically) to estimate the norm factor.
    shuffle: a global, per-epoch reshuffle of all rows (grain's index_shuffle permutation, computed a
      batch at a time by softsae_jax.shuffle; O(1) memory).
    prefetch: batches prepared ahead on a background thread.
    seed: the seed of the data order; None means ``train.seed``. A seed sweep (``sweep.seed``) varies
      the initialisation only, so its members' own configs (``softsae sweep-split``) set this to the
      sweep's data seed.
  """

  skip_nonfinite: bool = False
  normalize: bool = True
  norm_sample_rows: int = 16384
  shuffle: bool = True
  prefetch: int = 2
  seed: int | None = None

  def __post_init__(self):
    if self.norm_sample_rows < 1:
      raise ConfigError(f"data.norm_sample_rows must be >= 1; got {self.norm_sample_rows}")
    if self.prefetch < 0:
      raise ConfigError(f"data.prefetch must be >= 0; got {self.prefetch}")
    if self.seed is not None and not 0 <= self.seed < 2 ** 32:
      raise ConfigError(f"data.seed must be in [0, 2**32) (the data order's shuffle seed); got {self.seed}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The device mesh (docs/scale-out.md): ``data`` x ``model`` devices, axes ``("data", "model")``.

  Attributes:
    data: devices along the batch (data-parallel) axis; 0 means all the devices ``model`` leaves.
    model: devices along the latent axis: every F-sized dimension of the state (encoder columns,
      decoder rows, biases, Adam moments, dead counters) is split over them, so a dictionary too wide
      for one device fits, and the selections run shard-local (latent parallelism). Must divide F.

  The mesh does not change the model (only the float summation order), so it may change on resume.
  """

  data: int = 0
  model: int = 1

  def __post_init__(self):
    if self.data < 0:
      raise ConfigError(f"mesh.data must be >= 0 (0 = all the devices mesh.model leaves); got {self.data}")
    if self.model < 1:
      raise ConfigError(f"mesh.model must be >= 1; got {self.model}")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """Several SAEs trained together in one compiled step on the same batches (docs/scale-out.md §Sweeps).

  Attributes:
    k: values of ``sae.k``, one member each (empty: ``sae.k`` only). Not for relu/jumprelu (no k).
    seed: initialisation seeds, one member each (empty: ``train.seed`` only). The data order stays
      that of ``data.seed`` (or ``train.seed``) for every member.

  The members are the product k x seed, in that order (k outer). Each member is the model its own
  config (:meth:`Config.members`) trains alone, up to float summation order.
  """

  k: tuple[int, ...] = ()
  seed: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ("k", "seed"):
      vals = getattr(self, name)
      if len(set(vals)) != len(vals):
        raise ConfigError(f"sweep.{name} has repeated values: {vals}")
    if any(v < 1 for v in self.k):
      raise ConfigError(f"sweep.k values must be >= 1; got {self.k}")
    if any(not 0 <= v < 2 ** 32 for v in self.seed):
      raise ConfigError(f"sweep.seed values must be in [0, 2**32); got {self.seed}")

  def __bool__(self) -> bool:
    return bool(self.k or self.seed)


class Member(typing.NamedTuple):
  """One member of a sweep: its index on the state's leading axis, its k and seed, its own config."""

  index: int
  k: int
  seed: int
  config: "Config"

  @property
  def name(self) -> str:
    return f"k{self.k}-seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Config:
  sae: SaeConfig = dataclasses.field(default_factory=SaeConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)

  @property
  def dead_tokens(self) -> int:
    """AuxK's dead-latent window in tokens: ``sae.dead_tokens``, else ``sae.dead_window_frac`` of the run.

    Examples:
      >>> Config(train=TrainConfig(steps=1000, batch_size=512)).dead_tokens
      10240
      >>> Config(sae=SaeConfig(dead_tokens=400_000)).dead_tokens
      400000
    """
    if self.sae.dead_tokens is not None:
      return self.sae.dead_tokens
    return max(1, int(round(self.sae.dead_window_frac * self.train.steps * self.train.batch_size)))

  @property
  def data_seed(self) -> int:
    """The seed of the data order (``data.seed``, else ``train.seed``)."""
    return self.train.seed if self.data.seed is None else self.data.seed

  def members(self) -> list[Member]:
    """The sweep's members (k outer, seed inner); one member (this config) when there is no sweep.

    Examples:
      >>> cfg = Config(sae=SaeConfig(arch="topk", k=8), sweep=SweepConfig(k=(4, 8), seed=(0, 1)))
      >>> [(m.index, m.name) for m in cfg.members()]
      [(0, 'k4-seed0'), (1, 'k4-seed1'), (2, 'k8-seed0'), (3, 'k8-seed1')]
      >>> m = cfg.members()[1].config
      >>> m.sae.k, m.train.seed, m.data_seed, bool(m.sweep)
      (4, 1, 0, False)
    """
    if not self.sweep:
      return [Member(0, self.sae.k, self.train.seed, self)]
    out = []
    for k in self.sweep.k or (self.sae.k,):
      for seed in self.sweep.seed or (self.train.seed,):
        data = dataclasses.replace(self.data, seed=None if seed == self.data_seed else self.data_seed)
        cfg = dataclasses.replace(self, sae=dataclasses.replace(self.sae, k=k), data=data,
                                  train=dataclasses.replace(self.train, seed=seed), sweep=SweepConfig())
        if self.sae.d_in is not None:
          cfg = cfg.resolve(self.sae.d_in)
        out.append(Member(len(out), k, seed, cfg))
    return out

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  def resolve(self, d_in: int) -> "Config":
    """Returns the config with ``sae.d_in`` (and F, k_max) made concrete; checks them."""
    if self.sae.d_in is not None and self.sae.d_in != d_in:
      raise ConfigError(f"sae.d_in is {self.sae.d_in} but the data has d_model={d_in}")
    sae = dataclasses.replace(self.sae, d_in=d_in)
    # A k sweep keeps k_max unset: each member's default k_max is 2 x its own k.
    auto_kmax = sae.arch == "softsae" and not self.sweep.k
    sae = dataclasses.replace(sae, n_latents=sae.F, k_max=sae.kmax if auto_kmax else sae.k_max)
    if sae.arch == "softsae" and sae.k_input == "top_acts" and sae.k_top is None and self.sweep.k:
      # one estimator shape for every member: the largest member's
      sae = dataclasses.replace(sae, k_top=max(dataclasses.replace(sae, k=k).k_top_width for k in self.sweep.k))
    if sae.F % self.mesh.model:
      raise ConfigError(f"mesh.model ({self.mesh.model}) must divide sae.n_latents ({sae.F})")
    out = dataclasses.replace(self, sae=sae)
    if self.sweep:
      if self.sweep.k and sae.arch in ("relu", "jumprelu"):
        raise ConfigError(f"sweep.k: sae.arch={sae.arch} has no k to sweep; sweep seeds only, or use softsae, "
                          "topk, batchtopk or matryoshka")
      if self.mesh.model > 1:
        raise ConfigError(f"a sweep keeps every member's latents on one device: set mesh.model=1 "
                          f"(got {self.mesh.model}); mesh.data still splits the batch")
      out.members()  # checks every member's own config
    return out


_SECTIONS = {"sae": SaeConfig, "train": TrainConfig, "data": DataConfig, "mesh": MeshConfig, "sweep": SweepConfig}


def _convert(text: str, tp: Any, key: str) -> Any:
  """Parses ``text`` as type ``tp`` (int, float, bool, str, X | None, tuple[float, ...])."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if text.lower() in ("none", "null"):
      return None
    return _convert(text, args[0], key)
  if origin is tuple:
    (elem, _) = typing.get_args(tp)
    parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
    return tuple(_convert(p.strip(), elem, key) for p in parts)
  if tp is bool:
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"{key}: expected true or false, got {text!r}")
  if tp is int:
    try:
      v = float(text)
    except ValueError:
      raise ConfigError(f"{key}: expected an integer, got {text!r}") from None
    if not v.is_integer():
      raise ConfigError(f"{key}: expected an integer, got {text!r}")
    return int(v)
  if tp is float:
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"{key}: expected a number, got {text!r}") from None
  return text


def _field_types(cls) -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def known_keys() -> list[str]:
  return [f"{s}.{n}" for s, cls in _SECTIONS.items() for n in _field_types(cls)]


def _check_key(key: str) -> tuple[str, str, Any]:
  if "." not in key:
    raise ConfigError(f"unknown config key {key!r}: expected section.key, e.g. sae.k")
  section, name = key.split(".", 1)
  if section not in _SECTIONS:
    raise ConfigError(f"unknown config section {section!r} in {key!r}: expected one of {', '.join(_SECTIONS)}")
  fields = _field_types(_SECTIONS[section])
  if name not in fields:
    close = [k for k in fields if k.startswith(name[:3])]
    hint = f" (did you mean {', '.join(section + '.' + c for c in close)}?)" if close else ""
    raise ConfigError(f"unknown config key {key!r}{hint}")
  return section, name, fields[name]


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
  """Applies ``section.key=value`` strings; raises ConfigError naming the key on any problem."""
  changes: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--set expects section.key=value, got {item!r}")
    key, text = item.split("=", 1)
    section, name, tp = _check_key(key.strip())
    changes[section][name] = _convert(text.strip(), tp, key.strip())
  return _replace(cfg, changes)


def _replace(cfg: Config, changes: dict[str, dict[str, Any]]) -> Config:
  kwargs = {}
  for section, vals in changes.items():
    current = getattr(cfg, section)
    kwargs[section] = dataclasses.replace(current, **vals) if vals else current
  return Config(**kwargs)


def from_dict(d: dict[str, Any]) -> Config:
  """Builds a Config from ``to_dict`` output; unknown keys raise ConfigError naming them."""
  changes: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
  for section, vals in d.items():
    if section not in _SECTIONS:
      raise ConfigError(f"unknown config section {section!r}: expected one of {', '.join(_SECTIONS)}")
    for name, v in vals.items():
      _, _, tp = _check_key(f"{section}.{name}")
      if isinstance(v, list):
        v = tuple(v)
      changes[section][name] = v
  return _replace(Config(), changes)


def load_config_file(path: str) -> Config:
  """Loads a Python config file (``get_config() -> Config``) or a JSON file (``to_dict`` layout)."""
  import importlib.util
  import os

  if not os.path.isfile(path):
    raise ConfigError(f"config file {path} not found")
  if path.endswith(".json"):
    with open(path) as f:
      try:
        return from_dict(json.load(f))
      except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
  spec = importlib.util.spec_from_file_location("_softsae_user_config", path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"config file {path}: expected a .py file with get_config() or a .json file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config() function")
  cfg = module.get_config()
  if not isinstance(cfg, Config):
    raise ConfigError(f"config file {path}: get_config() must return softsae_jax.config.Config, got {type(cfg).__name__}")
  return cfg


def diff(a: Config, b: Config) -> list[str]:
  """Keys whose values differ between two configs, as 'section.key: a -> b'."""
  out = []
  da, db = a.to_dict(), b.to_dict()
  for section in da:
    for name in da[section]:
      va, vb = da[section][name], db[section][name]
      if isinstance(va, list):
        va = tuple(va)
      if isinstance(vb, list):
        vb = tuple(vb)
      if va != vb:
        out.append(f"{section}.{name}: {va!r} -> {vb!r}")
  return out
