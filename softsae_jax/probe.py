"""``softsae probe``: SAEBench's sparse probing and TPP on labelled documents, offline.

Usage::

  softsae probe --workdir RUN --data ACTS [--out FILE] [--ks 1,2,5,20] [--tpp-ns 2,5,10,20,50]

``ACTS`` is an activation export with document labels (``softsae export --texts-jsonl`` of records
with a ``"label"`` field; ``labels.json``, docs/data-format.md) and per-row ``doc_index``. Every
document is mean-pooled over its exported (content) tokens: the raw activations ``x̄`` [D] and the
SAE's raw-unit codes ``f̄`` [F] (the codes of each token by the arch's inference rule, then averaged,
as SAEBench does). Documents are split per class into train and test (``--test-frac``, seeded).

Sparse probing (SAEBench ``sparse_probing``; Karvonen et al. 2025, arXiv 2503.09532): for each class
one-vs-rest on a balanced set (all the class's documents, as many drawn from the other classes), the
``k`` latents with the largest ``|mean_pos − mean_neg|`` on the training split, an L2 logistic
regression (scikit-learn, C = 1, as SAEBench) on those ``k`` features, accuracy on the balanced test
split. ``sae_acc[k]`` is the mean over classes; ``raw_acc[k]`` the same on the ``k`` best raw
activation dimensions (the baseline), ``full_acc`` a probe on all D raw dimensions.

TPP, targeted probe perturbation (SAEBench ``scr_and_tpp``): the full raw probe ``w_i`` of each class
``i``; each latent's effect on it, ``max(mean_pos f̄ − mean_neg f̄, 0) · (w_i · W_dec[f])`` on the
training split; ablating the top ``N`` latents of class ``i`` with the SAE's error term kept is
``x̄' = x̄ − Σ_{f ∈ top N} f̄_f W_dec[f]`` (mean pooling is linear, so this equals SAEBench's
per-token ablation); ``Δacc_{i,j}`` = the drop of class ``j``'s probe accuracy on its test split;
``TPP_N = mean_i (Δacc_{i,i} − mean_{j ≠ i} Δacc_{i,j})``. High = the SAE has latents that carry one
class and little else.

JSON keys: ``classes``, ``n_docs``, ``n_train``, ``n_test``, ``ks``, ``sae_acc`` / ``raw_acc``
(``{"1": …, "2": …}``), ``full_acc``, ``tpp`` (``{"N": score}``), ``per_class`` (the same per class),
``chance`` (0.5: the sets are balanced), ``l0_mean``, ``meta``. Default ``--out``: ``RUN/probe.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from typing import Any, NamedTuple, Sequence

import numpy as np

from softsae_jax.cli_types import int_list, nonneg_int, positive_int, proper_fraction
from softsae_jax.errors import UserError

DEFAULT_KS = (1, 2, 5, 20)
DEFAULT_TPP_NS = (2, 5, 10, 20, 50)
PROBE_C = 1.0  # SAEBench's LogisticRegression C (sklearn's default)
PROBE_MAX_ITER = 1000  # SAEBench's max_iter


class ProbeError(UserError):
  """A user error of ``softsae probe`` (data without labels, too few documents, no scikit-learn)."""


class DocFeatures(NamedTuple):
  """Mean-pooled documents: raw activations [n, D], SAE codes [n, F] (raw units), tokens per document,
  label index (-1: none), and the mean active latents per token over the scanned rows."""

  raw_ND: np.ndarray
  codes_NF: np.ndarray
  n_tokens_N: np.ndarray
  label_N: np.ndarray
  classes: list[str]
  l0_mean: float


def read_labels(ds) -> tuple[list[str], np.ndarray]:
  """``(classes, doc_label)`` of a labelled activation directory (``labels.json``).

  Raises:
    ProbeError: the dataset has no labels or no ``doc_index``.
  """
  name = ds.manifest.get("labels")
  if not name:
    raise ProbeError(f"{ds.path}: the manifest has no \"labels\" (export --texts-jsonl records with a \"label\" "
                     "field; docs/data-format.md)")
  path = os.path.join(ds.path, name)
  try:
    with open(path, encoding="utf-8") as f:
      rec = json.load(f)
    classes, doc_label = list(rec["classes"]), np.asarray(rec["doc_label"], np.int64)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ProbeError(f"{path}: not a softsae-labels/1 file ({type(e).__name__})") from None
  if any(s.entry.get("doc_index") is None for s in ds.shards):
    raise ProbeError(f"{ds.path}: the shards have no doc_index side files; cannot pool rows into documents")
  return classes, doc_label


def doc_features(model, ds, *, batch_size: int = 1024, skip_nonfinite: bool = False) -> DocFeatures:
  """Mean-pools the raw activations and the SAE's codes over every document of ``ds``.

  Args:
    model: a loaded :class:`softsae_jax.evaluate.Model`.
    ds: a labelled dataset (see :func:`read_labels`).
    batch_size: rows per inference call.
    skip_nonfinite: leave NaN/Inf rows out instead of stopping.

  Returns:
    The pooled documents (documents without tokens get zero rows and ``n_tokens`` 0).
  """
  from softsae_jax.evaluate import batches

  classes, doc_label = read_labels(ds)
  doc_N = np.concatenate([np.asarray(ds.side("doc_index", i))[:, 0] for i in range(len(ds.shards))]).astype(np.int64)
  n_docs = max(len(doc_label), int(doc_N.max()) + 1 if len(doc_N) else 0)
  raw = np.zeros((n_docs, model.d_in))
  codes = np.zeros((n_docs, model.n_latents))
  count = np.zeros(n_docs, np.int64)
  l0_sum = 0.0
  for b in batches(model, ds, batch_size=batch_size, skip_nonfinite=skip_nonfinite):
    d = doc_N[b.start:b.start + len(b.x)][b.valid]
    uniq, inv = np.unique(d, return_inverse=True)
    onehot = np.zeros((len(uniq), len(d)))
    onehot[inv, np.arange(len(d))] = 1.0
    raw[uniq] += onehot @ b.x[b.valid].astype(np.float64)
    codes[uniq] += onehot @ b.codes[b.valid].astype(np.float64)
    count[uniq] += np.bincount(inv, minlength=len(uniq))
    l0_sum += float((b.codes[b.valid] != 0).sum())
  scale = 1.0 / np.maximum(count, 1)[:, None]
  label = np.full(n_docs, -1, np.int64)
  label[:len(doc_label)] = doc_label
  return DocFeatures(raw * scale, codes * scale, count, label, classes, l0_sum / max(int(count.sum()), 1))


def split(label_N: np.ndarray, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-class random split of the labelled documents into (train, test) indices (sorted).

  Every class keeps at least one document on each side.

  Examples:
    >>> tr, te = split(np.array([0, 0, 0, 1, 1, 1, -1]), 0.34, 0)
    >>> len(tr), len(te), 6 in tr or 6 in te
    (4, 2, False)
  """
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(label_N[label_N >= 0]):
    idx = rng.permutation(np.flatnonzero(label_N == c))
    n_test = min(max(1, int(round(test_frac * len(idx)))), len(idx) - 1)
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def balanced(idx: np.ndarray, label_N: np.ndarray, c: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """One-vs-rest balanced set from ``idx``: as many positives (class ``c``) as negatives, both drawn
  at random when one side is larger. Returns (document indices, 0/1 targets)."""
  pos, neg = idx[label_N[idx] == c], idx[label_N[idx] != c]
  n = min(len(pos), len(neg))
  pos = np.sort(rng.choice(pos, n, replace=False)) if len(pos) > n else pos
  neg = np.sort(rng.choice(neg, n, replace=False)) if len(neg) > n else neg
  return np.concatenate([pos, neg]), np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])


def top_mean_diff(x_ND: np.ndarray, y_N: np.ndarray, k: int) -> np.ndarray:
  """The ``k`` columns with the largest ``|mean over y=1 − mean over y=0|`` (ties: lower index first).

  Examples:
    >>> top_mean_diff(np.array([[0., 5, 1], [0, 0, 1], [1, 5, 0], [1, 0, 0]]), np.array([1, 1, 0, 0]), 2).tolist()
    [0, 2]
  """
  diff = np.abs(x_ND[y_N == 1].mean(axis=0) - x_ND[y_N == 0].mean(axis=0))
  return np.argsort(-diff, kind="stable")[:k]


def _fit(x_tr, y_tr):
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.linear_model import LogisticRegression

  probe = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    probe.fit(x_tr, y_tr)
  return probe


def _acc(probe, x, y) -> float:
  return float(np.mean(probe.predict(x) == y))


def probe_metrics(feats: DocFeatures, w_dec_FD: np.ndarray, *, ks: Sequence[int] = DEFAULT_KS,
                  tpp_ns: Sequence[int] = DEFAULT_TPP_NS, test_frac: float = 0.3, seed: int = 0,
                  min_docs: int = 4) -> dict[str, Any]:
  """Sparse probing (SAE latents and raw dimensions), the full raw probe and TPP (see the module docstring).

  Args:
    feats: the pooled documents (:func:`doc_features`).
    w_dec_FD: the decoder (raw-unit codes times it is the raw-unit contribution).
    ks: the sparse probes' sizes.
    tpp_ns: how many latents TPP ablates.
    test_frac: each class's share of test documents.
    seed: the split and the balanced sets' draws.
    min_docs: a class needs this many documents (with tokens) to be probed.

  Returns:
    The metrics (JSON-ready).

  Raises:
    ProbeError: fewer than two classes with ``min_docs`` documents.
  """
  try:
    import sklearn  # noqa: F401
  except ImportError:
    raise ProbeError("softsae probe needs scikit-learn: pip install 'softsae_jax[eval]'") from None
  label = np.where(feats.n_tokens_N > 0, feats.label_N, -1)
  counts = {c: int(np.sum(label == c)) for c in range(len(feats.classes))}
  kept = [c for c, n in counts.items() if n >= min_docs]
  if len(kept) < 2:
    raise ProbeError(f"need at least two classes with >= {min_docs} documents with tokens; got "
                     + ", ".join(f"{feats.classes[c]} {n}" for c, n in counts.items()))
  label = np.where(np.isin(label, kept), label, -1)
  train, test = split(label, test_frac, seed)
  rng = np.random.default_rng([seed, 1])
  raw, codes = feats.raw_ND, feats.codes_NF
  w_dec = np.asarray(w_dec_FD, np.float64)
  sets = {c: (balanced(train, label, c, rng), balanced(test, label, c, rng)) for c in kept}

  per_class: dict[str, Any] = {}
  probes = {}
  for c in kept:
    (tr, y_tr), (te, y_te) = sets[c]
    res: dict[str, Any] = {"n_train": int(len(tr)), "n_test": int(len(te)), "sae_acc": {}, "raw_acc": {}}
    for k in ks:
      for name, x in (("sae_acc", codes), ("raw_acc", raw)):
        cols = top_mean_diff(x[tr], y_tr, min(k, x.shape[1]))
        res[name][str(k)] = _acc(_fit(x[tr][:, cols], y_tr), x[te][:, cols], y_te)
    probes[c] = _fit(raw[tr], y_tr)
    res["full_acc"] = _acc(probes[c], raw[te], y_te)
    per_class[feats.classes[c]] = res

  clean = {c: per_class[feats.classes[c]]["full_acc"] for c in kept}
  tpp: dict[str, float] = {}
  for n in tpp_ns:
    scores = []
    for i in kept:
      (tr, y_tr), _ = sets[i]
      w_i = probes[i].coef_[0]
      effect_F = np.maximum(codes[tr][y_tr == 1].mean(axis=0) - codes[tr][y_tr == 0].mean(axis=0), 0.0) * (w_dec @ w_i)
      order = np.argsort(-effect_F, kind="stable")
      top = order[:min(n, int(np.sum(effect_F > 0)))]
      ablated = raw - codes[:, top] @ w_dec[top]
      delta = {j: clean[j] - _acc(probes[j], ablated[sets[j][1][0]], sets[j][1][1]) for j in kept}
      score = delta[i] - float(np.mean([delta[j] for j in kept if j != i]))
      per_class[feats.classes[i]].setdefault("tpp", {})[str(n)] = score
      scores.append(score)
    tpp[str(n)] = float(np.mean(scores))

  names = [feats.classes[c] for c in kept]
  mean = lambda key, k: float(np.mean([per_class[n][key][k] for n in names]))  # noqa: E731
  return {
      "classes": names, "n_docs": int(np.sum(label >= 0)), "n_train": int(len(train)), "n_test": int(len(test)),
      "ks": list(ks), "sae_acc": {str(k): mean("sae_acc", str(k)) for k in ks},
      "raw_acc": {str(k): mean("raw_acc", str(k)) for k in ks},
      "full_acc": float(np.mean([per_class[n]["full_acc"] for n in names])), "tpp": tpp, "chance": 0.5,
      "per_class": per_class, "l0_mean": feats.l0_mean,
  }


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the ``softsae probe`` flags to ``parser``."""
  if not parser.description:
    parser.description = ("Sparse probing (SAE latents vs raw dimensions, k = 1, 2, 5, 20; a full raw probe) and TPP "
                          "on mean-pooled labelled documents, as SAEBench defines them, offline.")
  parser.add_argument("--workdir", required=True, help="a workdir written by `softsae train`")
  parser.add_argument("--data", required=True, help="a labelled softsae-activations/1 directory (labels.json)")
  parser.add_argument("--out", metavar="FILE", help="the JSON to write (default: WORKDIR/probe.json)")
  parser.add_argument("--ks", type=int_list, default=",".join(map(str, DEFAULT_KS)),
                      help="sparse probe sizes (default: 1,2,5,20)")
  parser.add_argument("--tpp-ns", type=int_list, default=",".join(map(str, DEFAULT_TPP_NS)),
                      help="latents ablated by TPP (default: 2,5,10,20,50)")
  parser.add_argument("--test-frac", type=proper_fraction, default=0.3, help="test share per class (default: 0.3)")
  parser.add_argument("--min-docs", type=positive_int, default=10, help="least documents per class (default: 10)")
  parser.add_argument("--seed", type=nonneg_int, default=0, help="split and sampling seed (default: 0)")
  parser.add_argument("--batch-size", type=positive_int, default=1024, metavar="B", help="rows per inference call")
  parser.add_argument("--skip-nonfinite", dest="skip_nonfinite", action="store_true", default=None,
                      help="leave NaN/Inf rows out (default: the run's data.skip_nonfinite)")


def run(args: argparse.Namespace) -> int:
  """``softsae probe``: writes the metrics JSON and prints it."""
  t0 = time.time()
  try:
    import sklearn  # noqa: F401
  except ImportError:
    raise ProbeError("softsae probe needs scikit-learn: pip install 'softsae_jax[eval]'") from None
  from softsae_jax import files
  from softsae_jax.evaluate import load
  from softsae_jax.shards import open_dataset

  model = load(args.workdir)
  ds = open_dataset(args.data, expect_d_model=model.d_in)
  read_labels(ds)  # fail before the scan
  skip = args.skip_nonfinite if args.skip_nonfinite is not None else model.cfg.data.skip_nonfinite
  feats = doc_features(model, ds, batch_size=args.batch_size, skip_nonfinite=skip)
  res = probe_metrics(feats, np.asarray(model.params.w_dec), ks=args.ks, tpp_ns=args.tpp_ns,
                      test_frac=args.test_frac, seed=args.seed, min_docs=args.min_docs)
  argv = ["--workdir", args.workdir, "--data", args.data, "--ks", ",".join(map(str, args.ks)),
          "--tpp-ns", ",".join(map(str, args.tpp_ns)), "--test-frac", str(args.test_frac), "--seed", str(args.seed)]
  res["meta"] = {"workdir": os.path.abspath(args.workdir), "data": os.path.abspath(args.data), "arch": model.arch,
                 "checkpoint_step": model.step, "n_latents": model.n_latents, "test_frac": args.test_frac,
                 "seed": args.seed, "min_docs": args.min_docs, "probe": f"sklearn LogisticRegression(C={PROBE_C}, "
                 f"max_iter={PROBE_MAX_ITER}), L2", "seconds": round(time.time() - t0, 1),
                 "command": "softsae probe " + shlex.join(argv)}
  out = args.out or os.path.join(args.workdir, "probe.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  files.write_json(out, res, allow_nan=False)
  print(json.dumps({k: res[k] for k in ("classes", "n_docs", "sae_acc", "raw_acc", "full_acc", "tpp")}, indent=2))
  print(f"wrote {out}", file=sys.stderr)
  return 0
