"""Splice a trained SAE into a Flax NNX language model and compare next-token cross-entropy.

A tiny NNX transformer LM (the ~40 lines below) is trained for a few seconds on a synthetic token
stream; its block-L outputs are written as activation shards, a TopK SAE is trained on them with
``softsae_jax``, and the SAE is spliced after block L by replacing the block with a wrapper
(:class:`Spliced`) holding the block and a :class:`softsae_jax.flax_adapter.SaeSplice`. Prints the
clean, SAE-spliced and zero-ablated CE (the spliced CE sits between the other two; closer to clean is
better). About a minute on a 2-core CPU, offline::

  python examples/nnx_splice.py [--layer 1] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# --------------------------------------------------------------------------- a tiny NNX LM


class Block(nnx.Module):
  def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
    self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
    self.up, self.down = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)

  def __call__(self, x):
    causal = nnx.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
    x = x + self.attn(self.ln1(x), mask=causal)
    return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class TinyLM(nnx.Module):
  def __init__(self, vocab: int = 32, d: int = 32, layers: int = 2, heads: int = 2, max_len: int = 64, *,
               rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, d, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_len, d)))
    self.blocks = nnx.List([Block(d, heads, rngs) for _ in range(layers)])
    self.ln_f = nnx.LayerNorm(d, rngs=rngs)

  def __call__(self, tokens, *, upto: int | None = None):
    """Logits [B, T, vocab]; with ``upto=L`` the output of block L instead (the SAE's input)."""
    x = self.embed(tokens) + self.pos[...][None, : tokens.shape[-1]]
    for i, block in enumerate(self.blocks):
      x = block(x)
      if i == upto:
        return x
    return self.embed.attend(self.ln_f(x))


def cross_entropy(logits, tokens):
  """Mean next-token CE: position t predicts token t + 1."""
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


# --------------------------------------------------------------------------- the splice


class Spliced(nnx.Module):
  """Block L followed by the SAE: ``model.blocks[L] = Spliced(model.blocks[L], sae)``."""

  def __init__(self, block: nnx.Module, sae: nnx.Module):
    self.block, self.sae = block, sae

  def __call__(self, x):
    return self.sae(self.block(x))


def splice(model: TinyLM, layer: int, sae: nnx.Module) -> TinyLM:
  """Replaces block ``layer`` of ``model`` (in place) by the block followed by ``sae``; returns the model."""
  model.blocks[layer] = Spliced(model.blocks[layer], sae)
  return model


# --------------------------------------------------------------------------- the demo


def synthetic_tokens(rng: np.random.Generator, n: int, seq_len: int, vocab: int) -> np.ndarray:
  """Sequences of a noisy order-2 rule (t = a*t1 + b*t2 mod vocab), learnable by a tiny model."""
  toks = np.zeros((n, seq_len), np.int32)
  toks[:, :2] = rng.integers(0, vocab, size=(n, 2))
  for t in range(2, seq_len):
    toks[:, t] = (3 * toks[:, t - 1] + toks[:, t - 2] + (rng.random(n) < 0.1)) % vocab
  return toks


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--layer", type=int, default=1)
  ap.add_argument("--lm-steps", type=int, default=300)
  ap.add_argument("--steps", type=int, default=300, help="SAE training steps")
  args = ap.parse_args(argv)

  import absl.logging

  absl.logging.set_verbosity(absl.logging.ERROR)  # orbax's INFO/WARNING lines
  from softsae_jax import config as config_lib
  from softsae_jax import evaluate, trainer
  from softsae_jax.flax_adapter import SaeSplice
  from softsae_jax.shards import ShardWriter

  rng = np.random.default_rng(0)
  vocab, seq_len = 32, 64
  train_toks, test_toks = synthetic_tokens(rng, 512, seq_len, vocab), synthetic_tokens(rng, 64, seq_len, vocab)
  model = TinyLM(vocab=vocab, max_len=seq_len, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def lm_step(model, opt, tokens):
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(tokens), tokens))(model)
    opt.update(model, grads)
    return loss

  for s in range(args.lm_steps):
    lm_step(model, opt, jnp.asarray(train_toks[(s * 32) % 512:(s * 32) % 512 + 32]))

  with tempfile.TemporaryDirectory() as tmp:
    acts = os.path.join(tmp, "acts")
    h = np.asarray(nnx.jit(lambda m, t: m(t, upto=args.layer))(model, jnp.asarray(train_toks)))
    writer = ShardWriter(acts, d_model=h.shape[-1], dtype="float32",
                         source={"model": "TinyLM", "layer": args.layer, "site": "block_output", "seq_len": seq_len})
    writer.add(h.reshape(-1, h.shape[-1]))
    writer.close()
    cfg = config_lib.apply_overrides(config_lib.Config(), [
        "sae.arch=topk", "sae.k=8", "sae.expansion=4", f"train.steps={args.steps}", "train.batch_size=256",
        "train.lr=1e-3"])
    trainer.train(acts, os.path.join(tmp, "sae"), cfg, progress=False, log=lambda m: None)
    sae = SaeSplice(evaluate.load(os.path.join(tmp, "sae")))

  tokens = jnp.asarray(test_toks)
  ce = nnx.jit(lambda m, t: cross_entropy(m(t), t))
  clean = float(ce(model, tokens))
  zero = SaeSplice.from_params(sae.cfg, sae.params()._replace(
      w_dec=jnp.zeros_like(sae.w_dec[...]), b_dec=jnp.zeros_like(sae.b_dec[...])), norm_factor=1.0)
  spliced = float(ce(splice(nnx.clone(model), args.layer, sae), tokens))
  ablated = float(ce(splice(nnx.clone(model), args.layer, zero), tokens))
  print(f"next-token CE on held-out sequences (block {args.layer} output spliced):")
  print(f"  clean {clean:.4f}   SAE {spliced:.4f}   zero-ablated {ablated:.4f}   "
        f"CE recovered {(ablated - spliced) / max(ablated - clean, 1e-9):.3f}")


if __name__ == "__main__":
  main()
