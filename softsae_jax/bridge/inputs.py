"""Documents, images and token windows for the export bridge (no torch).

Text documents:
  * ``--text-file``: one document per line (UTF-8). Blank (whitespace-only) lines are skipped and
    are not documents; the line's trailing newline is removed, nothing else.
  * ``--texts-jsonl``: one JSON object per line with a string field (``"text"`` by default).
    Blank lines are skipped. A record whose text is empty is a document with no tokens.
  Document ids count the documents actually read, from 0, in file order.

Windows: each document is tokenized once *without* special tokens, giving its content token
sequence ``c_0 .. c_{n-1}``. The sequence is cut into consecutive, non-overlapping chunks of
``seq_len - len(prefix) - len(suffix)`` content tokens (the last chunk may be shorter), and each
window is ``prefix + chunk + suffix``, so every window holds at most ``seq_len`` tokens including the
special tokens. ``prefix``/``suffix`` are the special tokens the tokenizer adds around a single
sequence (BERT: ``[CLS]`` / ``[SEP]``; GPT-2: none), plus a BOS token for causal LMs whose
tokenizer does not add one (see :func:`special_layout`). A content token's position in its
document (``doc_index[:, 1]``) is its index in ``c``; special tokens have no position.

Images: ``--images DIR`` takes the ``.jpg``/``.jpeg``/``.png`` files directly inside DIR (not
recursive, case-insensitive extension), sorted by file name; image ``i`` of that list is document
``i``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from softsae_jax.bridge import ExportError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
T = TypeVar("T")


# --------------------------------------------------------------------------- documents


def _lines(path: str, flag: str) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, line without its newline), with one-line errors."""
  if not os.path.isfile(path):
    raise ExportError(f"{flag} {path}: no such file")
  try:
    with open(path, encoding="utf-8", newline=None) as f:
      for lineno, line in enumerate(f, start=1):
        yield lineno, line.rstrip("\r\n")
  except UnicodeDecodeError as e:
    raise ExportError(f"{flag} {path}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None


def iter_text_file(path: str) -> Iterator[str]:
  """Yields the documents of a ``--text-file``: every non-blank line.

  Args:
    path: a UTF-8 text file, one document per line.

  Returns:
    An iterator over the documents, in file order.

  Raises:
    ExportError: the file is missing or not UTF-8.

  Examples:
    >>> import tempfile
    >>> p = tempfile.mktemp(); _ = open(p, "w").write("a b\\n\\n  \\nc\\n")
    >>> list(iter_text_file(p))
    ['a b', 'c']
  """
  for _, line in _lines(path, "--text-file"):
    if line.strip():
      yield line


def iter_jsonl(path: str, field: str = "text") -> Iterator[str]:
  """Yields the documents of a ``--texts-jsonl`` file: ``record[field]`` of every non-blank line.

  Args:
    path: a UTF-8 file with one JSON object per line.
    field: the string field holding the document text.

  Returns:
    An iterator over the documents, in file order.

  Raises:
    ExportError: the file is missing, a line is not a JSON object, or lacks a string ``field``.

  Examples:
    >>> import tempfile
    >>> p = tempfile.mktemp(); _ = open(p, "w").write('{"text": "hi"}\\n\\n{"text": ""}\\n')
    >>> list(iter_jsonl(p))
    ['hi', '']
  """
  for lineno, record in _jsonl_records(path):
    text = record.get(field)
    if not isinstance(text, str):
      got = "no such field" if field not in record else f"got {type(text).__name__}"
      raise ExportError(f"--texts-jsonl {path} line {lineno}: expected a string field {field!r} "
                      f"(see --text-field), {got}")
    yield text


def _jsonl_records(path: str):
  """(line number, JSON object) of every non-blank line of a ``--texts-jsonl`` file; a line that is
  not a JSON object is a one-line ExportError naming the file and line."""
  for lineno, line in _lines(path, "--texts-jsonl"):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ExportError(f"--texts-jsonl {path} line {lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
      raise ExportError(f"--texts-jsonl {path} line {lineno}: expected a JSON object, got {type(record).__name__}")
    yield lineno, record


def jsonl_labels(path: str, field: str = "label") -> list[str | None]:
  """The optional label of every document of a ``--texts-jsonl`` file (the lines :func:`iter_jsonl` reads).

  Args:
    path: the ``--texts-jsonl`` file.
    field: the label field; a string or an integer (kept as its decimal text); a record without it,
      or with ``null``, has no label.

  Returns:
    One entry per document, in document-id order: the label text or None.

  Raises:
    ExportError: a label that is neither a string nor an integer.

  Examples:
    >>> import tempfile
    >>> p = tempfile.mktemp()
    >>> _ = open(p, "w").write('{"text": "a", "label": "x"}\\n\\n{"text": "b"}\\n{"text": "c", "label": 3}\\n')
    >>> jsonl_labels(p)
    ['x', None, '3']
  """
  out: list[str | None] = []
  for lineno, record in _jsonl_records(path):
    label = record.get(field)
    if label is None:
      out.append(None)
    elif isinstance(label, str) or (isinstance(label, int) and not isinstance(label, bool)):
      out.append(str(label))
    else:
      raise ExportError(f"--texts-jsonl {path} line {lineno}: the {field!r} field must be a string or an integer "
                        f"(see --label-field), got {type(label).__name__}")
  return out


@dataclasses.dataclass(frozen=True)
class InputScan:
  """What a validation pass over the input found: document count and a content fingerprint."""

  n_docs: int
  sha256: str


def scan_documents(docs: Iterable[str]) -> InputScan:
  """Reads every document once (so input errors surface before any model runs) and hashes them.

  Args:
    docs: the documents, e.g. ``iter_text_file(path)``.

  Returns:
    The number of documents and a sha256 over their texts (the resume fingerprint).

  Examples:
    >>> scan_documents(["a", "b"]).n_docs
    2
  """
  h = hashlib.sha256()
  n = 0
  for doc in docs:
    h.update(doc.encode("utf-8"))
    h.update(b"\x00")
    n += 1
  return InputScan(n, h.hexdigest())


# --------------------------------------------------------------------------- windows


@dataclasses.dataclass(frozen=True)
class SpecialLayout:
  """Special token ids around every window: ``prefix + content chunk + suffix``."""

  prefix: tuple[int, ...]
  suffix: tuple[int, ...]

  def chunk_len(self, seq_len: int) -> int:
    """Content tokens per full window, for windows of ``seq_len`` tokens in all."""
    return seq_len - len(self.prefix) - len(self.suffix)


@dataclasses.dataclass(frozen=True)
class Window:
  """One model input: ``ids = prefix + content[start : start + n_content] + suffix`` of document ``doc``."""

  doc: int
  start: int
  ids: tuple[int, ...]
  n_prefix: int
  n_content: int


def special_layout(tokenizer: Any, *, add_bos: bool, probe: str = "Hello world") -> SpecialLayout:
  """Finds the special tokens a tokenizer adds around one sequence.

  The tokenizer encodes ``probe`` with and without special tokens; the special tokens before the
  content are the prefix and those after it the suffix. With ``add_bos`` (used for causal LMs) the
  tokenizer's BOS token is put first when the tokenizer does not add it itself.

  Args:
    tokenizer: a transformers tokenizer.
    add_bos: prepend ``tokenizer.bos_token_id`` if the prefix does not already start with it.
    probe: any text that tokenizes to at least one token.

  Returns:
    The layout.

  Raises:
    ExportError: the tokenizer puts special tokens inside a single sequence (not supported).
  """
  enc = tokenizer(probe, add_special_tokens=True, return_special_tokens_mask=True, verbose=False)
  ids = list(enc["input_ids"])
  mask = list(enc["special_tokens_mask"])
  plain = list(tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"])
  content = [i for i, m in enumerate(mask) if not m]
  if not content or [ids[i] for i in range(content[0], content[-1] + 1)] != plain:
    raise ExportError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')}: expected special tokens only "
                    f"before/after the text, got {ids} for {probe!r} (plain {plain})")
  prefix = tuple(ids[:content[0]])
  suffix = tuple(ids[content[-1] + 1:])
  bos = getattr(tokenizer, "bos_token_id", None)
  if add_bos and bos is not None and prefix[:1] != (bos,):
    prefix = (int(bos),) + prefix
  return SpecialLayout(tuple(int(i) for i in prefix), tuple(int(i) for i in suffix))


def windows_for_doc(doc: int, content: Sequence[int], layout: SpecialLayout, seq_len: int) -> list[Window]:
  """Cuts one document's content tokens into windows of at most ``seq_len`` tokens.

  Args:
    doc: the document id.
    content: the document's token ids without special tokens.
    layout: the special tokens around each window.
    seq_len: the most tokens in a window, special tokens included.

  Returns:
    The windows in order; none for an empty document.

  Raises:
    ExportError: ``seq_len`` leaves no room for content.

  Examples:
    >>> lay = SpecialLayout(prefix=(101,), suffix=(102,))
    >>> [w.ids for w in windows_for_doc(0, [5, 6, 7], lay, seq_len=4)]
    [(101, 5, 6, 102), (101, 7, 102)]
  """
  chunk = layout.chunk_len(seq_len)
  if chunk < 1:
    raise ExportError(f"--seq-len {seq_len}: leaves no room for text after the {seq_len - chunk} special tokens")
  out = []
  for start in range(0, len(content), chunk):
    piece = tuple(int(t) for t in content[start:start + chunk])
    out.append(Window(doc, start, layout.prefix + piece + layout.suffix, len(layout.prefix), len(piece)))
  return out


def iter_windows(docs: Iterable[str], tokenize: Callable[[list[str]], list[list[int]]], layout: SpecialLayout,
                 seq_len: int, docs_per_call: int = 64) -> Iterator[Window]:
  """Tokenizes documents (a few at a time) and yields their windows in (document, window) order.

  Args:
    docs: the documents.
    tokenize: maps a list of texts to their token ids without special tokens.
    layout: the special tokens around each window.
    seq_len: the most tokens in a window, special tokens included.
    docs_per_call: documents per ``tokenize`` call.

  Returns:
    An iterator over all windows.
  """
  doc_id = 0
  it = iter(docs)
  while True:
    texts = list(itertools.islice(it, docs_per_call))
    if not texts:
      return
    for content in tokenize(texts):
      yield from windows_for_doc(doc_id, content, layout, seq_len)
      doc_id += 1


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
  """Consecutive lists of ``n`` items (the last may be shorter).

  Examples:
    >>> list(batched(range(5), 2))
    [[0, 1], [2, 3], [4]]
  """
  it = iter(items)
  while batch := list(itertools.islice(it, n)):
    yield batch


# --------------------------------------------------------------------------- images


def list_images(directory: str) -> list[str]:
  """The image files of ``--images DIR``, sorted by name.

  Args:
    directory: a folder holding ``.jpg``/``.jpeg``/``.png`` files.

  Returns:
    Their paths.

  Raises:
    ExportError: the folder is missing or holds no image files.
  """
  if not os.path.isdir(directory):
    raise ExportError(f"--images {directory}: no such directory")
  names = sorted(n for n in os.listdir(directory)
                 if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, n)))
  if not names:
    raise ExportError(f"--images {directory}: no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files found")
  return [os.path.join(directory, n) for n in names]


def load_image(path: str) -> Any:
  """Opens one image as RGB (a ``PIL.Image``).

  Raises:
    ExportError: the file is not a readable image.
  """
  from PIL import Image  # pillow is part of the bridge extra

  try:
    with Image.open(path) as im:
      return im.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ExportError(f"--images {path}: cannot read the image ({type(e).__name__}: {e})") from None


def scan_images(paths: Sequence[str]) -> InputScan:
  """Checks every image header and fingerprints the images by name, size and contents.

  Args:
    paths: from :func:`list_images`.

  Returns:
    The number of images and a sha256 over their file names and bytes.

  Raises:
    ExportError: an image is unreadable.
  """
  from PIL import Image

  h = hashlib.sha256()
  for path in paths:
    try:
      with Image.open(path) as im:
        im.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      raise ExportError(f"--images {path}: cannot read the image ({type(e).__name__}: {e})") from None
    h.update(os.path.basename(path).encode("utf-8") + b"\x00")
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return InputScan(len(paths), h.hexdigest())
