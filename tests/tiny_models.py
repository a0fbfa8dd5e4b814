"""Helpers shared by the tests that need torch: real text, a tiny random GPT-2, a training subprocess."""

import os
import subprocess
import sys

BOS = "<|endoftext|>"


def topics(n, start=0, max_chars=None):
  """Paragraphs of Python's own docs (shipped with Python), newlines flattened."""
  import pydoc_data.topics

  texts = [" ".join(v.split()) for v in list(pydoc_data.topics.topics.values())[start:start + n]]
  return [t[:max_chars] for t in texts] if max_chars else texts


def save_tiny_gpt2(path) -> str:
  """A random 2-block GPT-2 (n_embd 32) and a byte-level BPE tokenizer trained here, saved in ``path``."""
  import torch
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  bpe.train_from_iterator(topics(20), trainers.BpeTrainer(
      vocab_size=320, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=BOS, unk_token=BOS)
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
  transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
  tok.save_pretrained(path)
  return str(path)


def train_in_subprocess(*args):
  """``softsae train`` in its own process with one CPU device. In a process where torch has run, its
  busy-waiting threads can keep XLA:CPU's 8 simulated devices (tests/conftest.py) from meeting their
  all-reduce rendezvous on a loaded 2-core machine, which aborts the process."""
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "softsae_jax.cli", "train", *map(str, args)], env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
