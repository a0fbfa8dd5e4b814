"""Interop: ``softsae convert`` (SAELens, dictionary_learning, sparsify, Gemma Scope), the torch-only
module, the Flax NNX adapter and the NNX splice example.

Fast tier: hand-written foreign files (sparsify in bf16, Gemma Scope with b_dec != 0, a SAELens
SoftSAE folder) against NumPy references of their own forward passes, the torch module with jax
unimportable, every refusal as one ``error:`` line, and the identity splice. Slow tier: every arch
trained on tiny data, exported, imported and exported again (byte-identical), the imported workdir's
inference against the original's, the torch module and the Flax adapter against the JAX engine, and
the real sae-lens in its own environment (``$SOFTSAE_SAELENS_PYTHON`` or ``.venv-saelens/bin/python``;
skipped with the reason when absent).
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import softsae_jax
from softsae_jax import config as config_lib
from softsae_jax import interop, synthetic, trainer
from softsae_jax.cli import main
from softsae_jax.errors import UserError
from softsae_jax.interop.common import ConvertError, Imported, write_workdir
from softsae_jax.shards import ShardWriter
from softsae_jax.types import Params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The torch module and the dictionary_learning format need torch (the `bridge` extra; CI installs it).
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch (the bridge extra)")
D = 16
SOURCE = {"model": "gpt2", "layer": 3, "site": "block_output", "hidden_states_index": 4, "seq_len": 64,
          "model_type": "gpt2", "special_tokens": {"prefix": [50256], "suffix": []}}
DL_ARCHS = ("softsae-x", "topk", "batchtopk", "matryoshka", "relu")
# The trained runs: every arch at its defaults, plus "softsae-x", SoftSAE with the authors' k-estimator
# (sae.k_input=x; the default reads the top activations, which the authors' dictionary_learning class cannot).
RUN_NAMES = config_lib.ARCHS + ("softsae-x",)


def arch_of(name):
  return name.split("-")[0]


def env1():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def cli(capsys, *args):
  """Runs ``softsae ARGS``; returns (exit status, stderr)."""
  rc = main([str(a) for a in args])
  return rc, capsys.readouterr().err


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def unit_rows(rng, f, d):
  w = rng.normal(size=(f, d))
  return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)


def keep_top(acts, count):
  """NumPy reference: the ``count`` (per row) largest entries of each row, zeros elsewhere."""
  out = np.zeros_like(acts)
  order = np.argsort(-acts, axis=-1, kind="stable")
  for i in range(acts.shape[0]):
    idx = order[i, :int(count[i])]
    out[i, idx] = acts[i, idx]
  return out


# ------------------------------------------------------------------------------------ hand-made files


def write_saelens_softsae(path, rng, d=D, f=64, k=3, k_max=6, hook="blocks.5.hook_resid_post", k_input="x",
                          unit=True):
  """A SAELens-format SoftSAE folder (our layout) with random weights; returns its tensors.
  ``k_input="top_acts"``: the estimator reads the top k_max + 16 activations (hidden width 5);
  ``unit=False``: decoder rows of norms in [0.5, 2]."""
  os.makedirs(path)
  w_dec = unit_rows(rng, f, d)
  if not unit:
    w_dec = (w_dec * rng.uniform(0.5, 2.0, size=(f, 1))).astype(np.float32)
  m, h = (d, f) if k_input == "x" else (min(k_max + 16, f), 5)
  t = {"W_enc": (w_dec.T + 0.1 * rng.normal(size=(d, f))).astype(np.float32),
       "b_enc": (0.1 * rng.normal(size=f)).astype(np.float32), "W_dec": w_dec,
       "b_dec": (0.5 * rng.normal(size=d)).astype(np.float32),
       "W_k1": (0.3 * rng.normal(size=(m, h))).astype(np.float32), "b_k1": (0.1 * rng.normal(size=h)).astype(np.float32),
       "w_k2": (0.3 * rng.normal(size=h)).astype(np.float32), "b_k2": np.asarray(0.2, np.float32)}
  save_file(t, os.path.join(path, "sae_weights.safetensors"))
  cfg = {"d_in": d, "d_sae": f, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
         "normalize_activations": "none", "reshape_activations": "none", "architecture": "softsae", "k": k,
         "k_max": k_max, "metadata": {"sae_lens_version": "6.0.0", "model_name": "gpt2", "hook_name": hook,
                                      "context_size": 128, "prepend_bos": True}}
  if k_input != "x":
    cfg.update(k_input=k_input, k_hidden=h)
  with open(os.path.join(path, "cfg.json"), "w") as fh:
    json.dump(cfg, fh)
  return t, cfg


def softsae_reference(t, x, k_max):
  """NumPy reference of our SoftSAE encode/decode in raw units (SAELens layout tensors); the estimator
  reads x - b_dec, or, when W_k1 has another row count than D (k_input=top_acts), the sorted top activations."""
  sae_in = x.astype(np.float64) - t["b_dec"]
  pre = np.maximum(sae_in @ t["W_enc"] + t["b_enc"], 0.0)
  m = t["W_k1"].shape[0]
  feats = sae_in if m == x.shape[1] else -np.sort(-pre, axis=1)[:, :m]
  logit = np.maximum(feats @ t["W_k1"] + t["b_k1"], 0.0) @ t["w_k2"] + t["b_k2"]
  k_hat = np.clip(k_max / (1.0 + np.exp(-logit)), 1.0, pre.shape[-1])
  codes = keep_top(pre, np.floor(k_hat))
  return codes, codes @ t["W_dec"] + t["b_dec"], k_hat


def write_sparsify(path, rng, d=D, f=64, k=4, dtype=ml_dtypes.bfloat16, **cfg_over):
  os.makedirs(path)
  w = unit_rows(rng, f, d)
  t = {"encoder.weight": (w + 0.1 * rng.normal(size=(f, d))).astype(dtype),
       "encoder.bias": (0.1 * rng.normal(size=f)).astype(dtype),
       "W_dec": w.astype(dtype), "b_dec": (0.5 * rng.normal(size=d)).astype(dtype)}
  t.update(cfg_over.pop("extra_tensors", {}))
  save_file(t, os.path.join(path, "sae.safetensors"))
  cfg = {"activation": "topk", "expansion_factor": f // d, "normalize_decoder": True, "num_latents": 0, "k": k,
         "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d, **cfg_over}
  with open(os.path.join(path, "cfg.json"), "w") as fh:
    json.dump(cfg, fh)
  return {n: a.astype(np.float32) for n, a in t.items()}


def write_gemmascope(path, rng, d=D, f=64):
  os.makedirs(path)
  w_dec = unit_rows(rng, f, d)
  t = {"W_enc": (w_dec.T + 0.1 * rng.normal(size=(d, f))).astype(np.float32), "W_dec": w_dec,
       "b_enc": (0.1 * rng.normal(size=f)).astype(np.float32), "b_dec": rng.normal(size=d).astype(np.float32),
       "threshold": rng.uniform(0.2, 0.8, size=f).astype(np.float32)}
  np.savez(os.path.join(path, "params.npz"), **t)
  return t


def identity_relu(d):
  """A relu SAE whose reconstruction is its input: F = 2D, W_enc = [I, -I], W_dec = [I; -I] (unit rows)."""
  eye = np.eye(d, dtype=np.float32)
  cfg = config_lib.Config(sae=config_lib.SaeConfig(arch="relu", k=1, n_latents=2 * d),
                          data=config_lib.DataConfig(normalize=False)).resolve(d)
  params = Params(w_enc=np.concatenate([eye, -eye], 1), b_enc=np.zeros(2 * d, np.float32),
                  w_dec=np.concatenate([eye, -eye], 0), b_dec=np.zeros(d, np.float32))
  return cfg, params


# ------------------------------------------------------------------------------------ fast tier


def test_sparsify_bf16_imports_and_matches_its_forward(tmp_path, capsys):
  rng = np.random.default_rng(0)
  src = tmp_path / "run" / "layers.6"
  t = write_sparsify(str(src), rng, k=4)
  wd = tmp_path / "wd"
  rc, err = cli(capsys, "convert", "--from", "sparsify", "--in", src, "--workdir", wd)
  assert rc == 0, err
  x = (2.0 * rng.normal(size=(300, D))).astype(np.float32)
  pre = np.maximum((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"], 0.0)
  codes = keep_top(pre, np.full(len(x), 4))
  recon = codes @ t["W_dec"] + t["b_dec"]
  model = softsae_jax.load(str(wd))
  assert (model.arch, model.norm_factor, model.cfg.sae.k) == ("topk", 1.0, 4)
  got = model.infer(x)
  assert rel(got.recon, recon) <= 1e-5 and rel(got.codes, codes) <= 1e-5
  np.testing.assert_array_equal(got.codes != 0, codes != 0)
  run = json.load(open(wd / "run.json"))
  assert run["import"]["format"] == "sparsify" and run["import"]["hookpoint"] == "layers.6"
  assert run["import"]["dtype"] == "bfloat16"
  # the run root (several hookpoints) is refused with a hint
  rc, err = cli(capsys, "convert", "--from", "sparsify", "--in", tmp_path / "run", "--workdir", tmp_path / "wd2")
  assert rc == 1 and "hookpoint folders (layers.6)" in err and len(err.strip().splitlines()) == 1


@needs_torch
def test_gemmascope_folds_b_dec_and_matches_its_forward(tmp_path, capsys):
  rng = np.random.default_rng(1)
  t = write_gemmascope(str(tmp_path / "gs"), rng)
  assert np.abs(t["b_dec"]).max() > 0.1
  wd = tmp_path / "wd"
  rc, err = cli(capsys, "convert", "--from", "gemmascope", "--in", tmp_path / "gs" / "params.npz", "--workdir", wd)
  assert rc == 0, err
  x = (2.0 * rng.normal(size=(300, D))).astype(np.float32)
  pre = x.astype(np.float64) @ t["W_enc"] + t["b_enc"]  # Gemma Scope: no b_dec subtraction
  codes = pre * (pre > t["threshold"])
  recon = codes @ t["W_dec"] + t["b_dec"]
  assert 0.05 < (codes != 0).mean() < 0.95
  model = softsae_jax.load(str(wd))
  assert model.arch == "jumprelu"
  got = model.infer(x)
  assert rel(got.recon, recon) <= 1e-5 and rel(got.codes, codes) <= 1e-5
  np.testing.assert_array_equal(got.codes != 0, codes != 0)
  # no dictionary_learning layout for jumprelu: one line, nothing written
  rc, err = cli(capsys, "convert", "--workdir", wd, "--to", "dictionary_learning", "--out", tmp_path / "dl")
  assert rc == 1 and err.startswith("error: arch jumprelu has no dictionary_learning layout")
  assert len(err.strip().splitlines()) == 1 and not (tmp_path / "dl").exists()
  # it exports to SAELens as jumprelu with the folded bias, in raw units
  rc, err = cli(capsys, "convert", "--workdir", wd, "--to", "saelens", "--out", tmp_path / "sl")
  assert rc == 0, err
  assert json.load(open(tmp_path / "sl" / "cfg.json"))["architecture"] == "jumprelu"


@needs_torch
@pytest.mark.parametrize("k_input", ["x", "top_acts"])
def test_saelens_softsae_folder_torch_module_and_jax_agree(tmp_path, capsys, k_input):
  """A hand-written SAELens SoftSAE folder: NumPy reference == torch module == imported JAX workdir,
  whose export writes the same folder back."""
  import torch

  from softsae_jax.torch_module import SaeModule

  rng = np.random.default_rng(2)
  t, _ = write_saelens_softsae(str(tmp_path / "sl"), rng, k_input=k_input)
  x = (2.0 * rng.normal(size=(64, D))).astype(np.float32)
  codes, recon, k_hat = softsae_reference(t, x, 6)
  assert len(np.unique(np.floor(k_hat))) > 1  # k varies per row
  mod = SaeModule.from_dir(str(tmp_path / "sl"))
  with torch.no_grad():
    tc = mod.encode(torch.from_numpy(x)).numpy()
    assert rel(tc, codes) <= 1e-5 and rel(mod.decode(torch.from_numpy(tc)).numpy(), recon) <= 1e-5
    assert np.abs(mod.estimate_k(torch.from_numpy(x)).numpy() - k_hat).max() <= 1e-5
    x3 = torch.from_numpy(x.reshape(4, 16, D))  # [B, T, D]
    assert rel(mod(x3).numpy().reshape(-1, D), recon) <= 1e-5
  wd = tmp_path / "wd"
  rc, err = cli(capsys, "convert", "--from", "saelens", "--in", tmp_path / "sl", "--workdir", wd)
  assert rc == 0, err
  got = softsae_jax.load(str(wd)).infer(x)
  assert rel(got.codes, tc) <= 1e-5 and rel(got.recon, recon) <= 1e-5
  np.testing.assert_array_equal(got.codes != 0, codes != 0)
  assert np.abs(got.k - k_hat).max() <= 1e-5
  imported = softsae_jax.load(str(wd)).cfg.sae
  assert (imported.k_input, imported.k_max) == (k_input, 6) and (k_input == "x" or imported.k_hidden == 5)
  rc, err = cli(capsys, "convert", "--workdir", wd, "--to", "saelens", "--out", tmp_path / "back")
  assert rc == 0, err
  from safetensors.numpy import load_file

  back = load_file(str(tmp_path / "back" / "sae_weights.safetensors"))
  assert all(np.array_equal(back[n], np.asarray(a, np.float32)) for n, a in t.items())
  cfg_back = json.load(open(tmp_path / "back" / "cfg.json"))
  assert cfg_back.get("k_input", "x") == k_input and cfg_back["k_max"] == 6
  if k_input == "top_acts":  # the authors' dictionary_learning class has no such estimator: refused
    rc, err = cli(capsys, "convert", "--workdir", wd, "--to", "dictionary_learning", "--out", tmp_path / "dl")
    assert rc == 1 and "k_input=top_acts" in err and "--to saelens" in err and not (tmp_path / "dl").exists()
    return
  # SAEBench's duck type
  assert (mod.cfg.hook_layer, mod.cfg.hook_name, mod.cfg.model_name) == (5, "blocks.5.hook_resid_post", "gpt2")
  assert (mod.cfg.d_in, mod.cfg.d_sae, mod.cfg.context_size, mod.cfg.prepend_bos) == (D, 64, 128, True)
  assert mod.W_enc.shape == (D, 64) and mod.W_dec.shape == (64, D) and mod.b_enc.shape == (64,)
  assert mod.check_decoder_norms() and mod.cfg.metadata.hook_name == "blocks.5.hook_resid_post"
  assert mod.to(dtype=torch.float64) is mod and mod.dtype == torch.float64 and mod.cfg.dtype == "float64"
  assert str(mod.device) == "cpu"


@needs_torch
def test_torch_module_imports_and_runs_without_jax(tmp_path):
  rng = np.random.default_rng(3)
  t, _ = write_saelens_softsae(str(tmp_path / "sl"), rng)
  x = (2.0 * rng.normal(size=(6, D))).astype(np.float32)
  save_file({"x": x}, str(tmp_path / "x.safetensors"))
  probe = (
      "import sys\n"
      "sys.modules['jax'] = None  # any `import jax` now raises ImportError\n"
      "import json, torch\n"
      "from safetensors.torch import load_file\n"
      "from softsae_jax.torch_module import SaeModule\n"
      f"m = SaeModule.from_dir({str(tmp_path / 'sl')!r})\n"
      f"x = load_file({str(tmp_path / 'x.safetensors')!r})['x']\n"
      "with torch.no_grad():\n"
      "  c = m.encode(x.reshape(2, 3, -1))\n"
      "  r = m(x)\n"
      "print(json.dumps({'codes': c.reshape(6, -1).tolist(), 'recon': r.tolist(), 'shape': list(c.shape),\n"
      "                  'jax': sys.modules.get('jax') is not None,\n"
      "                  'softsae_jax_heavy': sorted(n for n in sys.modules if n in ('softsae_jax.archs', 'optax', 'orbax'))}))\n")
  r = subprocess.run([sys.executable, "-c", probe], env=env1(), capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  codes, recon, _ = softsae_reference(t, x, 6)
  assert out["shape"] == [2, 3, 64] and not out["jax"] and out["softsae_jax_heavy"] == []
  assert rel(out["codes"], codes) <= 1e-5 and rel(out["recon"], recon) <= 1e-5


def _write_refusal(kind, path, rng):
  """A folder that must be refused, and (format, what the error must name)."""
  if kind == "sparsify-groupmax":
    write_sparsify(path, rng, activation="groupmax")
    return "sparsify", ["cfg.json", "activation 'groupmax'"]
  if kind == "sparsify-transcode":
    write_sparsify(path, rng, transcode=True)
    return "sparsify", ["cfg.json", "transcode"]
  if kind == "sparsify-skip":
    write_sparsify(path, rng, extra_tensors={"W_skip": np.zeros((D, D), np.float32)})
    return "sparsify", ["sae.safetensors", "W_skip"]
  _, cfg = write_saelens_softsae(path, rng)
  if kind == "saelens-gated":
    cfg["architecture"] = "gated"
    names = ["cfg.json", "architecture 'gated'"]
  elif kind == "saelens-hook-z":
    cfg["metadata"]["hook_name"] = "blocks.5.attn.hook_z"
    names = ["cfg.json", "attention-head", "hook_z"]
  elif kind == "saelens-normalize":
    cfg["normalize_activations"] = "expected_average_only_in"
    names = ["cfg.json", "normalize_activations"]
  else:  # saelens-extra-tensor: a transcoder-like extra tensor
    save_file({"W_skip": np.zeros((D, D), np.float32)}, os.path.join(path, "sae_weights.safetensors"))
    return "saelens", ["sae_weights.safetensors", "W_skip"]
  with open(os.path.join(path, "cfg.json"), "w") as fh:
    json.dump(cfg, fh)
  return "saelens", names


@pytest.mark.parametrize("kind", ["sparsify-groupmax", "sparsify-transcode", "sparsify-skip", "saelens-gated",
                                  "saelens-hook-z", "saelens-normalize", "saelens-extra-tensor"])
def test_unsupported_inputs_are_one_line_errors(kind, tmp_path, capsys):
  fmt, names = _write_refusal(kind, str(tmp_path / "in"), np.random.default_rng(4))
  rc, err = cli(capsys, "convert", "--from", fmt, "--in", tmp_path / "in", "--workdir", tmp_path / "wd")
  assert rc == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
  for name in names:
    assert name in err, (name, err)
  assert not (tmp_path / "wd").exists()
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@needs_torch
def test_dictionary_learning_unsupported_dict_class(tmp_path, capsys):
  os.makedirs(tmp_path / "dl")
  with open(tmp_path / "dl" / "config.json", "w") as fh:
    json.dump({"trainer": {"dict_class": "GatedAutoEncoder", "trainer_class": "GatedSAETrainer"}}, fh)
  (tmp_path / "dl" / "ae.pt").write_bytes(b"")
  rc, err = cli(capsys, "convert", "--from", "dictionary_learning", "--in", tmp_path / "dl", "--workdir", tmp_path / "w")
  assert rc == 1 and "config.json" in err and "dict_class 'GatedAutoEncoder'" in err


def test_no_overwrite_and_flag_errors(tmp_path, capsys):
  rng = np.random.default_rng(5)
  write_saelens_softsae(str(tmp_path / "sl"), rng)
  (tmp_path / "wd").mkdir()
  (tmp_path / "wd" / "keep.txt").write_text("mine")
  rc, err = cli(capsys, "convert", "--from", "saelens", "--in", tmp_path / "sl", "--workdir", tmp_path / "wd")
  assert rc == 1 and "already exists" in err and len(err.strip().splitlines()) == 1
  assert os.listdir(tmp_path / "wd") == ["keep.txt"]
  rc, err = cli(capsys, "convert", "--from", "saelens", "--workdir", tmp_path / "x")
  assert rc == 1 and "--in" in err
  with pytest.raises(SystemExit) as e:
    main(["convert", "--to", "saelens", "--from", "saelens", "--workdir", "w"])
  assert e.value.code == 2
  assert issubclass(ConvertError, UserError)
  from softsae_jax import convert  # the CLI's lists (kept free of jax imports) are interop's

  assert (convert.EXPORT_FORMATS, convert.IMPORT_FORMATS) == (interop.EXPORT_FORMATS, interop.IMPORT_FORMATS)


def test_nnx_splice_identity_jit_error_term_and_keep_mask(tmp_path):
  from flax import nnx

  from softsae_jax.flax_adapter import SaeSplice, SaeWeight

  spec = importlib.util.spec_from_file_location("nnx_splice", os.path.join(REPO, "examples", "nnx_splice.py"))
  ex = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ex)
  d = 8
  model = ex.TinyLM(vocab=16, d=d, layers=2, heads=2, max_len=16, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(6).integers(0, 16, size=(2, 12)), jnp.int32)
  clean = np.asarray(model(tokens))
  cfg, params = identity_relu(d)
  write_workdir(str(tmp_path / "id"), Imported(cfg=cfg, params=params, threshold=None, norm_factor=1.0, step=0,
                                               origin={"format": "test"}))
  spliced = ex.splice(nnx.clone(model), 1, SaeSplice(str(tmp_path / "id")))
  eager = np.asarray(spliced(tokens))
  run = nnx.jit(lambda m, t: m(t))
  jitted, clean_jitted = np.asarray(run(spliced, tokens)), np.asarray(run(model, tokens))
  assert np.abs(eager - clean).max() <= 1e-6 and np.abs(jitted - clean_jitted).max() <= 1e-6
  # jit vs eager: the same up to XLA's fusion of the LM's own float ops (logits ~ 1)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  # the adapter's weights are state but not nnx.Param (an optimizer over the LM's Params skips them)
  assert "sae" not in nnx.state(spliced, nnx.Param)["blocks"][1]
  assert set(nnx.state(spliced, SaeWeight)["blocks"][1]["sae"]) >= {"w_enc", "w_dec", "norm_factor"}
  # a lossy SAE changes the logits; with error_term it returns its input exactly, and keep_mask
  # positions keep theirs
  rng = np.random.default_rng(7)
  lossy = Params(w_enc=rng.normal(size=(d, 32)).astype(np.float32), b_enc=np.zeros(32, np.float32),
                 w_dec=unit_rows(rng, 32, d), b_dec=np.zeros(d, np.float32))
  lcfg = config_lib.Config(sae=config_lib.SaeConfig(arch="topk", k=2, n_latents=32)).resolve(d).sae
  h = jnp.asarray(rng.normal(size=(2, 5, d)), jnp.float32)
  plain = SaeSplice.from_params(lcfg, lossy, norm_factor=2.0)
  assert np.abs(np.asarray(plain(h)) - np.asarray(h)).max() > 1e-2
  assert np.array_equal(np.asarray(SaeSplice.from_params(lcfg, lossy, norm_factor=2.0, error_term=True)(h)),
                        np.asarray(h))
  keep = jnp.zeros((2, 5), bool).at[:, 0].set(True)
  out = np.asarray(plain(h, keep_mask=keep))
  assert np.array_equal(out[:, 0], np.asarray(h)[:, 0]) and np.abs(out[:, 1:] - np.asarray(h)[:, 1:]).max() > 1e-2
  ablate = SaeSplice.from_params(lcfg, lossy, norm_factor=2.0, error_term=True)
  ablate.latent_scale[...] = jnp.zeros(32)
  assert np.allclose(np.asarray(ablate(h)), np.asarray(h) - (np.asarray(plain(h)) - np.asarray(
      SaeSplice.from_params(lcfg, lossy._replace(w_dec=np.zeros_like(lossy.w_dec)), norm_factor=2.0)(h))),
      atol=1e-5)


# ------------------------------------------------------------------------------------ slow tier: trained


class Runs:
  """Tiny trained workdirs (one per arch, trained on first use) and their exports, shared by the slow tests."""

  def __init__(self, root):
    self.root = root
    self.acts = os.path.join(root, "acts")
    mix = synthetic.make_mixture(3000, D, 48, k_values=(1, 2, 4), seed=0)
    self.x = (3.0 * mix.x_ND).astype(np.float32)  # norm factor != 1
    w = ShardWriter(self.acts, D, "float32", rows_per_shard=1000, source=SOURCE)
    w.add(self.x)
    w.close()
    self._wd, self._out = {}, {}

  def workdir(self, arch):
    if arch not in self._wd:
      more = ["sae.k_input=x"] if arch == "softsae-x" else []
      cfg = config_lib.apply_overrides(config_lib.Config(), more + [
          f"sae.arch={arch_of(arch)}", "sae.k=3", "sae.expansion=4", "train.steps=30", "train.batch_size=64",
          "train.log_every=10", "data.prefetch=0", "sae.threshold_start_frac=0.1", "train.hard_frac=0.2"])
      wd = os.path.join(self.root, arch)
      trainer.train(self.acts, wd, cfg, progress=False, log=lambda m: None)
      self._wd[arch] = wd
    return self._wd[arch]

  def export(self, arch, fmt):
    if (arch, fmt) not in self._out:
      out = os.path.join(self.root, f"{arch}.{fmt}")
      interop.export_workdir(self.workdir(arch), fmt, out)
      self._out[arch, fmt] = out
    return self._out[arch, fmt]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return Runs(str(tmp_path_factory.mktemp("interop")))


def same_files(a, b):
  assert sorted(os.listdir(a)) == sorted(os.listdir(b))
  for name in os.listdir(a):
    with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
      assert fa.read() == fb.read(), name


@needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("arch", RUN_NAMES)
def test_export_import_export_is_bitwise_and_inference_equal(arch, runs, tmp_path, capsys):
  x = runs.x[:512]
  orig = softsae_jax.load(runs.workdir(arch))
  assert abs(orig.norm_factor - 1.0) > 0.5
  ref = orig.infer(x)
  for fmt in interop.EXPORT_FORMATS:
    if fmt == "dictionary_learning" and arch not in DL_ARCHS:
      rc, err = cli(capsys, "convert", "--workdir", runs.workdir(arch), "--to", fmt, "--out", tmp_path / "no")
      assert rc == 1 and ("k_input=top_acts" if arch == "softsae" else "no dictionary_learning layout") in err
      continue
    out1, wd2, out2 = runs.export(arch, fmt), tmp_path / f"{fmt}.wd", tmp_path / f"{fmt}.out2"
    rc, err = cli(capsys, "convert", "--from", fmt, "--in", out1, "--workdir", wd2)
    assert rc == 0, err
    rc, err = cli(capsys, "convert", "--workdir", wd2, "--to", fmt, "--out", out2)
    assert rc == 0, err
    same_files(out1, out2)
    imp = softsae_jax.load(str(wd2))
    assert imp.arch == arch_of(arch) and imp.step == orig.step
    assert (imp.cfg.sae.k_input, imp.cfg.sae.k_hidden) == (orig.cfg.sae.k_input, orig.cfg.sae.k_hidden)
    got = imp.infer(x)
    assert rel(got.recon, ref.recon) <= 1e-6 and rel(got.codes, ref.codes) <= 1e-6, fmt
    np.testing.assert_array_equal(got.codes != 0, ref.codes != 0)
    if arch_of(arch) == "softsae":
      assert np.abs(got.k - ref.k).max() <= 1e-5
      # dictionary_learning stores the normalised weights and the norm factor, as the authors' class does
      assert imp.norm_factor == (orig.norm_factor if fmt == "dictionary_learning" else 1.0)


@pytest.mark.slow
def test_saelens_metadata_sparsity_and_imported_workdir_in_the_cli(runs, tmp_path, capsys):
  wd = runs.workdir("topk")
  out = tmp_path / "sl"
  rc, err = cli(capsys, "convert", "--workdir", wd, "--to", "saelens", "--out", out, "--eval-data", runs.acts,
                "--metadata", "model_name=openai-community/gpt2", "--metadata", "context_size=128")
  assert rc == 0, err
  cfg = json.load(open(out / "cfg.json"))
  md = cfg["metadata"]
  assert (cfg["architecture"], cfg["k"], cfg["rescale_acts_by_decoder_norm"]) == ("topk", 3, True)
  assert (cfg["apply_b_dec_to_input"], cfg["normalize_activations"], cfg["dtype"]) == (True, "none", "float32")
  assert md["model_name"] == "openai-community/gpt2" and md["context_size"] == 128
  assert (md["hook_name"], md["hf_hook_name"]) == ("blocks.3.hook_resid_post", "transformer.h.3")
  assert md["prepend_bos"] is True and md["exclude_special_tokens"] == [50256]
  assert md["dataset_path"] == os.path.abspath(runs.acts) and md["sae_lens_version"] == "6.0.0"
  model = softsae_jax.load(wd)
  block = md["softsae_jax"]
  assert (block["arch"], block["step"], block["norm_factor"]) == ("topk", model.step, model.norm_factor)
  assert block["source"]["model"] == "gpt2" and block["config"]["sae"]["arch"] == "topk"
  from safetensors.numpy import load_file

  from softsae_jax.evaluate import scan
  from softsae_jax.shards import open_dataset

  acc = scan(model, open_dataset(runs.acts))
  sparsity = load_file(str(out / "sparsity.safetensors"))["sparsity"]
  np.testing.assert_allclose(sparsity, np.log10(acc.fire_F / acc.n + 1e-10), rtol=1e-6)
  w = load_file(str(out / "sae_weights.safetensors"))
  np.testing.assert_array_equal(w["b_enc"], np.asarray(model.params.b_enc) * np.float32(model.norm_factor))
  # an imported workdir is a workdir: eval, encode, report
  wd2 = tmp_path / "imported"
  assert cli(capsys, "convert", "--from", "saelens", "--in", out, "--workdir", wd2)[0] == 0
  assert cli(capsys, "eval", "--workdir", wd2, "--data", runs.acts, "--out", tmp_path / "eval.json")[0] == 0
  ev = json.load(open(tmp_path / "eval.json"))
  ev0 = softsae_jax.evaluate.evaluate(model, open_dataset(runs.acts))
  assert abs(ev["fvu"] - ev0["fvu"]) <= 1e-5 and ev["l0_mean"] == ev0["l0_mean"]
  assert cli(capsys, "encode", "--workdir", wd2, "--data", runs.acts, "--out", tmp_path / "codes")[0] == 0
  rc, err = cli(capsys, "report", "--workdir", wd2, "--data", runs.acts, "--out", tmp_path / "r.html")
  assert rc == 0, err


@needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("arch", RUN_NAMES)
def test_torch_module_and_flax_adapter_match_the_engine(arch, runs):
  import torch

  from softsae_jax.flax_adapter import SaeSplice
  from softsae_jax.torch_module import SaeModule

  model = softsae_jax.load(runs.workdir(arch))
  x = runs.x[:240]
  ref = model.infer(x)
  mod = SaeModule.from_dir(runs.export(arch, "saelens"))
  with torch.no_grad():
    for shape in ((240, D), (8, 30, D)):
      xt = torch.from_numpy(x.reshape(shape))
      codes = mod.encode(xt).numpy().reshape(240, -1)
      assert rel(codes, ref.codes) <= 1e-5 and rel(mod.decode(mod.encode(xt)).numpy().reshape(240, D), ref.recon) <= 1e-5
      np.testing.assert_array_equal(codes != 0, ref.codes != 0)
    if arch_of(arch) == "softsae":
      assert np.abs(mod.estimate_k(torch.from_numpy(x)).numpy() - ref.k).max() <= 1e-5
  sae = SaeSplice(model)
  h = jnp.asarray(x.reshape(8, 30, D))
  assert rel(np.asarray(sae(h)).reshape(240, D), ref.recon) <= 1e-6
  assert rel(np.asarray(jax.jit(lambda v: sae.encode(v))(h)).reshape(240, -1), ref.codes) <= 1e-6


def saelens_python():
  path = os.environ.get("SOFTSAE_SAELENS_PYTHON") or os.path.join(REPO, ".venv-saelens", "bin", "python")
  return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


@pytest.mark.slow
@pytest.mark.skipif(saelens_python() is None, reason="no sae-lens environment ($SOFTSAE_SAELENS_PYTHON or "
                    ".venv-saelens/bin/python; .ci/run creates it)")
def test_real_sae_lens_loads_our_exports(runs, tmp_path):
  expect = {"topk": "TopKSAE", "relu": "StandardSAE", "jumprelu": "JumpReLUSAE", "batchtopk": "JumpReLUSAE",
            "matryoshka": "JumpReLUSAE", "softsae": "SoftSAELens"}
  cases = []
  for arch in RUN_NAMES:
    inf = softsae_jax.load(runs.workdir(arch)).infer(runs.x[:200])
    paths = {}
    for name, arr in (("x", runs.x[:200]), ("codes", inf.codes), ("recon", inf.recon)):
      paths[name] = str(tmp_path / f"{arch}.{name}.npy")
      np.save(paths[name], np.asarray(arr, np.float32))
    cases.append({"dir": runs.export(arch, "saelens"), "softsae": arch_of(arch) == "softsae", **paths})
  # SoftSAE with sae.k_input=top_acts and non-unit decoder rows, so that fold_W_dec_norm must keep the
  # selection and k-hat exact (a hand-written folder, NumPy reference)
  rng = np.random.default_rng(11)
  t, _ = write_saelens_softsae(str(tmp_path / "top_acts"), rng, k_input="top_acts", unit=False)
  xs = (2.0 * rng.normal(size=(64, D))).astype(np.float32)
  codes, recon, _ = softsae_reference(t, xs, 6)
  paths = {}
  for name, arr in (("x", xs), ("codes", codes), ("recon", recon)):
    paths[name] = str(tmp_path / f"top_acts.{name}.npy")
    np.save(paths[name], np.asarray(arr, np.float32))
  cases.append({"dir": str(tmp_path / "top_acts"), "softsae": True, **paths})
  spec = tmp_path / "spec.json"
  spec.write_text(json.dumps({"repo": REPO, "cases": cases}))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS", "JAX_PLATFORMS")}
  r = subprocess.run([saelens_python(), os.path.join(REPO, "tests", "saelens_check.py"), str(spec)], env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  print("sae-lens", out["sae_lens_version"])
  assert not out["jax_imported"]
  assert len(out["cases"]) == len(RUN_NAMES) + 1
  registered = False  # one process: only the first SoftSAE folder is read before the registration
  for arch, res in zip(RUN_NAMES + ("softsae",), out["cases"]):
    assert res["class"] == expect[arch_of(arch)], (arch, res)
    assert res["codes_rel"] <= 1e-5 and res["recon_rel"] <= 1e-5 and res["support_equal"], (arch, res)
    assert res["fold_raised"] is None and res["recon_rel_after_fold"] <= 1e-5, (arch, res)
    assert res["module_codes_rel"] <= 1e-5 and res["module_recon_rel"] <= 1e-5, (arch, res)
    if arch_of(arch) == "softsae":
      assert res["loads_before_register"] is registered and res["register_idempotent"], res
      registered = True


def dictionary_learning_reference(sd, dict_class, x):
  """NumPy reference of dictionary_learning's classes loading ``sd`` (``from_pretrained``) and encoding
  ``x`` as their default ``encode`` does, written from their documented semantics: SoftSAE (the authors'
  SoftSAEPatched) multiplies its biases by norm_factor at load and feeds (x - b_dec) / norm_factor to
  the k-estimator, keeping the floor(k-hat) largest; AutoEncoderTopK its k largest; BatchTopKSAE and
  MatryoshkaBatchTopKSAE those above the threshold; AutoEncoder all (ReLU)."""
  a = {k: v.numpy().astype(np.float64) for k, v in sd.items()}
  if dict_class == "MatryoshkaBatchTopKSAE":
    pre = np.maximum((x - a["b_dec"]) @ a["W_enc"] + a["b_enc"], 0.0)
    codes = pre * (pre > a["threshold"])
    return codes, codes @ a["W_dec"] + a["b_dec"], None
  if dict_class == "AutoEncoder":
    codes = np.maximum((x - a["bias"]) @ a["encoder.weight"].T + a["encoder.bias"], 0.0)
    return codes, codes @ a["decoder.weight"].T + a["bias"], None
  n = a.get("norm_factor", 1.0)
  b_enc, b_dec = a["encoder.bias"] * n, a["b_dec"] * n
  pre = np.maximum((x - b_dec) @ a["encoder.weight"].T + b_enc, 0.0)
  k_hat = None
  if dict_class == "SoftSAE":
    h = np.maximum((x - b_dec) / n @ a["k_estimator.0.weight"].T + a["k_estimator.0.bias"], 0.0)
    logit = (h @ a["k_estimator.2.weight"].T + a["k_estimator.2.bias"])[:, 0]
    k_hat = np.clip(a["k_max"] / (1.0 + np.exp(-logit)), 1.0, pre.shape[1])
    codes = keep_top(pre, np.floor(k_hat))
  elif dict_class == "AutoEncoderTopK":
    codes = keep_top(pre, np.full(len(x), int(a["k"])))
  else:
    codes = pre * (pre > a["threshold"])
  return codes, codes @ a["decoder.weight"].T + b_dec, k_hat


@needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("arch", DL_ARCHS)
def test_dictionary_learning_files_follow_their_classes(arch, runs):
  import torch

  from softsae_jax.interop.dictionary_learning import LAYOUT

  out = runs.export(arch, "dictionary_learning")
  sd = torch.load(os.path.join(out, "ae.pt"), weights_only=True)
  cfg = json.load(open(os.path.join(out, "config.json")))
  dict_class, trainer_class = LAYOUT[arch_of(arch)]
  assert (cfg["trainer"]["dict_class"], cfg["trainer"]["trainer_class"]) == (dict_class, trainer_class)
  assert (cfg["trainer"]["activation_dim"], cfg["trainer"]["dict_size"]) == (D, 4 * D)
  assert (cfg["trainer"]["layer"], cfg["trainer"]["lm_name"]) == (3, "gpt2")
  for name in ("k", "k_max"):
    if name in sd:
      assert sd[name].dtype == torch.int32 and sd[name].shape == ()
  for name in ("alpha", "norm_factor", "threshold"):
    if name in sd:
      assert sd[name].dtype == torch.float32 and sd[name].shape == ()
  model = softsae_jax.load(runs.workdir(arch))
  x = runs.x[:300].astype(np.float64)
  ref = model.infer(runs.x[:300])
  codes, recon, k_hat = dictionary_learning_reference(sd, dict_class, x)
  assert rel(ref.codes, codes) <= 1e-5 and rel(ref.recon, recon) <= 1e-5
  np.testing.assert_array_equal(ref.codes != 0, codes != 0)
  if k_hat is not None:
    assert np.abs(ref.k - k_hat).max() <= 1e-5
