"""Display strings for token ids, written as the dataset's ``vocab.json`` (no torch).

``vocab[id]`` is the token as readable text, following one convention for every tokenizer: a
token that starts a new word carries a leading space, so concatenating the strings of a window
gives back (roughly) its text.
  * byte-level BPE (GPT-2, Llama 3, ...): the byte alphabet is decoded, so ``Ġhello`` -> ``" hello"``
    and ``Ċ`` -> ``"\\n"``; a token holding part of a multi-byte character shows U+FFFD.
  * SentencePiece (Llama 2, T5, ...): ``▁`` -> ``" "``; byte-fallback tokens ``<0x0A>`` become the
    character for ASCII bytes and stay as written otherwise.
  * WordPiece (BERT, MiniLM): ``##ing`` -> ``"ing"`` and a word-initial token gets a leading space.
Special tokens (``[CLS]``, ``<|endoftext|>``, ...) are kept as written; an id the tokenizer cannot
map shows as ``<id N>``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"
WORDPIECE = "wordpiece"
PLAIN = "plain"


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
  """The inverse of GPT-2's printable byte alphabet (the same table the tokenizers library uses)."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  chars = list(printable)
  extra = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return {chr(c): b for b, c in zip(printable, chars)}


def detect_style(tokens: Sequence[str | None]) -> str:
  """Guesses the tokenizer family from its vocabulary's word-boundary markers.

  Args:
    tokens: the vocabulary, ``tokens[id]``.

  Returns:
    One of ``byte_level``, ``sentencepiece``, ``wordpiece``, ``plain``.

  Examples:
    >>> detect_style(["[CLS]", "hello", "##ing", "##s"])
    'wordpiece'
    >>> detect_style(["Ġthe", "Ġa", "b"])
    'byte_level'
  """
  counts = {BYTE_LEVEL: 0, SENTENCEPIECE: 0, WORDPIECE: 0}
  for t in tokens:
    if not t:
      continue
    if t.startswith("Ġ") or t == "Ċ":
      counts[BYTE_LEVEL] += 1
    elif t.startswith("▁"):
      counts[SENTENCEPIECE] += 1
    elif t.startswith("##") and len(t) > 2:
      counts[WORDPIECE] += 1
  style = max(counts, key=counts.__getitem__)
  return style if counts[style] * 100 >= max(1, len(tokens)) else PLAIN


def render_token(token: str, style: str) -> str:
  """One (non-special) token as display text, by the module's leading-space convention.

  Examples:
    >>> render_token("Ġhello", "byte_level"), render_token("▁hello", "sentencepiece")
    (' hello', ' hello')
    >>> render_token("##ing", "wordpiece"), render_token("hello", "wordpiece")
    ('ing', ' hello')
    >>> render_token("<0x0A>", "sentencepiece")
    '\\n'
  """
  if style == BYTE_LEVEL:
    dec = _byte_decoder()
    if all(c in dec for c in token):
      return bytes(dec[c] for c in token).decode("utf-8", errors="replace")
    return token
  if style == SENTENCEPIECE:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
      try:
        b = int(token[3:5], 16)
      except ValueError:
        return token
      return chr(b) if b < 0x80 else token
    return token.replace("▁", " ")
  if style == WORDPIECE:
    if token.startswith("##") and len(token) > 2:
      return token[2:]
    if len(token) > 2 and token.startswith("[") and token.endswith("]"):
      return token  # BERT's reserved "[unused0]"-style entries are markers, not words
    return " " + token
  return token


def display_vocab(tokenizer: Any) -> list[str]:
  """``vocab[id]`` = display string of every token id of a transformers tokenizer.

  Args:
    tokenizer: a transformers tokenizer.

  Returns:
    A list covering ids ``0 .. max id``.
  """
  vocab = tokenizer.get_vocab()
  n = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
  tokens: list[str | None] = [None] * n
  for tok, i in vocab.items():
    if 0 <= i < n:
      tokens[i] = tok
  style = detect_style(tokens)
  special = set(getattr(tokenizer, "all_special_tokens", ()))
  added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
  for i, added_tok in added.items():
    if 0 <= i < n and getattr(added_tok, "special", False):
      special.add(tokens[i] if tokens[i] is not None else str(added_tok))
  out = []
  for i, tok in enumerate(tokens):
    if tok is None:
      out.append(f"<id {i}>")
    elif tok in special:
      out.append(tok)
    else:
      out.append(render_token(tok, style))
  return out
