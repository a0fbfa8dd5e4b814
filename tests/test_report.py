"""Tests for ``softsae report``: a report of a tiny trained run, checked against the model itself.

Two tiny runs (SoftSAE and TopK) are trained once on a small text-like dataset whose vocabulary
uses byte-level BPE markers (``Ġ`` word starts, ``Ċ`` newline) and holds a token that needs HTML
escaping. Every coloured token of the passage is checked against an independent inference call
(k-hat, L0) and the vocabulary (its title), and the documents shown must be whole and in order.
"""

import base64
import dataclasses
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from softsae_jax import cli, config, report, trainer
from softsae_jax.checkpoint import CheckpointError
from softsae_jax.evaluate import load_model
from softsae_jax.shards import DataError, ShardWriter

D = 16
VOCAB = ["<|endoftext|>", "Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat", "Ġdog", "Ġran", "Ġfar", "Ġmodel", "Ġsparse",
         "ing", "s", "ed", ".", ",", "Ċ", "Ġ<b>&", "Ġred", "Ġblue", "Ġgreen", "Ġone", "Ġtwo", "Ġthree"]
MAX_ROWS = 1000
DOC_LENGTHS = [37, 52, 44, 61, 29, 70, 48, 55, 40, 66, 33, 58, 47, 62, 39, 50, 45, 57, 41, 65, 36, 53, 60]


def _write_data(path, *, with_text=True, d=D, seed=0):
  """Rows = a token-dependent sparse mix of atoms (1..6 per token) + a little of the previous token."""
  rng = np.random.default_rng(seed)
  atoms = rng.normal(size=(48, d))
  atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
  sets = [rng.choice(48, size=1 + t % 6, replace=False) for t in range(len(VOCAB))]
  extra = {"vocab": "vocab.json"} if with_text else {}
  w = ShardWriter(str(path), d_model=d, dtype="float32", rows_per_shard=400,
                  source={"model": "toy", "layer": 1, "site": "block_output"}, extra=extra)
  for doc, n in enumerate(DOC_LENGTHS):
    tok = rng.integers(0, len(VOCAB), size=n)
    x = np.stack([rng.uniform(0.5, 2.0, len(sets[t])) @ atoms[sets[t]] for t in tok])
    x[1:] += 0.3 * atoms[[sets[t][0] for t in tok[:-1]]]
    x += 0.02 * rng.normal(size=x.shape)
    side = {"tokens": tok.astype(np.int32), "doc_index": np.stack([np.full(n, doc), np.arange(n)], 1)} if with_text else {}
    w.add(x, **side)
  w.close()
  if with_text:
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
      json.dump(VOCAB, f, ensure_ascii=False)
  return str(path)


def _train(data, workdir, arch, steps):
  cfg = config.apply_overrides(config.Config(), [
      f"sae.arch={arch}", "sae.k=3", "sae.expansion=4", f"train.steps={steps}", "train.batch_size=64",
      "train.log_every=5", "train.checkpoint_every=1000", "data.prefetch=0"])
  trainer.train(data, str(workdir), cfg, progress=False, log=lambda m: None)
  return str(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("report")
  data = _write_data(root / "acts")
  soft = _train(data, root / "soft", "softsae", 30)
  topk = _train(data, root / "topk", "topk", 20)
  out = str(root / "out" / "soft.html")
  rc = cli.main(["report", "--workdir", soft, "--data", data, "--compare", topk, "--max-rows", str(MAX_ROWS),
                 "--out", out])
  assert rc == 0
  with open(out, encoding="utf-8") as f:
    page = f.read()
  return {"root": root, "data": data, "soft": soft, "topk": topk, "out": out, "html": page}


def _token_spans(page):
  """(attrs dict, inner text) of every passage token span."""
  spans = []
  for m in re.finditer(r'<span class="tk( sp)?" ([^>]*)>([^<]*)</span>', page):
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(2)))
    spans.append((attrs, html.unescape(m.group(3))))
  return spans


@pytest.mark.slow
def test_report_is_self_contained_with_all_sections(runs):
  page = runs["html"]
  assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', page, re.I)
  assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
  for sid in ("summary", "curves", "khist", "kerr", "text", "latents", "dead"):
    assert f'<section id="{sid}">' in page
  pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
  assert len(pngs) == 4  # curves, k histogram, k vs error, firing frequencies; nothing else
  assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
  # header: arch, F, k, steps, the data's source block, eval numbers; the compared run has a row
  assert "softsae" in page and "F=64" in page and "30 of 30" in page and "source.model" in page
  assert "<tr><td>soft</td><td>softsae</td>" in page and "<tr><td>topk</td><td>topk</td>" in page
  assert "FVU" in page and "mean k̂" in page and "k̂ 5–50–95%" in page


@pytest.mark.slow
def test_passage_tokens_match_the_model_and_the_vocab(runs):
  page = runs["html"]
  spans = _token_spans(page)
  assert spans, "no coloured token spans"
  rows = np.array([int(a["data-row"]) for a, _ in spans])
  tok = np.concatenate([np.load(os.path.join(runs["data"], f)) for f in sorted(os.listdir(runs["data"]))
                        if f.startswith("tokens_")])
  doc = np.concatenate([np.load(os.path.join(runs["data"], f)) for f in sorted(os.listdir(runs["data"]))
                        if f.startswith("doc_index_")])[:, 0]
  # Whole documents (all shorter than PASSAGE_TOKENS; the last one may be cut by --max-rows), in data
  # order, the first one first.
  shown_docs = sorted(set(doc[rows].tolist()))
  assert len(shown_docs) == report.PASSAGE_DOCS and shown_docs[0] == 0
  assert np.all(np.diff(rows) > 0)
  expected_rows = np.flatnonzero(np.isin(doc[:MAX_ROWS], shown_docs))
  np.testing.assert_array_equal(rows, expected_rows)
  ends = np.cumsum(DOC_LENGTHS)
  assert len(spans) == sum(min(DOC_LENGTHS[d], MAX_ROWS - (ends[d] - DOC_LENGTHS[d])) for d in shown_docs)
  assert page.count('<div class="doc">') == report.PASSAGE_DOCS
  # k-hat and L0 from an independent inference call on exactly those rows
  model = load_model(runs["soft"])
  x = np.concatenate([np.load(os.path.join(runs["data"], f)) for f in sorted(os.listdir(runs["data"]))
                      if f.startswith("shard_")])[rows]
  _, acts, k_hat = model.infer(x)
  l0 = (acts != 0).sum(axis=1)
  np.testing.assert_allclose([float(a["data-k"]) for a, _ in spans], k_hat, atol=2e-3)
  np.testing.assert_array_equal([int(a["data-l0"]) for a, _ in spans], l0)
  assert np.all(l0 <= np.floor(k_hat))
  display = report.display_vocab(VOCAB)
  for (attrs, inner), r, kh, n in zip(spans, rows, k_hat, l0):
    title = html.unescape(attrs["title"])
    assert title == f"{display[tok[r]]!r} · k̂ {kh:.2f} · L0 {n}"
    assert re.fullmatch(r"background:#[0-9a-f]{6};color:#(111|fff)", attrs["style"])
    assert "Ġ" not in inner and "Ċ" not in inner and inner.strip() == inner and inner
  # word-piece markers rendered: a word start gets a space before its span, Ċ becomes ↵ plus a line break
  assert any(inner == "↵" for _, inner in spans) == (VOCAB.index("Ċ") in tok[rows])
  assert "Ġ" not in page and "&lt;b&gt;&amp;" in page and "<b>&" not in page
  # the colour legend states the numbers
  legend = page[page.index('<div class="legend">'):]
  assert re.search(r'<div class="ticks"><span style="left:[\d.]+%">[\d.]+</span>', legend)


@pytest.mark.slow
def test_top_contexts(runs):
  page = runs["html"]
  cards = page.split('<div class="lc">')[1:]
  assert report.N_FREQ_LATENTS <= len(cards) <= report.N_FREQ_LATENTS + report.N_MAXACT_LATENTS
  for card in cards:
    ctx = re.findall(r'<div class="ctx" title="row (\d+)"><span class="v">([\d.e+-]+)</span>', card)
    assert 1 <= len(ctx) <= report.N_CONTEXTS
    vals = [float(v) for _, v in ctx]
    assert vals == sorted(vals, reverse=True) and vals[0] > 0
    assert card.count('<span class="c">') == len(ctx)


@pytest.mark.slow
def test_topk_report_without_text_default_out(runs, tmp_path):
  data = _write_data(tmp_path / "plain", with_text=False)
  path = report.build_report(runs["topk"], data, None, max_rows=300)
  assert path == os.path.join(runs["topk"], "report.html")
  with open(path, encoding="utf-8") as f:
    page = f.read()
  assert "Per-token L0 distribution" in page and "k̂ mean" not in page
  assert "No token text in this dataset" in page and '<span class="tk' not in page
  assert "Every token has L0 = 3" in page  # TopK: the error panel falls back to a histogram
  assert page.count('<div class="ctx"') >= report.N_FREQ_LATENTS  # latents still listed, by row
  # vision data has tokens and a vocab, but they name patch positions: no text sections either
  vision = str(tmp_path / "vision")
  shutil.copytree(runs["data"], vision)
  with open(os.path.join(vision, "manifest.json")) as f:
    manifest = json.load(f)
  manifest["vision"] = {"patch_grid": [4, 4], "prefix_tokens": 1}
  with open(os.path.join(vision, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  with open(report.build_report(runs["soft"], vision, str(tmp_path / "v.html"), max_rows=200), encoding="utf-8") as f:
    page = f.read()
  assert "Vision data" in page and '<span class="tk' not in page and "Per-token k̂ distribution" in page


def test_display_vocab_word_pieces():
  assert report.display_vocab(["[CLS]", "hello", "##ing", "[SEP]"]) == ["[CLS]", " hello", "ing", "[SEP]"]
  assert report.display_vocab(["▁the", "▁cat", "s", "<0x0A>", "<s>"]) == [" the", " cat", "s", "\n", "<s>"]
  assert report.display_vocab(["Ġthe", "Ġcat", "Ċ", "<|endoftext|>"]) == [" the", " cat", "\n", "<|endoftext|>"]
  assert report.display_vocab([" the", "cat", "\n"]) == [" the", "cat", "\n"]  # already display strings


@pytest.mark.slow
def test_errors_are_one_line(runs, tmp_path, capsys, monkeypatch):
  with pytest.raises(CheckpointError, match="does not exist"):
    report.build_report(str(tmp_path / "nope"), runs["data"], str(tmp_path / "r.html"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no checkpoints"):
    report.build_report(str(tmp_path / "empty"), runs["data"], str(tmp_path / "r.html"))
  wide = _write_data(tmp_path / "wide", with_text=False, d=D + 4)
  with pytest.raises(DataError, match=f"d_model is {D + 4}.*d_model={D}"):
    report.build_report(runs["soft"], wide, str(tmp_path / "r.html"))
  # a --compare run of another width (its model is the TopK run's, relabelled, to spare a training)
  def load(workdir, mesh=None):
    m = load_model(workdir, mesh=mesh)
    if workdir != runs["topk"]:
      return m
    sae = dataclasses.replace(m.cfg.sae, d_in=D + 4)
    return dataclasses.replace(m, cfg=dataclasses.replace(m.cfg, sae=sae))

  monkeypatch.setattr(report, "load", load)
  with pytest.raises(DataError, match=f"the --compare run {re.escape(runs['topk'])} was trained on d_model={D + 4}"):
    report.build_report(runs["soft"], runs["data"], str(tmp_path / "r.html"), compare=[runs["topk"]])
  capsys.readouterr()
  assert cli.main(["report", "--workdir", str(tmp_path / "nope"), "--data", runs["data"]]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
  assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_nonfinite_rows(runs, tmp_path):
  data = str(tmp_path / "nan")
  shutil.copytree(runs["data"], data)
  x = np.load(os.path.join(data, "shard_00000.npy"))
  x[3, 0] = np.nan  # row 3 is in document 0, which the passage shows
  np.save(os.path.join(data, "shard_00000.npy"), x)
  with pytest.raises(DataError, match="non-finite value .* row 3"):
    report.build_report(runs["soft"], data, str(tmp_path / "r.html"), max_rows=200)
  path = report.build_report(runs["soft"], data, str(tmp_path / "r.html"), max_rows=200, skip_nonfinite=True)
  with open(path, encoding="utf-8") as f:
    page = f.read()
  spans = _token_spans(page)
  assert [a["data-row"] for a, _ in spans if "non-finite" in a["title"]] == ["3"]
  assert "199 of" in page and "1 non-finite skipped" in page


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_report_renders_in_headless_chromium(runs, tmp_path):
  mpimg = pytest.importorskip("matplotlib.image")
  png = tmp_path / "shot.png"
  cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,2400",
         "file://" + os.path.abspath(runs["out"])]
  subprocess.run(cmd, check=True, capture_output=True, timeout=120)
  img = mpimg.imread(str(png))
  assert img.shape[0] == 2400 and img.shape[1] == 1280
  rgb = (img[..., :3] * 255).round().astype(np.int64)
  colours = np.unique(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2])
  assert len(colours) > 500, f"only {len(colours)} distinct colours: blank or unstyled page"
  assert rgb.std() > 20
  # not just the page background: a good share of pixels differ from the most common colour
  values, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
  assert counts.max() / counts.sum() < 0.9
