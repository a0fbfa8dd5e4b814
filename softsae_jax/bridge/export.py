"""``softsae export``: run a transformers model over text or images and write activation shards.

Usage::

  softsae export --model NAME_OR_PATH --layer L --out DIR (--text-file FILE | --texts-jsonl FILE | --images DIR)
  python -m softsae_jax.bridge.export ...   (same flags)

What is exported: the output of transformer block ``L`` (0-indexed), i.e. ``hidden_states[L + 1]``
of the model run with ``output_hidden_states=True`` (site ``block_output``; details, including the
final-norm caveat for the last block of GPT-2/Llama, in :mod:`softsae_jax.bridge.models`). One row
per exported token, written as ``softsae-activations/1`` shards (docs/data-format.md) through
:class:`softsae_jax.shards.ShardWriter`, in natural order: (document, window, position).

Inputs (exactly one):
  --text-file FILE     one document per line, UTF-8; blank lines are skipped.
  --texts-jsonl FILE   one JSON object per line; the document is its "text" field (--text-field).
  --images DIR         the .jpg/.jpeg/.png files in DIR, sorted by name; one image = one document.

Text windows: every document is tokenized without special tokens and cut into consecutive,
non-overlapping chunks; each window is ``prefix + chunk + suffix`` where prefix/suffix are the
special tokens the tokenizer adds to one sequence (BERT: [CLS] ... [SEP]; GPT-2: none) and, for
causal LMs whose tokenizer does not add a BOS token itself (GPT-2), the BOS token is prepended
(``--no-bos`` turns that off). Each window holds at most ``--seq-len`` tokens *including* those
special tokens, so a full window has ``seq_len - len(prefix) - len(suffix)`` content tokens; the last
window of a document may be shorter. Windows are batched ``--batch-size`` at a time, right-padded
with an attention mask. Rows at the added special positions (BOS/CLS/SEP/EOS) and at padding are not
exported; every content token is exported exactly once.

Per-row side files: ``tokens`` (int32 token id) and ``doc_index`` (int32 [N, 2]: document id, and
the token's position in the document's content token sequence, i.e. without the added special
tokens). ``vocab.json`` maps token ids to display strings (see :mod:`softsae_jax.bridge.vocab`) and
is referenced from the manifest as ``"vocab": "vocab.json"``.

Document labels: when the records of ``--texts-jsonl`` carry a ``"label"`` field (``--label-field``;
a string or an integer, optional per record), ``labels.json`` holds them by document id — the
``doc_index[:, 0]`` of every row — and the manifest references it as ``"labels": "labels.json"``
(format in docs/data-format.md). ``softsae probe`` reads it.

Images: the model's image processor (``AutoImageProcessor``) prepares each image; for CLIP/SigLIP
checkpoints the vision tower is run. ``--vision-tokens`` picks the rows: ``patch`` (default, the
patch tokens), ``cls`` (position 0 only) or ``all``. ``doc_index`` = (image id, position in the
block's output sequence, CLS = 0); ``tokens`` = that same position id, and ``vocab.json`` names the
positions ("[CLS]", "patch r0 c3", ...). The manifest's ``vision`` block records tokens per image,
the number of prefix (CLS-like) tokens, the patch grid and rows per image.

Flags and defaults:
  --model            (required) local transformers folder, or a hub name when online
  --layer            (required) block index L, 0 <= L < num_hidden_layers
  --out              (required) output directory
  --tokenizer        tokenizer folder or hub name (default: --model)
  --text-field       JSON field of --texts-jsonl records (default: text)
  --seq-len          tokens per text window, special tokens included (default: 128)
  --batch-size       windows or images per forward pass (default: 16)
  --max-tokens       stop after exactly this many exported rows (default: all)
  --rows-per-shard   rows per shard file (default: 65536)
  --dtype            stored dtype, float16 or float32 (default: float16)
  --device           torch device (default: cpu)
  --torch-dtype      model weights/compute dtype: float32, float16, bfloat16 (default: float32)
  --arch             text model kind: auto, causal, encoder (default: auto, from the model type)
  --no-bos           causal LMs: do not prepend BOS when the tokenizer does not add it
  --vision-tokens    patch, cls or all (default: patch)
  --quiet            no progress bar (default: a tqdm bar on stderr, in tokens/s)

Manifest ``source`` block: model, layer, site ("block_output"), hidden_states_index (L + 1),
n_layers, seq_len (text: --seq-len; images: tokens per image), tokenizer (text; null for images),
image_processor (images), arch (causal/encoder/vision), model_type, dtype (stored),
torch_dtype (compute), and for text the special token ids around each window.

Resume: the manifest also stores ``export_args``, a fingerprint of every setting that changes the
rows (model, tokenizer, layer, input path and a sha256 of its contents, seq_len, batch_size,
max_tokens, rows_per_shard, dtype, device, torch_dtype, arch, BOS, vision tokens). Windows and
batches are deterministic, and ShardWriter rewrites the manifest (``"complete": false``) after every
shard. Started again with the same settings on the same ``--out``, the export reopens it with
``ShardWriter.resume``, skips the batches whose rows are all written, recomputes the batch that was
cut and drops its rows already written, so the result equals an uninterrupted export exactly. A
complete export with the same settings prints "export already complete" and exits 0. An ``--out``
holding a different export or anything else is an error and nothing is overwritten; an ``--out``
holding only files of an export killed before its first shard is started afresh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from softsae_jax.bridge import ExportError, inputs
from softsae_jax.cli import ArgumentParser, run_command
from softsae_jax.cli_types import nonneg_int, positive_int
from softsae_jax.shards import MANIFEST, ShardWriter

EXPORT_VERSION = 1
SITE = "block_output"
VOCAB_FILE = "vocab.json"
LABELS_FILE = "labels.json"
LABELS_FORMAT = "softsae-labels/1"
VISION_TOKENS = ("patch", "cls", "all")
ARCHS = ("auto", "causal", "encoder")
# Files a killed export may leave before its first manifest: ShardWriter's shards and side files
# (and their temporary names), the vocabulary.
_OWN_FILE = re.compile(r"^((shard|tokens|doc_index)_\d{5}\.npy(\.tmp\.npy)?|(vocab|labels)\.json(\.tmp)?|"
                       r"manifest\.json\.tmp)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the export flags to ``parser`` (the ``softsae export`` subparser or a standalone one).

  Args:
    parser: an ``argparse.ArgumentParser``; its description and epilog are set if still empty.
  """
  if not parser.description:
    parser.description = ("Run a transformers model over text or images and write the output of block L "
                          "(hidden_states[L+1]) as softsae-activations/1 shards, one row per token.")
  if not parser.epilog:
    parser.epilog = ("Special tokens (BOS/CLS/SEP/EOS) and padding are not exported. Rerunning the same command "
                     "on the same --out resumes a killed export; a finished one is left as it is. "
                     "Details: python -c 'import softsae_jax.bridge.export as e; help(e)'.")
  parser.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                      help="transformers model folder, or a Hugging Face hub name when online (required)")
  parser.add_argument("--layer", required=True, type=nonneg_int, metavar="L",
                      help="block index, 0 <= L < num_hidden_layers; exports hidden_states[L+1] (required)")
  parser.add_argument("--out", required=True, metavar="DIR", help="output dataset directory (required)")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--text-file", metavar="FILE", help="UTF-8 text, one document per line; blank lines skipped")
  src.add_argument("--texts-jsonl", metavar="FILE", help="one JSON object per line with a text field")
  src.add_argument("--images", metavar="DIR", help="folder of .jpg/.jpeg/.png images, sorted by name")
  parser.add_argument("--text-field", default="text", metavar="NAME",
                      help="field of --texts-jsonl records holding the text (default: text)")
  parser.add_argument("--label-field", default="label", metavar="NAME",
                      help="optional field of --texts-jsonl records holding a document label (string or integer), "
                           "kept in labels.json by document id (default: label)")
  parser.add_argument("--tokenizer", default=None, metavar="NAME_OR_PATH",
                      help="tokenizer folder or hub name (default: same as --model)")
  parser.add_argument("--seq-len", type=positive_int, default=128, metavar="N",
                      help="tokens per window, special tokens included (default: 128)")
  parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                      help="windows (or images) per forward pass (default: 16)")
  parser.add_argument("--max-tokens", type=positive_int, default=None, metavar="N",
                      help="stop after exactly N exported rows (default: export everything)")
  parser.add_argument("--rows-per-shard", type=positive_int, default=65536, metavar="N",
                      help="rows per shard file (default: 65536)")
  parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                      help="dtype of the stored rows (default: float16)")
  parser.add_argument("--device", default="cpu", help="torch device to run the model on (default: cpu)")
  parser.add_argument("--torch-dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                      help="dtype of the model weights and compute (default: float32)")
  parser.add_argument("--arch", choices=ARCHS, default="auto",
                      help="text model kind; auto = causal for decoder-only LMs, else encoder (default: auto)")
  parser.add_argument("--no-bos", action="store_true",
                      help="causal LMs: do not prepend the BOS token when the tokenizer does not add it "
                           "(default: prepend)")
  parser.add_argument("--vision-tokens", choices=VISION_TOKENS, default="patch",
                      help="images: export the patch tokens, the CLS token, or all (default: patch)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar (default: tqdm on stderr)")


# --------------------------------------------------------------------------- input and fingerprint


class _Input:
  """The validated input: which flag, its path, and a scan (count + sha256)."""

  def __init__(self, args: argparse.Namespace):
    if args.images is not None:
      self.kind, self.flag, self.path = "images", "--images", args.images
      self.images = inputs.list_images(args.images)
      self.scan = inputs.scan_images(self.images)
      return
    if args.text_file is not None:
      self.kind, self.flag, self.path = "text", "--text-file", args.text_file
    else:
      self.kind, self.flag, self.path = "text", "--texts-jsonl", args.texts_jsonl
    self.text_field = args.text_field
    self.scan = inputs.scan_documents(self.documents())
    if self.scan.n_docs == 0:
      raise ExportError(f"{self.flag} {self.path}: no documents (the file is empty or every line is blank)")
    self.label_field = getattr(args, "label_field", "label")
    self.labels: list[str | None] | None = None
    if self.flag == "--texts-jsonl":
      labels = inputs.jsonl_labels(self.path, self.label_field)
      self.labels = labels if any(lab is not None for lab in labels) else None

  def documents(self) -> Iterator[str]:
    if self.flag == "--text-file":
      return inputs.iter_text_file(self.path)
    return inputs.iter_jsonl(self.path, self.text_field)


def labels_record(labels: list[str | None], field: str) -> dict[str, Any]:
  """The ``labels.json`` object: class names (sorted) and each document's class index (-1: no label).

  Examples:
    >>> labels_record(["b", None, "a", "b"], "label")["doc_label"]
    [1, -1, 0, 1]
  """
  classes = sorted({lab for lab in labels if lab is not None})
  index = {c: i for i, c in enumerate(classes)}
  return {"format": LABELS_FORMAT, "field": field, "classes": classes,
          "doc_label": [index[lab] if lab is not None else -1 for lab in labels]}


def _identity(name: str) -> str:
  """A model/tokenizer name as recorded in the fingerprint: absolute path for local folders."""
  return os.path.abspath(name) if os.path.exists(name) else name


def export_fingerprint(args: argparse.Namespace, inp: _Input) -> dict[str, Any]:
  """Every setting that changes the exported rows; stored in the manifest as ``export_args``.

  Args:
    args: the parsed flags.
    inp: the scanned input.

  Returns:
    A JSON-serialisable dict; two runs may share an ``--out`` only if theirs are equal.
  """
  text = inp.kind == "text"
  labelled = {}
  if getattr(inp, "labels", None) is not None:  # only when there are labels: older fingerprints stay valid
    labelled = {"label_field": inp.label_field,
                "labels_sha256": hashlib.sha256(json.dumps(inp.labels).encode("utf-8")).hexdigest()}
  return {
      "version": EXPORT_VERSION,
      "model": _identity(args.model),
      "tokenizer": _identity(args.tokenizer or args.model) if text else None,
      "layer": args.layer,
      "input": inp.flag,
      "input_path": os.path.abspath(inp.path),
      "input_sha256": inp.scan.sha256,
      "text_field": args.text_field if inp.flag == "--texts-jsonl" else None,
      "seq_len": args.seq_len if text else None,
      "batch_size": args.batch_size,
      "max_tokens": args.max_tokens,
      "rows_per_shard": args.rows_per_shard,
      "dtype": args.dtype,
      "device": args.device,
      "torch_dtype": args.torch_dtype,
      "arch": args.arch if text else "vision",
      "bos": (not args.no_bos) if text else None,
      "vision_tokens": None if text else args.vision_tokens,
      **labelled,
  }


def _out_state(out: str, fingerprint: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
  """``("fresh" | "resume" | "complete", manifest)`` for ``--out``.

  Raises:
    ExportError: ``--out`` holds something that is not this export.
  """
  mpath = os.path.join(out, MANIFEST)
  if os.path.isfile(mpath):
    try:
      with open(mpath) as f:
        manifest = json.load(f)
    except (OSError, ValueError) as e:
      raise ExportError(f"--out {out}: {MANIFEST} is unreadable ({type(e).__name__}); "
                      "choose another --out or delete the folder") from None
    previous = manifest.get("export_args") if isinstance(manifest, dict) else None
    if not isinstance(previous, dict):
      raise ExportError(f"--out {out}: already holds a dataset not written by softsae export; choose another --out")
    if previous != fingerprint:
      key = next(k for k in sorted(set(previous) | set(fingerprint)) if previous.get(k) != fingerprint.get(k))
      raise ExportError(f"--out {out}: already holds an export with different settings ({key}: "
                      f"{previous.get(key)!r} there, {fingerprint.get(key)!r} now); use another --out or delete it")
    return ("complete" if manifest.get("complete") else "resume"), manifest
  if os.path.exists(out):
    if not os.path.isdir(out):
      raise ExportError(f"--out {out}: exists and is not a directory")
    foreign = sorted(n for n in os.listdir(out) if not _OWN_FILE.match(n))
    if foreign:
      raise ExportError(f"--out {out}: folder exists and is not a softsae export (it holds {foreign[0]}); "
                      "choose another --out")
  return "fresh", None


def _clear_partial(out: str) -> None:
  """Removes what an export killed before its first manifest left behind (only our own file names)."""
  if os.path.isdir(out):
    for name in os.listdir(out):
      if _OWN_FILE.match(name):
        os.remove(os.path.join(out, name))


def _write_labels(out: str, inp: _Input) -> None:
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, LABELS_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(labels_record(inp.labels, inp.label_field), f, ensure_ascii=False)
  os.replace(path + ".tmp", path)


def _write_vocab(out: str, vocab: list[str]) -> None:
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, VOCAB_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------- the row loop


def _write_rows(batches: Iterator[tuple[Any, int | None]], compute: Callable[[Any], tuple[np.ndarray, dict]],
                make_writer: Callable[[int], ShardWriter], writer: ShardWriter | None, max_tokens: int | None,
                quiet: bool) -> ShardWriter | None:
  """Runs the batches and adds their rows, skipping rows already written and stopping at ``max_tokens``.

  Args:
    batches: ``(batch, n_rows)`` in data order; ``n_rows`` may be None only when nothing is skipped.
    compute: ``batch -> (x_ND float32, side arrays)`` (runs the model).
    make_writer: ``d_model -> ShardWriter`` for a fresh export (called on the first rows).
    writer: the resumed writer, or None for a fresh export.
    max_tokens: stop after this many rows in all.
    quiet: no progress bar.

  Returns:
    The writer (None if no batch produced a row).
  """
  from tqdm import tqdm

  n_skip = writer.n_rows if writer is not None else 0
  row = 0  # global index of the first row of the current batch
  bar = tqdm(total=max_tokens, initial=n_skip, unit="tok", unit_scale=True, file=sys.stderr, disable=quiet,
             desc="export", dynamic_ncols=True)
  try:
    for batch, n_rows in batches:
      if max_tokens is not None and row >= max_tokens:
        break
      if n_rows is not None and row + n_rows <= n_skip:
        row += n_rows
        continue
      x_ND, side = compute(batch)
      n = len(x_ND)
      lo = min(max(n_skip - row, 0), n)
      hi = n if max_tokens is None else max(lo, min(n, max_tokens - row))
      if hi > lo:
        if writer is None:
          writer = make_writer(x_ND.shape[1])
        writer.add(x_ND[lo:hi], **{k: v[lo:hi] for k, v in side.items()})
        bar.update(hi - lo)
      row += n
  finally:
    bar.close()
  return writer


def _check_layer(layer: int, n_layers: int, model: str) -> None:
  if not 0 <= layer < n_layers:
    raise ExportError(f"--layer {layer}: out of range; {model} has {n_layers} blocks, "
                      f"expected 0 <= L <= {n_layers - 1}")


def _export_text(args: argparse.Namespace, inp: _Input, fingerprint: dict[str, Any], state: str) -> ShardWriter | None:
  from softsae_jax.bridge import models, vocab

  config = models.load_config(args.model)
  kind = models.text_kind(config, args.arch, args.model)
  n_layers = models.num_layers(config, args.model)
  _check_layer(args.layer, n_layers, args.model)
  limit = models.max_positions(config)
  if limit is not None and args.seq_len > limit:
    raise ExportError(f"--seq-len {args.seq_len}: longer than the model's {limit} positions")
  tok_name = args.tokenizer or args.model
  tokenizer = models.load_tokenizer(tok_name)
  layout = inputs.special_layout(tokenizer, add_bos=(kind == "causal" and not args.no_bos))
  if layout.chunk_len(args.seq_len) < 1:
    raise ExportError(f"--seq-len {args.seq_len}: leaves no room for text after the "
                    f"{len(layout.prefix) + len(layout.suffix)} special tokens of each window")
  device = models.torch_device(args.device)
  model = models.load_model(args.model, config, kind, device, args.torch_dtype)
  reader = models.LayerReader(model, args.layer, n_layers, {"use_cache": False} if kind == "causal" else None)
  pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)

  source = {"model": args.model, "layer": args.layer, "site": SITE, "hidden_states_index": args.layer + 1,
            "n_layers": n_layers, "seq_len": args.seq_len, "tokenizer": tok_name, "arch": kind,
            "model_type": config.model_type, "dtype": args.dtype, "torch_dtype": args.torch_dtype,
            "special_tokens": {"prefix": list(layout.prefix), "suffix": list(layout.suffix)}}

  labelled = inp.labels is not None

  def make_writer(d_model: int) -> ShardWriter:
    _write_vocab(args.out, vocab.display_vocab(tokenizer))
    if labelled:
      _write_labels(args.out, inp)
    return ShardWriter(args.out, d_model=d_model, dtype=args.dtype, rows_per_shard=args.rows_per_shard,
                       source=source, extra={"vocab": VOCAB_FILE, "export_args": fingerprint,
                                             **({"labels": LABELS_FILE} if labelled else {})})

  writer = None
  if state == "resume":
    writer = ShardWriter.resume(args.out)
    if not os.path.isfile(os.path.join(args.out, VOCAB_FILE)):
      _write_vocab(args.out, vocab.display_vocab(tokenizer))
    if labelled and not os.path.isfile(os.path.join(args.out, LABELS_FILE)):
      _write_labels(args.out, inp)

  def tokenize(texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

  def compute(windows: list[inputs.Window]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x_BTD = reader(models.text_inputs(windows, pad_id, device))
    rows, tokens, doc_index = [], [], []
    for b, w in enumerate(windows):
      span = slice(w.n_prefix, w.n_prefix + w.n_content)
      rows.append(x_BTD[b, span])
      tokens.append(np.asarray(w.ids[span], dtype=np.int32))
      doc_index.append(np.stack([np.full(w.n_content, w.doc, np.int32),
                                 np.arange(w.start, w.start + w.n_content, dtype=np.int32)], axis=1))
    return np.concatenate(rows), {"tokens": np.concatenate(tokens), "doc_index": np.concatenate(doc_index)}

  windows = inputs.iter_windows(inp.documents(), tokenize, layout, args.seq_len)
  batches = ((b, sum(w.n_content for w in b)) for b in inputs.batched(windows, args.batch_size))
  return _write_rows(batches, compute, make_writer, writer, args.max_tokens, args.quiet)


def _position_names(n_tokens: int, n_prefix: int, grid: tuple[int, int] | None) -> list[str]:
  """``vocab.json`` for images: a name for every position of the block's output sequence."""
  names = []
  for pos in range(n_tokens):
    if pos < n_prefix:
      names.append("[CLS]" if pos == 0 else f"[prefix {pos}]")
    elif grid is not None:
      r, c = divmod(pos - n_prefix, grid[1])
      names.append(f"patch r{r} c{c}")
    else:
      names.append(f"patch {pos - n_prefix}")
  return names


def _export_images(args: argparse.Namespace, inp: _Input, fingerprint: dict[str, Any], state: str,
                   manifest: dict[str, Any] | None) -> ShardWriter | None:
  from softsae_jax.bridge import models

  config = models.load_config(args.model)
  vconfig = models.tower_config(config, "vision")
  n_layers = models.num_layers(vconfig, args.model)
  _check_layer(args.layer, n_layers, args.model)
  processor = models.load_image_processor(args.model)
  device = models.torch_device(args.device)
  model = models.load_model(args.model, config, "vision", device, args.torch_dtype)
  reader = models.LayerReader(model, args.layer, n_layers)
  layout: dict[str, Any] = dict(manifest["vision"]) if state == "resume" else {}

  def vision_layout(x_BTD: np.ndarray, pixels_BCHW: Any) -> dict[str, Any]:
    n_tokens = x_BTD.shape[1]
    ps = models.patch_size(vconfig)
    grid, n_prefix = None, None
    if ps is not None:
      grid = (pixels_BCHW.shape[-2] // ps[0], pixels_BCHW.shape[-1] // ps[1])
      n_prefix = n_tokens - grid[0] * grid[1]
      if n_prefix < 0:
        grid, n_prefix = None, None
    if n_prefix is None and args.vision_tokens != "all":
      raise ExportError(f"--vision-tokens {args.vision_tokens}: cannot tell the CLS token from the patch tokens of "
                      f"{args.model}; use --vision-tokens all")
    if args.vision_tokens == "cls" and n_prefix == 0:
      raise ExportError(f"--vision-tokens cls: {args.model} has no CLS token (only {n_tokens} patch tokens)")
    positions = {"cls": [0], "all": list(range(n_tokens)),
                 "patch": list(range(n_prefix or 0, n_tokens))}[args.vision_tokens]
    return {"tokens_per_image": n_tokens, "prefix_tokens": n_prefix, "patch_grid": list(grid) if grid else None,
            "rows_per_image": len(positions), "positions": positions, "vision_tokens": args.vision_tokens,
            "tokens": "position id in the block's output sequence; vocab.json names the positions"}

  def compute(batch: list[tuple[int, str]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    pixels = models.image_inputs(processor, [inputs.load_image(p) for _, p in batch], device, args.torch_dtype)
    x_BTD = reader(pixels)
    if not layout:
      layout.update(vision_layout(x_BTD, pixels["pixel_values"]))
    if x_BTD.shape[1] != layout["tokens_per_image"]:
      raise ExportError(f"--images {batch[0][1]}: the model gave {x_BTD.shape[1]} tokens per image, "
                      f"expected {layout['tokens_per_image']} as for the first image")
    pos_P = np.asarray(layout["positions"], dtype=np.int32)
    x_ND = x_BTD[:, pos_P].reshape(-1, x_BTD.shape[2])
    ids_B = np.asarray([i for i, _ in batch], dtype=np.int32)
    doc_index = np.stack([np.repeat(ids_B, len(pos_P)), np.tile(pos_P, len(batch))], axis=1)
    return x_ND, {"tokens": np.tile(pos_P, len(batch)), "doc_index": doc_index}

  def vocab() -> list[str]:
    grid = layout["patch_grid"]
    return _position_names(layout["tokens_per_image"], layout["prefix_tokens"] or 0, tuple(grid) if grid else None)

  def make_writer(d_model: int) -> ShardWriter:
    _write_vocab(args.out, vocab())
    source = {"model": args.model, "layer": args.layer, "site": SITE, "hidden_states_index": args.layer + 1,
              "n_layers": n_layers, "seq_len": layout["tokens_per_image"], "tokenizer": None,
              "image_processor": args.model, "arch": "vision", "model_type": config.model_type,
              "dtype": args.dtype, "torch_dtype": args.torch_dtype}
    return ShardWriter(args.out, d_model=d_model, dtype=args.dtype, rows_per_shard=args.rows_per_shard,
                       source=source, extra={"vocab": VOCAB_FILE, "export_args": fingerprint, "vision": dict(layout)})

  writer = None
  if state == "resume":
    writer = ShardWriter.resume(args.out)
    if not os.path.isfile(os.path.join(args.out, VOCAB_FILE)):
      _write_vocab(args.out, vocab())

  def batches() -> Iterator[tuple[list[tuple[int, str]], int | None]]:
    for batch in inputs.batched(enumerate(inp.images), args.batch_size):
      yield batch, (layout["rows_per_image"] * len(batch) if layout else None)

  return _write_rows(batches(), compute, make_writer, writer, args.max_tokens, args.quiet)


# --------------------------------------------------------------------------- entry points


def run(args: argparse.Namespace) -> int:
  """Runs one export (``softsae export``).

  Args:
    args: flags parsed by a parser set up with :func:`add_arguments`.

  Returns:
    The exit code: 0 (written, or already complete).

  Raises:
    ExportError: a problem the user can fix (missing input, unknown model, layer out of range, empty
      input, an ``--out`` holding something else); the message is one line naming the flag or file.
  """
  if args.layer < 0:
    raise ExportError(f"--layer {args.layer}: expected a block index >= 0")
  inp = _Input(args)
  fingerprint = export_fingerprint(args, inp)
  state, manifest = _out_state(args.out, fingerprint)
  if state == "complete":
    print(f"export already complete: {args.out} ({manifest.get('n_rows')} rows)")
    return 0

  from softsae_jax.bridge import models

  models.quiet_transformers()
  if state == "fresh":
    _clear_partial(args.out)
  if inp.kind == "text":
    writer = _export_text(args, inp, fingerprint, state)
  else:
    writer = _export_images(args, inp, fingerprint, state, manifest)
  if writer is None or writer.n_rows == 0:
    raise ExportError(f"{inp.flag} {inp.path}: produced no rows (every document tokenized to nothing)")
  final = writer.close()
  print(f"wrote {final['n_rows']} rows x {final['d_model']} ({final['dtype']}) in {len(final['shards'])} "
        f"shard(s) to {args.out}")
  return 0


def main(argv: list[str] | None = None) -> int:
  """``python -m softsae_jax.bridge.export``: parses ``argv`` and runs, with the errors of ``softsae export``.

  Args:
    argv: the flags (default: ``sys.argv[1:]``).

  Returns:
    The exit code: 0 on success, 1 on a user error (one line ``error: ...``), 130 if interrupted.
    A bad flag value exits with status 2 (one line from argparse).
  """
  parser = ArgumentParser(prog="python -m softsae_jax.bridge.export")
  add_arguments(parser)
  return run_command(run, parser.parse_args(argv), resumable=True)


if __name__ == "__main__":
  sys.exit(main())
