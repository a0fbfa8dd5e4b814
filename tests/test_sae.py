"""The SAE family against a plain float64 NumPy implementation written here from docs/method.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softsae_jax import losses
from softsae_jax.config import SaeConfig
from softsae_jax.archs import encode, estimate_k, init_params
from softsae_jax.sae import decode, pre_acts
from softsae_jax.types import Params

D, F, B = 6, 16, 5


def np_laplace_cdf(t):
  return np.where(t <= 0, 0.5 * np.exp(np.minimum(t, 0)), 1 - 0.5 * np.exp(-np.maximum(t, 0)))


def np_soft_topk(x_BF, k_B, a):
  """Bisection on sum_j L((x_j - b)/a) = k, float64 (docs/method.md §1.2)."""
  out = np.zeros_like(x_BF)
  for i, (x, k) in enumerate(zip(x_BF, k_B)):
    lo, hi = x.min() - 60 * a - 50 * a * len(x), x.max() + 60 * a
    for _ in range(300):
      mid = (lo + hi) / 2
      if np_laplace_cdf((x - mid) / a).sum() > k:
        lo = mid
      else:
        hi = mid
    out[i] = np_laplace_cdf((x - (lo + hi) / 2) / a)
  return out


def random_params(cfg, seed=0):
  """Init, then perturb every leaf so biases and the estimator are not trivial."""
  p = init_params(jax.random.key(seed), cfg)
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree.flatten(p)
  leaves = [np.asarray(l, np.float64) + 0.1 * rng.normal(size=l.shape) for l in leaves]
  p64 = jax.tree.unflatten(tree, leaves)
  w_dec = p64.w_dec / np.linalg.norm(p64.w_dec, axis=1, keepdims=True)
  p64 = p64._replace(w_dec=w_dec)
  return jax.tree.map(lambda l: jnp.asarray(l, jnp.float32), p64), jax.tree.map(
      lambda l: np.asarray(np.asarray(l, np.float32), np.float64), p64)


def np_softsae(p, x, cfg, alpha, budget, dead):
  """SoftSAE training forward and loss (docs/method.md §2.2, §2.3, §3.1, §3.2), float64."""
  z = x - p.b_dec
  pre = np.maximum(z @ p.w_enc + p.b_enc, 0)
  est = p.extra
  h = np.maximum(z @ est.w_k1 + est.b_k1, 0)
  k_hat = np.clip(cfg.kmax / (1 + np.exp(-(h @ est.w_k2 + est.b_k2))), 1, F)
  w = np_soft_topk(pre, k_hat, alpha)
  acts = pre * w
  recon = acts @ p.w_dec + p.b_dec
  e = x - recon
  l2 = np.mean(np.sum(e ** 2, axis=1))
  delta = k_hat.mean() - budget
  k_loss = np.log1p(np.exp(cfg.k_loss_beta * delta)) / cfg.k_loss_beta
  n_dead = dead.sum()
  k_aux = min(cfg.k_aux, n_dead)
  aux_in = np.zeros_like(pre)
  for b in range(len(x)):
    dead_idx = np.flatnonzero(dead)
    top = dead_idx[np.argsort(-pre[b, dead_idx], kind="stable")[:k_aux]]
    aux_in[b, top] = pre[b, top]
  e_hat = aux_in @ p.w_dec
  aux = np.mean(np.sum((e - e_hat) ** 2, axis=1)) / np.mean(np.sum((e - e.mean(0)) ** 2, axis=1))
  loss = l2 + cfg.k_loss_weight * k_loss + cfg.auxk_alpha * aux
  return dict(pre=pre, k_hat=k_hat, acts=acts, recon=recon, l2=l2, k_loss=k_loss, aux=aux, loss=loss)


@pytest.fixture(scope="module")
def setup():
  cfg = SaeConfig(arch="softsae", d_in=D, n_latents=F, k=3, k_max=6, top_k_aux=4, soft_grad="faithful", k_input="x")
  p32, p64 = random_params(cfg)
  x = np.random.default_rng(1).normal(size=(B, D)).astype(np.float32)
  return cfg, p32, p64, x


def test_softsae_forward_and_loss_match_numpy(setup):
  cfg, p32, p64, x = setup
  alpha, budget = 0.3, 2.5
  dead = np.zeros(F, bool)
  dead[[1, 4, 7, 9, 11]] = True
  ref = np_softsae(p64, x.astype(np.float64), cfg, alpha, budget, dead)

  codes = encode(p32, jnp.asarray(x), cfg, train=True, alpha=alpha)
  recon = decode(p32, codes.acts_BF, cfg)
  np.testing.assert_allclose(codes.pre_BF, ref["pre"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(codes.k_B, ref["k_hat"], rtol=1e-5)
  np.testing.assert_allclose(codes.acts_BF, ref["acts"], rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(recon, ref["recon"], rtol=2e-4, atol=1e-5)
  valid = jnp.ones((B,), jnp.float32)
  l2 = losses.recon_loss(jnp.asarray(x), recon, valid)
  kl = losses.k_budget_loss(codes.k_B, budget, cfg.k_loss_beta, valid)
  aux = losses.auxk_loss(p32, codes.pre_BF, jnp.asarray(x) - recon, jnp.asarray(dead), cfg.k_aux, valid)
  np.testing.assert_allclose(l2, ref["l2"], rtol=1e-4)
  np.testing.assert_allclose(kl, ref["k_loss"], rtol=1e-4)
  np.testing.assert_allclose(aux, ref["aux"], rtol=1e-4)


def test_train_loss_fn_matches_numpy(setup):
  """The trainer's loss at a given step = the NumPy loss with that step's budget and alpha."""
  from softsae_jax import config as config_lib
  from softsae_jax.train import _loss_fn, schedules

  cfg, p32, p64, x = setup
  full = config_lib.Config(sae=cfg, train=config_lib.TrainConfig(steps=100, k_anneal_frac=0.1, alpha_anneal_frac=0.5))
  step = 3
  sched = schedules(full, step)
  budget, alpha = sched.k_budget, sched.alpha
  assert not bool(sched.hard)
  dead = np.zeros(F, bool)
  dead[[0, 2]] = True
  loss, _ = _loss_fn(p32, jnp.asarray(x), jnp.ones((B,), jnp.float32), jnp.asarray(dead), sched, full)
  ref = np_softsae(p64, x.astype(np.float64), cfg, float(alpha), float(budget), dead)
  np.testing.assert_allclose(loss, ref["loss"], rtol=2e-4)


def test_inference_is_hard_top_floor_khat(setup):
  cfg, p32, p64, x = setup
  codes = encode(p32, jnp.asarray(x), cfg)
  k_hat = np.asarray(codes.k_B)
  pre = np.asarray(codes.pre_BF)
  acts = np.asarray(codes.acts_BF)
  for b in range(B):
    kb = int(np.floor(k_hat[b]))
    top = np.argsort(-pre[b], kind="stable")[:kb]
    expect = np.zeros(F)
    expect[top] = pre[b, top]
    np.testing.assert_allclose(acts[b], expect, rtol=1e-6)
    assert (acts[b] != 0).sum() <= kb


def test_auxk_is_exactly_zero_without_dead_latents(setup):
  cfg, p32, _, x = setup
  xj = jnp.asarray(x)

  def f(params):
    codes = encode(params, xj, cfg, train=True, alpha=0.3)
    recon = decode(params, codes.acts_BF, cfg)
    return losses.auxk_loss(params, codes.pre_BF, xj - recon, jnp.zeros((F,), bool), cfg.k_aux,
                            jnp.ones((B,), jnp.float32))

  val, grads = jax.value_and_grad(f)(p32)
  assert float(val) == 0.0
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("arch,sparse", [("topk", "on"), ("topk", "off"), ("softsae", "on"), ("batchtopk", "off")])
@pytest.mark.parametrize("n_dead", [1, 3, 7])
def test_auxk_from_the_dead_columns_equals_the_full_selection(arch, sparse, n_dead, monkeypatch):
  """With at most k_aux dead latents, AuxK computed from their columns alone (x_BD given) has the
  value and every parameter gradient of the selection over all F latents; more take the full path."""
  from softsae_jax import archs, config as config_lib
  from softsae_jax.train import schedules

  monkeypatch.setattr(losses, "_AUXK_NARROW", 2)  # widths 2 and k_aux = 6: n_dead 1 | 3 | 7 (full)
  d, f, b = 12, 40, 9
  sae = SaeConfig(arch=arch, d_in=d, n_latents=f, k=4, k_max=8, top_k_aux=6, sparse_grads=sparse)
  cfg = config_lib.Config(sae=sae, train=config_lib.TrainConfig(steps=100, k_anneal_frac=0.0, alpha_anneal_frac=0.0))
  params = init_params(jax.random.key(3), sae)
  rng = np.random.default_rng(n_dead)
  params = params._replace(b_enc=jnp.asarray(rng.normal(0, 0.3, f), jnp.float32),
                           b_dec=jnp.asarray(rng.normal(0, 0.1, d), jnp.float32))
  x = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
  valid = jnp.asarray([1.0] * (b - 1) + [0.0])
  dead = np.zeros(f, bool)
  dead[rng.choice(f, n_dead, replace=False)] = True
  sched = schedules(cfg, 50)

  def loss(p, compact):
    terms = archs.get(arch).train_terms(p, x, valid, sched, cfg, None)
    return losses.auxk_loss(p, terms.pre_BF, x - terms.recon_BD, jnp.asarray(dead), sae.k_aux, valid,
                            x_BD=x if compact else None)

  v_full, g_full = jax.value_and_grad(loss)(params, False)
  v_cols, g_cols = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, True)
  assert float(v_full) > 0
  np.testing.assert_allclose(v_cols, v_full, rtol=1e-5)
  for name, a, c in zip(params._fields, g_full, g_cols):
    for la, lc in zip(jax.tree.leaves(a), jax.tree.leaves(c)):
      np.testing.assert_allclose(lc, la, rtol=1e-4, atol=1e-6, err_msg=name)
  assert float(jnp.abs(g_cols.w_enc).max()) > 0  # the encoder does get AuxK's gradient


def test_init_follows_the_method():
  cfg = SaeConfig(arch="softsae", d_in=8, n_latents=32, k=4, k_input="x")  # the authors' estimator
  p = init_params(jax.random.key(0), cfg)
  np.testing.assert_allclose(np.linalg.norm(p.w_dec, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(p.w_enc, p.w_dec.T)
  np.testing.assert_array_equal(p.extra.w_k1, p.w_enc)
  assert float(jnp.abs(p.b_enc).max()) == 0.0 and float(jnp.abs(p.b_dec).max()) == 0.0
  bound = 1 / np.sqrt(32)
  assert float(jnp.abs(p.extra.w_k2).max()) <= bound
  # k-hat at init is near k_max / 2 (second layer output near 0).
  k = estimate_k(p, jnp.asarray(np.random.default_rng(0).normal(size=(64, 8)), jnp.float32), cfg)
  assert abs(float(k.mean()) - cfg.kmax / 2) < 1.5


def test_soft_grad_stop_keeps_khat_gradient_and_drops_score_gradient(setup):
  cfg, p32, _, x = setup
  import dataclasses

  stop = dataclasses.replace(cfg, soft_grad="stop")
  xj = jnp.asarray(x)

  def loss(params, c):
    codes = encode(params, xj, c, train=True, alpha=0.3)
    return jnp.sum(decode(params, codes.acts_BF, c) ** 2)

  g_f = jax.grad(loss)(p32, cfg)
  g_s = jax.grad(loss)(p32, stop)
  # The estimator learns in both modes, and its gradient is the same (it only enters through k-hat).
  assert float(jnp.abs(g_s.extra.w_k2).max()) > 0
  np.testing.assert_allclose(g_s.extra.w_k2, g_f.extra.w_k2, rtol=1e-5, atol=1e-7)
  # The encoder gradient differs: the operator's competition term is dropped.
  assert float(jnp.abs(g_s.w_enc - g_f.w_enc).max()) > 1e-6


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "relu"])
def test_baselines_encode(arch):
  cfg = SaeConfig(arch=arch, d_in=D, n_latents=F, k=3, matryoshka_fractions=(0.25, 0.25, 0.5))
  p32, _ = random_params(cfg, seed=2)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(B, D)), jnp.float32)
  codes = encode(p32, x, cfg, train=True)
  pre, acts = np.asarray(codes.pre_BF), np.asarray(codes.acts_BF)
  if arch == "topk":
    assert ((acts != 0).sum(1) <= 3).all()
    for b in range(B):
      top = np.argsort(-pre[b], kind="stable")[:3]
      np.testing.assert_allclose(acts[b, top], pre[b, top])
  elif arch in ("batchtopk", "matryoshka"):
    flat = pre.reshape(-1)
    kept = np.sort(flat)[::-1][:3 * B]
    np.testing.assert_allclose(np.sort(acts[acts != 0])[::-1], kept[kept > 0], rtol=1e-6)
    inf = np.asarray(encode(p32, x, cfg, arch_state=jnp.float32(0.2)).acts_BF)
    np.testing.assert_array_equal(inf, np.where(pre > 0.2, pre, 0))
  else:
    np.testing.assert_array_equal(acts, pre)


def test_matryoshka_loss_matches_numpy():
  cfg = SaeConfig(arch="matryoshka", d_in=D, n_latents=F, k=3, matryoshka_fractions=(0.25, 0.25, 0.5))
  p32, p64 = random_params(cfg, seed=4)
  x = np.random.default_rng(5).normal(size=(B, D))
  acts = np.abs(np.random.default_rng(6).normal(size=(B, F)))
  sizes = cfg.group_sizes()
  assert sizes == (4, 4, 8)
  ref = []
  for g in range(len(sizes)):
    c = sum(sizes[:g + 1])
    recon = acts[:, :c] @ p64.w_dec[:c] + p64.b_dec
    ref.append(np.mean(np.sum((x - recon) ** 2, axis=1)))
  loss, recon = losses.matryoshka_loss(p32, jnp.asarray(x, jnp.float32), jnp.asarray(acts, jnp.float32), sizes,
                                       jnp.ones((B,), jnp.float32))
  np.testing.assert_allclose(loss, np.mean(ref), rtol=1e-5)
  np.testing.assert_allclose(recon, acts @ p64.w_dec + p64.b_dec, rtol=1e-5, atol=1e-6)


def test_pre_acts_shape_check(setup):
  cfg, p32, _, _ = setup
  with pytest.raises(ValueError, match=r"x_BD must be \[B, D=6\]"):
    encode(p32, jnp.ones((2, 5)), cfg)
  assert pre_acts(p32, jnp.ones((2, D)), cfg).shape == (2, F)
  assert isinstance(p32, Params)


def test_sparse_decode_matches_dense_values_and_gradients():
  from softsae_jax.sae import scatter_codes, sparse_decode, topk_sparse

  rng = np.random.default_rng(7)
  w = jnp.asarray(rng.normal(size=(F, D)), jnp.float32)
  pre = jnp.asarray(np.abs(rng.normal(size=(B, F))), jnp.float32)
  k_B = jnp.asarray([1.0, 2.5, 3.0, 0.0, 3.9])
  vals, idx = topk_sparse(pre, k_B, 3)
  dense = scatter_codes(vals, idx, F)
  assert ((np.asarray(dense) != 0).sum(1) == [1, 2, 3, 0, 3]).all()
  g = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)

  def f_sparse(w, p):
    v, i = topk_sparse(p, k_B, 3)
    return jnp.sum(sparse_decode(w, i, v) * g)

  def f_dense(w, p):
    v, i = topk_sparse(p, k_B, 3)
    return jnp.sum((scatter_codes(v, i, F) @ w) * g)

  np.testing.assert_allclose(sparse_decode(w, idx, vals), dense @ w, rtol=1e-5, atol=1e-5)
  gs, gd = jax.grad(f_sparse, (0, 1))(w, pre), jax.grad(f_dense, (0, 1))(w, pre)
  for a, b in zip(gs, gd):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("soft_grad", ["stop", "faithful"])
def test_alpha_k_moves_only_the_khat_gradient(setup, soft_grad):
  """sae.alpha_k: the forward and the encoder/decoder gradients are those at alpha; k-hat's gradient is
  the one of a soft top-k at the softer alpha_k (stopped scores), not at alpha."""
  import dataclasses

  cfg, p32, _, x = setup
  base = dataclasses.replace(cfg, soft_grad=soft_grad)
  dec = dataclasses.replace(base, alpha_k=0.5)
  xj, alpha = jnp.asarray(x), 0.05
  v = jnp.asarray(np.random.default_rng(9).normal(size=(B, D)), jnp.float32)

  def loss(params, c):
    return jnp.sum(decode(params, encode(params, xj, c, train=True, alpha=alpha).acts_BF, c) * v)

  np.testing.assert_array_equal(encode(p32, xj, dec, train=True, alpha=alpha).acts_BF,
                                encode(p32, xj, base, train=True, alpha=alpha).acts_BF)
  g0, g1 = jax.grad(loss)(p32, base), jax.grad(loss)(p32, dec)
  for name in ("w_enc", "b_enc", "w_dec"):
    np.testing.assert_allclose(getattr(g1, name), getattr(g0, name), rtol=1e-5, atol=1e-6)

  from softsae_jax.topk import soft_topk

  def ref_k_loss(extra):  # k-hat's path alone, through a soft top-k at alpha_k = 0.5
    params = p32._replace(extra=extra)
    pre = jax.lax.stop_gradient(pre_acts(p32, xj, base))
    w = soft_topk(pre, estimate_k(params, xj, base), 0.5, max_k=base.kmax)
    return jnp.sum(decode(p32, pre * w, base) * v)

  g_ref = jax.grad(ref_k_loss)(p32.extra)
  for name in ("w_k1", "b_k1", "w_k2", "b_k2"):
    np.testing.assert_allclose(getattr(g1.extra, name), getattr(g_ref, name), rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(g1.extra.w_k2 - g0.extra.w_k2).max()) > 1e-4  # and it is not the one at alpha


def test_top_acts_estimator_reads_the_sorted_top_preactivations():
  """sae.k_input=top_acts: k-hat = clamp(k_max sigmoid(w2 . ReLU(top_M(pre) W1 + b1) + b2), 1, F) with
  M = k_max + 16 sorted pre-activations, float64 reference; no gradient reaches the SAE's own weights."""
  cfg = SaeConfig(arch="softsae", d_in=8, n_latents=40, k=3, k_max=6, k_input="top_acts", k_hidden=5)
  p32, p64 = random_params(cfg, seed=7)
  m = cfg.kmax + 16
  assert p32.extra.w_k1.shape == (m, 5) and p32.extra.b_k1.shape == (5,) and p32.extra.w_k2.shape == (5,)
  x = np.random.default_rng(8).normal(size=(B, 8))
  pre = np.maximum((x - p64.b_dec) @ p64.w_enc + p64.b_enc, 0)
  top = -np.sort(-pre, axis=1)[:, :m]
  h = np.maximum(top @ p64.extra.w_k1 + p64.extra.b_k1, 0)
  ref = np.clip(cfg.kmax / (1 + np.exp(-(h @ p64.extra.w_k2 + p64.extra.b_k2))), 1, 40)
  xj = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(estimate_k(p32, xj, cfg), ref, rtol=1e-5)
  g = jax.grad(lambda p: jnp.sum(estimate_k(p, xj, cfg)))(p32)
  assert all(float(jnp.abs(getattr(g, n)).max()) == 0.0 for n in ("w_enc", "b_enc", "w_dec", "b_dec"))
  assert float(jnp.abs(g.extra.w_k1).max()) > 0
  # Capped at F: M = min(k_max + 16, F).
  small = SaeConfig(arch="softsae", d_in=8, n_latents=12, k=3, k_max=6, k_input="top_acts", k_hidden=5)
  assert init_params(jax.random.key(0), small).extra.w_k1.shape == (12, 5)


def test_a_k_sweep_gives_every_member_the_same_top_acts_width():
  """sae.k_top: a k sweep's members (k_max = 2k each) share the largest member's estimator width, so
  their states stack and each member's own config trains the same shapes alone."""
  from softsae_jax import config as config_lib

  cfg = config_lib.Config(sae=SaeConfig(arch="softsae", k=8, n_latents=200),
                          sweep=config_lib.SweepConfig(k=(4, 8, 16))).resolve(16)
  assert cfg.sae.k_top == 2 * 16 + 16
  shapes = {init_params(jax.random.key(0), m.config.sae).extra.w_k1.shape for m in cfg.members()}
  assert shapes == {(48, 128)} and [m.config.sae.kmax for m in cfg.members()] == [8, 16, 32]
  single = config_lib.Config(sae=SaeConfig(arch="softsae", k=8, n_latents=200)).resolve(16)
  assert single.sae.k_top is None and init_params(jax.random.key(0), single.sae).extra.w_k1.shape == (32, 128)
