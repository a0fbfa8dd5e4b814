"""``softsae fidelity``: splice a trained SAE into the PyTorch model at the block it was trained on.

Usage::

  softsae fidelity --workdir RUN (--text-file F | --texts-jsonl F | --images DIR) [--model M --layer L] [--out J]

The SAE replaces the output of transformer block ``L`` (the ``block_output`` site the export reads,
``hidden_states[L + 1]``) with its reconstruction — raw units, the arch's own inference rule, through
the inference engine (:func:`softsae_jax.evaluate.load`) — and the model runs on to its outputs.
Model, layer, sequence length, tokenizer and BOS default to what the run was trained on: the
``source`` block of the training data's manifest, found through ``RUN/run.json``. Windows are the
export's (:mod:`softsae_jax.bridge.inputs`): ``prefix + content chunk + suffix`` of at most
``seq_len`` tokens.

Four runs of every batch:

* ``clean``: the model as it is;
* ``sae``: content positions := the SAE's reconstruction; special tokens (BOS/CLS/SEP) keep their
  activations, as SAELens' ``exclude_special_tokens`` (the export never showed them to the SAE);
* ``zero``: every attended position (special tokens included; not padding) := 0, SAEBench's zero
  ablation;
* ``mean``: content positions := the mean of the training activations (our extension; neither
  SAEBench nor SAELens has it).

What is measured depends on the model kind (the manifest's ``source.arch``):

* **causal LMs** (GPT-2, Llama, ...): per-token cross-entropy of the next token and KL(clean || run)
  of the next-token distribution, over tokens whose input token is a content token (CE also needs a
  next token in the window). Keys ``ce_clean``, ``ce_sae``, ``ce_zero``, ``ce_mean`` (means over those
  tokens), ``ce_loss_score`` = (CE_zero − CE_sae) / (CE_zero − CE_clean), ``kl_sae``, ``kl_zero``,
  ``kl_mean``, ``kl_div_score`` = (KL_zero − KL_sae) / KL_zero (ratios of means, as SAEBench's core
  eval), the same two scores against mean ablation (``ce_loss_score_mean``, ``kl_div_score_mean``),
  and the Spearman correlation of the per-token KL with the active-latent count (``l0_kl_spearman``)
  and, for SoftSAE, with k-hat (``khat_kl_spearman``);
* **sentence encoders** (BERT/MiniLM; ``encoder``): one window per document (its first, as a
  sentence-transformers model truncates at its max_seq_length), embedded as sentence-transformers'
  all-MiniLM-L6-v2 does: the mean of the last hidden state over the attention mask (CLS and SEP
  included), L2-normalised. Keys ``cos_sae``, ``cos_zero``, ``cos_mean`` (mean cosine of each
  document's embedding with and without the splice), ``emb_score_zero`` and ``emb_score_mean``
  (1 − (1 − cos_sae) / (1 − cos_abl)), ``sim_spearman_sae``, ``sim_spearman_zero``,
  ``sim_spearman_mean`` (Spearman over document pairs i < j of cos(e_i, e_j) against cos(ê_i, ê_j)),
  ``retrieval_at_1_sae`` / ``_zero`` / ``_mean`` (fraction of documents whose spliced embedding has
  its own clean embedding as the nearest clean embedding);
* **image classifiers** (ViT with a classification head; ``vision``): the SAE replaces the exported
  positions (the manifest's ``vision.positions``), zero ablation every position. Keys ``kl_sae``,
  ``kl_zero``, ``kl_mean``, ``kl_div_score`` (KL of the class distribution, mean over images) and
  ``top1_agree_sae`` / ``_zero`` / ``_mean``.

Every kind also records ``n_docs``, ``n_windows``, ``n_tokens`` (content positions spliced),
``l0_mean``, and a ``meta`` block (workdir, arch, checkpoint step, model, layer, seq_len, input,
the data the mean came from, the command). The splice is checked on the first batch: the block's
output must equal ``hidden_states[L + 1]`` (for the last block of GPT-2 or Llama it does not — there
``hidden_states[-1]`` includes the final norm — and the command stops with one line).

References: SAEBench (Karvonen et al. 2025, arXiv 2503.09532), ``sae_bench/evals/core/main.py``;
SAELens ``sae_lens/evals.py``. docs/evaluation.md describes the metrics and their baselines.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from softsae_jax.bridge import ExportError, inputs
from softsae_jax.cli_types import nonneg_int, positive_int
from softsae_jax.errors import UserError

KINDS = ("causal", "encoder", "vision")
RUNS = ("sae", "zero", "mean")
Reconstruct = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``x_ND (float32 raw) -> (recon_ND, k_N)``: the SAE in raw units; ``k`` is SoftSAE's k-hat or the L0."""


class FidelityError(UserError):
  """A user error of ``softsae fidelity``; one line naming the flag or file at fault."""


# --------------------------------------------------------------------------- where the run came from


def training_source(workdir: str, data: str | None = None) -> tuple[str | None, dict[str, Any]]:
  """The activation directory a run was trained on and its manifest.

  Args:
    workdir: a ``softsae train`` workdir.
    data: an activation directory to use instead of the one in ``WORKDIR/run.json``.

  Returns:
    ``(data_dir, manifest)``; ``(None, {})`` when neither is known.

  Raises:
    FidelityError: the directory is given or recorded but has no readable manifest.
  """
  if data is None:
    rpath = os.path.join(workdir, "run.json")
    if os.path.isfile(rpath):
      with open(rpath) as f:
        data = (json.load(f).get("data") or {}).get("path")
  if data is None:
    return None, {}
  mpath = os.path.join(data, "manifest.json")
  if not os.path.isfile(mpath):
    raise FidelityError(f"{data}: no manifest.json (the run's training data; pass --data with the activations "
                        "the SAE was trained on)")
  with open(mpath) as f:
    return data, json.load(f)


def dataset_mean(data: str, d_model: int) -> np.ndarray:
  """The mean row (float64, raw units) of an activation directory, streamed."""
  from softsae_jax.data import iter_ordered
  from softsae_jax.shards import open_dataset

  ds = open_dataset(data, expect_d_model=d_model)
  total, n = np.zeros(d_model), 0
  for _, x_ND in iter_ordered(ds, 65536):
    x = np.asarray(x_ND, np.float64)
    ok = np.isfinite(x).all(axis=1)
    total += x[ok].sum(axis=0)
    n += int(ok.sum())
  if n == 0:
    raise FidelityError(f"{data}: no finite rows to take the mean of")
  return total / n


# --------------------------------------------------------------------------- the splice


def replace_block_output(output: Any, new_h: Any) -> Any:
  """A block's output with its hidden states replaced: transformers 5.x blocks return a tensor,
  4.x blocks a tuple whose first item is the hidden states (the rest, e.g. attention weights, is kept).

  Examples:
    >>> replace_block_output((1, "attn"), 2), replace_block_output(1, 2)
    ((2, 'attn'), 2)
  """
  if isinstance(output, tuple):
    return (new_h,) + tuple(output[1:])
  return new_h


def block_hidden(output: Any) -> Any:
  """The hidden states of a block's output (tensor, or the first item of a tuple)."""
  return output[0] if isinstance(output, tuple) else output


class Splice:
  """A forward hook on one block: records its output and, when ``edit`` is set, replaces it.

  ``edit(h_BTD) -> h_BTD`` receives the block's hidden states; the hook returns the block's output
  with them replaced (:func:`replace_block_output`), whatever the transformers version's block returns.
  """

  def __init__(self, block: Any):
    self.edit: Callable[[Any], Any] | None = None
    self.captured: Any = None
    self.calls = 0
    self._handle = block.register_forward_hook(self._hook)

  def _hook(self, module, args, output):
    self.calls += 1
    h = block_hidden(output)
    self.captured = h
    if self.edit is None:
      return None
    return replace_block_output(output, self.edit(h))

  def remove(self) -> None:
    self._handle.remove()


@dataclasses.dataclass
class Batch:
  """One model input and its positions: ``content_BT`` the positions the SAE replaces (exported
  rows), ``attended_BT`` every real position (not padding); ``ids_BT`` token ids (text) or None."""

  inputs: dict[str, Any]
  content_BT: Any
  attended_BT: Any
  ids_BT: Any = None
  doc_ids: tuple[int, ...] = ()


def text_batches(windows: Iterable[inputs.Window], pad_id: int, device: Any, batch_size: int) -> Iterator[Batch]:
  """Batches of export windows (in the given order), right-padded, with their content masks."""
  import torch

  from softsae_jax.bridge import models

  for ws in inputs.batched(windows, batch_size):
    inp = models.text_inputs(ws, pad_id, device)
    content = torch.zeros(inp["input_ids"].shape, dtype=torch.bool, device=device)
    for b, w in enumerate(ws):
      content[b, w.n_prefix:w.n_prefix + w.n_content] = True
    yield Batch(inp, content, inp["attention_mask"].bool(), inp["input_ids"], tuple(w.doc for w in ws))


def image_batches(paths: list[str], processor: Any, positions: list[int], device: Any, torch_dtype: str,
                  batch_size: int) -> Iterator[Batch]:
  """Batches of images; the content positions are the exported ones (the manifest's ``vision.positions``)."""
  import torch

  from softsae_jax.bridge import models

  for i, ps in enumerate(inputs.batched(paths, batch_size)):
    inp = models.image_inputs(processor, [inputs.load_image(p) for p in ps], device, torch_dtype)
    yield Batch(inp, positions, None, None, tuple(range(i * batch_size, i * batch_size + len(ps))))


def _masks(batch: Batch, h_BTD: Any) -> tuple[Any, Any]:
  """(content, attended) bool masks [B, T] for a batch, on ``h``'s device (vision: built from positions)."""
  import torch

  if batch.attended_BT is not None:
    return batch.content_BT, batch.attended_BT
  b, t = h_BTD.shape[:2]
  content = torch.zeros((b, t), dtype=torch.bool, device=h_BTD.device)
  pos = [p for p in batch.content_BT if p < t]
  content[:, pos] = True
  return content, torch.ones((b, t), dtype=torch.bool, device=h_BTD.device)


def _edits(content_BT: Any, attended_BT: Any, reconstruct: Reconstruct, mean_D: Any, ks: list[np.ndarray]
           ) -> dict[str, Callable[[Any], Any]]:
  """The three replacements of the block output, keyed by run name."""
  import torch

  def sae(h):
    rec_ND, k_N = reconstruct(h[content_BT].float().cpu().numpy())
    ks.append(np.asarray(k_N, np.float64))
    out = h.clone()
    out[content_BT] = torch.as_tensor(np.asarray(rec_ND), dtype=h.dtype, device=h.device)
    return out

  def zero(h):
    return torch.where(attended_BT[..., None], torch.zeros_like(h), h)

  def mean(h):
    out = h.clone()
    out[content_BT] = mean_D.to(dtype=h.dtype, device=h.device)
    return out

  return {"sae": sae, "zero": zero, "mean": mean}


# --------------------------------------------------------------------------- metrics


def ratio_score(abl: float, sae: float, clean: float) -> float | None:
  """(abl − sae) / (abl − clean): 1 = the SAE loses nothing, 0 = as bad as the ablation; None if undefined.

  Examples:
    >>> ratio_score(4.0, 3.0, 2.0), ratio_score(1.0, 1.0, 1.0)
    (0.5, None)
  """
  den = abl - clean
  return None if den == 0 or not np.isfinite(den) else float((abl - sae) / den)


def embedding_metrics(e_ND: np.ndarray, runs: dict[str, np.ndarray]) -> dict[str, Any]:
  """Cosine fidelity, pairwise-similarity Spearman and retrieval@1 of spliced embeddings.

  Args:
    e_ND: clean embeddings, one per document, unit norm.
    runs: ``{name: ê_ND}`` spliced embeddings (unit norm); ``sae`` and at least one ablation.

  Returns:
    ``cos_<run>``, ``sim_spearman_<run>``, ``retrieval_at_1_<run>`` per run and
    ``emb_score_<abl>`` = 1 − (1 − cos_sae) / (1 − cos_abl) for every ablation run.

  Examples:
    >>> e = np.eye(3)
    >>> m = embedding_metrics(e, {"sae": e, "zero": np.roll(e, 1, axis=0)})
    >>> m["cos_sae"], m["cos_zero"], m["emb_score_zero"], m["retrieval_at_1_sae"]
    (1.0, 0.0, 1.0, 1.0)
  """
  from softsae_jax.stats import spearman

  e = np.asarray(e_ND, np.float64)
  n = len(e)
  iu = np.triu_indices(n, 1)
  sim_clean = (e @ e.T)[iu]
  out: dict[str, Any] = {}
  for name, h in runs.items():
    h = np.asarray(h, np.float64)
    out[f"cos_{name}"] = float(np.mean(np.sum(e * h, axis=1)))
    out[f"sim_spearman_{name}"] = _finite(spearman(sim_clean, (h @ h.T)[iu])) if n > 2 else None
    out[f"retrieval_at_1_{name}"] = float(np.mean(np.argmax(h @ e.T, axis=1) == np.arange(n)))
  for name in runs:
    if name != "sae" and "sae" in runs:
      den = 1.0 - out[f"cos_{name}"]
      out[f"emb_score_{name}"] = None if den == 0 else float(1.0 - (1.0 - out["cos_sae"]) / den)
  return out


def _finite(x: float | None) -> float | None:
  return None if x is None or not np.isfinite(x) else float(x)


class _Causal:
  """Per-token CE and KL of a causal LM's next-token predictions."""

  def __init__(self):
    self.ce: dict[str, list[np.ndarray]] = {r: [] for r in ("clean",) + RUNS}
    self.kl: dict[str, list[np.ndarray]] = {r: [] for r in RUNS}

  def update(self, batch: Batch, outs: dict[str, Any]) -> None:
    import torch

    content, attended = batch.content_BT, batch.attended_BT
    ce_mask = content[:, :-1] & attended[:, 1:]  # the input token is content and a next token exists
    target = batch.ids_BT[:, 1:]
    logp = {r: torch.log_softmax(o.logits.float(), dim=-1) for r, o in outs.items()}
    p_clean = logp["clean"].exp()
    for r, lp in logp.items():
      nll = -lp[:, :-1].gather(-1, target[..., None])[..., 0]
      self.ce[r].append(nll[ce_mask].double().cpu().numpy())
      if r != "clean":
        kl = (p_clean * (logp["clean"] - lp)).sum(-1)
        self.kl[r].append(kl[content].double().cpu().numpy())

  def result(self, k_N: np.ndarray, soft: bool) -> dict[str, Any]:
    from softsae_jax.stats import spearman

    ce = {r: float(np.concatenate(v).mean()) for r, v in self.ce.items()}
    kl_tok = {r: np.concatenate(v) for r, v in self.kl.items()}
    kl = {r: float(v.mean()) for r, v in kl_tok.items()}
    out = {f"ce_{r}": v for r, v in ce.items()}
    out.update({f"kl_{r}": v for r, v in kl.items()})
    out["ce_loss_score"] = ratio_score(ce["zero"], ce["sae"], ce["clean"])
    out["ce_loss_score_mean"] = ratio_score(ce["mean"], ce["sae"], ce["clean"])
    out["kl_div_score"] = ratio_score(kl["zero"], kl["sae"], 0.0)
    out["kl_div_score_mean"] = ratio_score(kl["mean"], kl["sae"], 0.0)
    out["n_ce_tokens"] = int(sum(len(v) for v in self.ce["clean"]))
    # k is SoftSAE's k-hat, or the count of active latents for the other archs
    out["khat_kl_spearman" if soft else "l0_kl_spearman"] = _finite(spearman(k_N, kl_tok["sae"]))
    return out


class _Encoder:
  """Mean-pooled, L2-normalised sentence embeddings of every run."""

  def __init__(self):
    self.emb: dict[str, list[np.ndarray]] = {r: [] for r in ("clean",) + RUNS}

  def update(self, batch: Batch, outs: dict[str, Any]) -> None:
    import torch

    m = batch.attended_BT[..., None].float()
    for r, o in outs.items():
      h = o.last_hidden_state if hasattr(o, "last_hidden_state") else o[0]
      pooled = (h.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
      self.emb[r].append(torch.nn.functional.normalize(pooled, dim=-1).double().cpu().numpy())

  def result(self, k_N: np.ndarray, soft: bool) -> dict[str, Any]:
    emb = {r: np.concatenate(v) for r, v in self.emb.items()}
    return embedding_metrics(emb["clean"], {r: emb[r] for r in RUNS})


class _Vision:
  """KL and top-1 agreement of an image classifier's class distribution."""

  def __init__(self):
    self.kl: dict[str, list[np.ndarray]] = {r: [] for r in RUNS}
    self.agree: dict[str, list[np.ndarray]] = {r: [] for r in RUNS}

  def update(self, batch: Batch, outs: dict[str, Any]) -> None:
    import torch

    logp = {r: torch.log_softmax(o.logits.float(), dim=-1) for r, o in outs.items()}
    top = logp["clean"].argmax(-1)
    for r in RUNS:
      self.kl[r].append((logp["clean"].exp() * (logp["clean"] - logp[r])).sum(-1).double().cpu().numpy())
      self.agree[r].append((logp[r].argmax(-1) == top).cpu().numpy())

  def result(self, k_N: np.ndarray, soft: bool) -> dict[str, Any]:
    kl = {r: float(np.concatenate(v).mean()) for r, v in self.kl.items()}
    out = {f"kl_{r}": v for r, v in kl.items()}
    out.update({f"top1_agree_{r}": float(np.concatenate(v).mean()) for r, v in self.agree.items()})
    out["kl_div_score"] = ratio_score(kl["zero"], kl["sae"], 0.0)
    out["kl_div_score_mean"] = ratio_score(kl["mean"], kl["sae"], 0.0)
    return out


def measure(lm: Any, block: Any, batches: Iterable[Batch], *, kind: str, reconstruct: Reconstruct, mean_D: np.ndarray,
            layer: int, soft: bool = False, extra_kwargs: dict[str, Any] | None = None,
            progress: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Runs every batch clean, with the SAE, zero- and mean-ablated, and returns the metrics of ``kind``.

  Args:
    lm: the torch model (eval mode) whose outputs are compared (a causal LM with its head; an
      encoder; an image classifier).
    block: the module whose output is replaced (block ``layer`` of ``lm``).
    batches: from :func:`text_batches` or :func:`image_batches`.
    kind: ``causal``, ``encoder`` or ``vision``.
    reconstruct: the SAE in raw units, ``x_ND -> (recon_ND, k_N)``.
    mean_D: the mean activation (raw units) of mean ablation.
    layer: the block's index (the first batch checks that the block's output is ``hidden_states[layer + 1]``).
    soft: SoftSAE (``k`` is k-hat): adds ``khat_kl_spearman`` for causal LMs.
    extra_kwargs: passed to every forward (``use_cache=False`` for causal LMs).
    progress: called with the number of windows after each batch.

  Returns:
    The metrics (see the module docstring), plus ``n_windows``, ``n_tokens``, ``l0_mean``/``k_mean``.

  Raises:
    FidelityError: the block's output is not ``hidden_states[layer + 1]``, or its width is not the SAE's.
  """
  import torch

  if kind not in KINDS:
    raise ValueError(f"Expected kind in {KINDS}, got {kind!r}")
  acc = {"causal": _Causal, "encoder": _Encoder, "vision": _Vision}[kind]()
  extra = dict(extra_kwargs or {})
  mean_t = torch.as_tensor(np.asarray(mean_D, np.float32))
  splice = Splice(block)
  ks: list[np.ndarray] = []
  n_windows = 0
  docs: set[int] = set()
  first = True
  try:
    with torch.inference_mode():
      for batch in batches:
        splice.edit = None
        if first:
          outs = {"clean": lm(**batch.inputs, **extra, output_hidden_states=True)}
          _check_site(splice.captured, outs["clean"], layer, mean_t)
          first = False
        else:
          outs = {"clean": lm(**batch.inputs, **extra)}
        content, attended = _masks(batch, splice.captured)
        batch = dataclasses.replace(batch, content_BT=content, attended_BT=attended)
        for name, edit in _edits(content, attended, reconstruct, mean_t, ks).items():
          splice.edit = edit
          outs[name] = lm(**batch.inputs, **extra)
        splice.edit = None
        acc.update(batch, outs)
        n_windows += int(content.shape[0])
        docs.update(batch.doc_ids)
        if progress is not None:
          progress(int(content.shape[0]))
  finally:
    splice.remove()
  if n_windows == 0:
    raise FidelityError("no input: every document tokenized to nothing")
  k_N = np.concatenate(ks)
  res = acc.result(k_N, soft)
  res.update({"n_windows": n_windows, "n_docs": len(docs), "n_tokens": int(len(k_N)),
              ("k_hat_mean" if soft else "l0_mean"): float(k_N.mean()) if len(k_N) else None})
  return res


def _check_site(captured: Any, clean_out: Any, layer: int, mean_t: Any) -> None:
  """The block's output must be ``hidden_states[layer + 1]`` (what the export wrote) and have the SAE's width."""
  if captured is None:
    raise FidelityError(f"block {layer} did not run during the forward pass")
  if captured.shape[-1] != mean_t.shape[-1]:
    raise FidelityError(f"block {layer} outputs width {captured.shape[-1]}, but the SAE was trained on "
                        f"d_model={mean_t.shape[-1]}; check --model and --layer")
  hs = getattr(clean_out, "hidden_states", None)
  if hs is None or len(hs) <= layer + 1:
    return
  ref = hs[layer + 1]
  scale = float(ref.float().abs().max()) + 1.0
  if ref.shape != captured.shape or float((ref.float() - captured.float()).abs().max()) > 1e-4 * scale:
    raise FidelityError(f"the output of block {layer} is not hidden_states[{layer + 1}] for this model (the last "
                        "block of GPT-2/Llama-style models includes the final norm there); splicing would not "
                        "replace what the SAE was trained on")


# --------------------------------------------------------------------------- model loading


def load_lm(name: str, config: Any, kind: str, device: Any, torch_dtype: str) -> Any:
  """The model whose outputs are compared: causal LM with its head, the encoder, or an image classifier.

  Raises:
    FidelityError: the weights cannot be loaded as that kind of model.
  """
  import torch
  import transformers
  from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageClassification

  dtype = getattr(torch, torch_dtype)
  major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
  kw = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}
  cls = {"causal": AutoModelForCausalLM, "encoder": AutoModel, "vision": AutoModelForImageClassification}[kind]
  try:
    model = cls.from_pretrained(name, config=config, **kw)
  except Exception as e:  # noqa: BLE001  (transformers raises many types for "cannot load")
    need = {"causal": "a causal LM with its LM head", "encoder": "an encoder",
            "vision": "an image classifier (e.g. ViTForImageClassification)"}[kind]
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise FidelityError(f"--model {name}: cannot load {need} ({type(e).__name__}: {first[:200]})") from None
  return model.to(device=device, dtype=dtype).eval()


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the ``softsae fidelity`` flags to ``parser``."""
  if not parser.description:
    parser.description = ("Splice a trained SAE's reconstruction into the PyTorch model at the block it was trained "
                          "on and measure what the model's outputs lose: CE/KL for causal LMs, embedding fidelity "
                          "for sentence encoders, class KL for image classifiers; against zero and mean ablation.")
  parser.add_argument("--workdir", required=True, help="a workdir written by `softsae train`")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--text-file", metavar="FILE", help="UTF-8 text, one document per line")
  src.add_argument("--texts-jsonl", metavar="FILE", help="one JSON object per line with a text field")
  src.add_argument("--images", metavar="DIR", help="folder of .jpg/.jpeg/.png images (image classifiers)")
  parser.add_argument("--text-field", default="text", metavar="NAME",
                      help="JSON field holding the text (default: text)")
  parser.add_argument("--model", metavar="NAME_OR_PATH", help="default: the training data's source.model")
  parser.add_argument("--layer", type=nonneg_int, metavar="L", help="default: the training data's source.layer")
  parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="default: the training data's source.tokenizer")
  parser.add_argument("--seq-len", type=positive_int, metavar="N", help="default: the training data's source.seq_len")
  parser.add_argument("--no-bos", action="store_true", default=None,
                      help="causal LMs: no BOS token before each window (default: as the export did)")
  parser.add_argument("--data", metavar="DIR", help="activations whose mean is the mean ablation and whose manifest "
                      "gives the defaults (default: the run's training data, from WORKDIR/run.json)")
  parser.add_argument("--max-docs", type=positive_int, metavar="N", help="use the first N documents (default: all)")
  parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                      help="windows (or images) per forward pass (default: 16)")
  parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
  parser.add_argument("--torch-dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                      help="model weights and compute dtype (default: float32)")
  parser.add_argument("--out", metavar="FILE", help="the JSON to write (default: WORKDIR/fidelity.json)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _setting(args_value: Any, source: dict[str, Any], key: str, flag: str, workdir: str) -> Any:
  if args_value is not None:
    return args_value
  if source.get(key) is not None:
    return source[key]
  raise FidelityError(f"{flag}: not given, and {workdir}'s training data records no source.{key} (pass {flag})")


def run(args: argparse.Namespace) -> int:
  """``softsae fidelity``: writes the metrics JSON (default ``WORKDIR/fidelity.json``) and prints it."""
  t0 = time.time()
  from softsae_jax.evaluate import load

  model = load(args.workdir)
  data, manifest = training_source(args.workdir, args.data)
  source = manifest.get("source") or {}
  if data is None:
    raise FidelityError(f"{args.workdir}/run.json records no training data; pass --data with the activations the "
                        "SAE was trained on (their mean is the mean ablation)")
  name = _setting(args.model, source, "model", "--model", args.workdir)
  layer = _setting(args.layer, source, "layer", "--layer", args.workdir)
  if source.get("layer") is not None and layer != source["layer"]:
    print(f"note: --layer {layer} but the SAE was trained on layer {source['layer']}", file=sys.stderr)
  mean_D = dataset_mean(data, model.d_in)

  from softsae_jax.bridge import models

  models.quiet_transformers()
  config = models.load_config(name)
  if args.images is not None:
    kind = "vision"
  else:
    kind = source.get("arch") if source.get("arch") in ("causal", "encoder") else models.text_kind(config, "auto", name)
  if kind == "vision" and args.images is None:
    raise FidelityError(f"{name} is a vision model: pass --images DIR")
  n_layers = models.num_layers(models.tower_config(config, kind), name)
  if not 0 <= layer < n_layers:
    raise FidelityError(f"--layer {layer}: out of range; {name} has {n_layers} blocks")
  device = models.torch_device(args.device)
  lm = load_lm(name, config, kind, device, args.torch_dtype)
  blocks = models._find_blocks(lm, n_layers)
  if blocks is None:
    raise FidelityError(f"--model {name}: cannot find its {n_layers} transformer blocks")

  soft = model.arch == "softsae"

  def reconstruct(x_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = model.infer(x_ND)
    return out.recon, out.k

  meta: dict[str, Any] = {"workdir": os.path.abspath(args.workdir), "arch": model.arch, "checkpoint_step": model.step,
                          "n_latents": model.n_latents, "model": name, "layer": layer, "kind": kind,
                          "mean_from": os.path.abspath(data), "torch_dtype": args.torch_dtype,
                          "command": "softsae fidelity " + shlex.join(_argv(args))}
  bar = _bar(args.quiet)
  if kind == "vision":
    paths = inputs.list_images(args.images)[:args.max_docs]
    positions = (manifest.get("vision") or {}).get("positions")
    if positions is None:
      raise FidelityError(f"{data}: the manifest has no vision.positions (not an image export)")
    processor = models.load_image_processor(name)
    batches = image_batches(paths, processor, positions, device, args.torch_dtype, args.batch_size)
    meta.update({"input": os.path.abspath(args.images), "positions": "exported (manifest vision.positions)"})
    extra = None
  else:
    seq_len = _setting(args.seq_len, source, "seq_len", "--seq-len", args.workdir)
    limit = models.max_positions(config)
    if limit is not None and seq_len > limit:
      raise FidelityError(f"--seq-len {seq_len}: longer than the model's {limit} positions")
    tok_name = args.tokenizer or source.get("tokenizer") or name
    tokenizer = models.load_tokenizer(tok_name)
    bos = (manifest.get("export_args") or {}).get("bos", True) if args.no_bos is None else not args.no_bos
    layout = inputs.special_layout(tokenizer, add_bos=(kind == "causal" and bool(bos)))
    if layout.chunk_len(seq_len) < 1:
      raise FidelityError(f"--seq-len {seq_len}: leaves no room for text after the special tokens")
    docs = inputs.iter_text_file(args.text_file) if args.text_file else inputs.iter_jsonl(args.texts_jsonl,
                                                                                             args.text_field)
    docs = itertools.islice(docs, args.max_docs)

    def tokenize(texts: list[str]) -> list[list[int]]:
      return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    windows = inputs.iter_windows(docs, tokenize, layout, seq_len)
    if kind == "encoder":
      windows = (w for w in windows if w.start == 0)  # one window per document: what a sentence encoder sees
    # Batches of windows of similar length pad less (every metric is a mean over tokens or documents,
    # or over document pairs, so the order does not matter).
    windows = sorted(windows, key=lambda w: (len(w.ids), w.doc, w.start))
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    batches = text_batches(windows, pad_id, device, args.batch_size)
    meta.update({"input": os.path.abspath(args.text_file or args.texts_jsonl), "seq_len": seq_len,
                 "tokenizer": tok_name, "bos": bool(bos) if kind == "causal" else None,
                 "windows": "every window of every document" if kind == "causal" else
                 "the first window of every document (one embedding per document)"})
    extra = {"use_cache": False} if kind == "causal" else None
  try:
    res = measure(lm, blocks[layer], batches, kind=kind, reconstruct=reconstruct, mean_D=mean_D, layer=layer,
                  soft=soft, extra_kwargs=extra, progress=bar.update)
  except ExportError as e:
    raise FidelityError(str(e)) from None
  finally:
    bar.close()
  meta["seconds"] = round(time.time() - t0, 1)
  res = {**res, "meta": meta}
  out = args.out or os.path.join(args.workdir, "fidelity.json")
  from softsae_jax import files

  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  files.write_json(out, res, allow_nan=False)
  print(json.dumps({k: v for k, v in res.items() if k != "meta"}, indent=2))
  print(f"wrote {out}", file=sys.stderr)
  return 0


def _argv(args: argparse.Namespace) -> list[str]:
  """The flags of this run, for the ``meta.command`` record."""
  out = []
  for flag in ("workdir", "text_file", "texts_jsonl", "images", "model", "layer", "tokenizer", "seq_len", "data",
               "max_docs", "batch_size", "torch_dtype", "out"):
    v = getattr(args, flag, None)
    if v is not None and not (flag == "batch_size" and v == 16) and not (flag == "torch_dtype" and v == "float32"):
      out += ["--" + flag.replace("_", "-"), str(v)]
  if args.no_bos:
    out.append("--no-bos")
  return out


class _bar:
  """A tqdm bar over windows (nothing when quiet)."""

  def __init__(self, quiet: bool):
    from tqdm import tqdm

    self._bar = tqdm(unit="win", file=sys.stderr, disable=quiet, desc="fidelity", dynamic_ncols=True)

  def update(self, n: int) -> None:
    self._bar.update(n)

  def close(self) -> None:
    self._bar.close()
