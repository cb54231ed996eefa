"""Per-frame Gaussian diffusion: schedules, q_sample, parameterizations, loss, DDIM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff import diffusion


def test_linear_betas_are_the_ldm_schedule():
  betas = diffusion.make_betas("linear", 1000)
  assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(2e-2)
  np.testing.assert_allclose(np.sqrt(betas), np.linspace(0.01, np.sqrt(0.02), 1000), rtol=1e-12)
  sched = diffusion.make_schedule("linear", 1000)
  ref = np.cumprod(1.0 - betas)
  np.testing.assert_allclose(np.asarray(sched.alphas_cumprod), ref, rtol=1e-6)
  assert ref[-1] < 1e-3  # the last step is nearly pure noise


def test_cosine_betas():
  betas = diffusion.make_betas("cosine", 1000)
  assert np.all((betas > 0) & (betas <= 0.999))
  ac = np.cumprod(1 - betas)
  assert np.all(np.diff(ac) < 0) and ac[0] > 0.999
  with pytest.raises(ValueError, match="beta_schedule"):
    diffusion.make_betas("quadratic", 10)


def test_q_sample_moments_per_frame():
  sched = diffusion.make_schedule("linear", 1000)
  b, f, l, c = 2, 3, 256, 64
  t = jnp.array([[0, 500, 999], [10, 10, 900]], jnp.int32)
  x0 = jnp.full((b, f, l, c), 0.7)
  noise = jax.random.normal(jax.random.key(0), (b, f, l, c))
  xt = diffusion.q_sample(sched, x0, t, noise)
  ac = np.asarray(sched.alphas_cumprod)[np.asarray(t)]  # [B, F]
  mean = np.asarray(xt.mean(axis=(2, 3)))
  std = np.asarray(xt.std(axis=(2, 3)))
  np.testing.assert_allclose(mean, 0.7 * np.sqrt(ac), atol=0.01)
  np.testing.assert_allclose(std, np.sqrt(1 - ac), rtol=0.02, atol=1e-3)


@pytest.mark.parametrize("param", diffusion.PARAMETERIZATIONS)
def test_parameterizations_round_trip(param):
  sched = diffusion.make_schedule("cosine", 1000)
  k1, k2 = jax.random.split(jax.random.key(1))
  x0 = jax.random.normal(k1, (2, 4, 8, 3))
  noise = jax.random.normal(k2, x0.shape)
  t = jnp.array([[0, 1, 400, 998], [999, 300, 5, 700]], jnp.int32)
  xt = diffusion.q_sample(sched, x0, t, noise)
  out = diffusion.target(sched, param, x0, noise, t)
  x0_hat, eps_hat = diffusion.to_x0_eps(sched, param, xt, t, out)
  # Recovering the other quantity divides by sqrt(alpha_bar) or sqrt(1 - alpha_bar): tolerance
  # grows where that is small, so compare in the well-conditioned direction as well.
  np.testing.assert_allclose(
      np.asarray(diffusion.q_sample(sched, x0_hat, t, eps_hat)), np.asarray(xt), atol=1e-4
  )
  if param == "x0":
    np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=1e-6)
  if param == "eps":
    np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(noise), atol=1e-6)
  if param == "v":
    np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=1e-4)
    np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(noise), atol=1e-4)


def test_v_target_float64_reference():
  sched = diffusion.make_schedule("linear", 1000)
  ac = np.cumprod(1 - diffusion.make_betas("linear", 1000))
  x0, noise = np.array(0.3), np.array(-1.2)
  t = jnp.array([[123]])
  v = diffusion.target(sched, "v", jnp.full((1, 1, 1, 1), x0), jnp.full((1, 1, 1, 1), noise), t)
  expect = np.sqrt(ac[123]) * noise - np.sqrt(1 - ac[123]) * x0
  assert float(v.squeeze()) == pytest.approx(expect, rel=1e-5)


def test_loss_per_frame_and_weights():
  out = jnp.zeros((2, 3, 4, 5))
  tgt = jnp.broadcast_to(jnp.arange(3.0)[None, :, None, None], out.shape)
  t = jnp.array([[0, 1, 2], [2, 1, 0]])
  loss, by_frame = diffusion.loss_and_metrics(out, tgt, t)
  np.testing.assert_allclose(np.asarray(by_frame), [0.0, 1.0, 4.0])
  assert float(loss) == pytest.approx(5.0 / 3.0)
  weights = jnp.array([1.0, 10.0, 100.0])
  per = diffusion.frame_losses(out, tgt, t, weights)
  np.testing.assert_allclose(np.asarray(per), [[0.0, 10.0, 400.0], [0.0, 10.0, 4.0]])
  # Per-element weights: the second half of each frame's elements counts three times.
  pw = jnp.broadcast_to(jnp.repeat(jnp.array([1.0, 3.0]), 10).reshape(4, 5), out.shape)
  per = diffusion.frame_losses(out, tgt, t, pixel_weights=pw)
  np.testing.assert_allclose(np.asarray(per), [[0.0, 2.0, 8.0]] * 2)


def test_element_losses():
  d = np.linspace(-1.5, 1.5, 31)
  for kind, want in [("mse", d**2), ("l1", np.abs(d)),
                     ("pseudo_huber", np.sqrt(d**2 + 0.1**2) - 0.1)]:
    got = diffusion.element_loss(jnp.asarray(d, jnp.float32), kind, 0.1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  # A pixel that is a stroke (1) in 30 % of the clips and background (-1) in the rest: the
  # squared error is least at the dim mean (-0.4), the absolute one at the background (the
  # median), pseudo-Huber with a small c near it.
  tgt = jnp.asarray([1.0] * 3 + [-1.0] * 7)
  cands = np.linspace(-1, 1, 201)

  def best(kind):
    losses = [float(jnp.mean(diffusion.element_loss(c - tgt, kind, 0.03))) for c in cands]
    return cands[int(np.argmin(losses))]

  assert best("mse") == pytest.approx(-0.4)
  assert best("l1") == pytest.approx(-1.0)
  assert best("pseudo_huber") < -0.95
  per = diffusion.frame_losses(jnp.zeros((1, 2, 3)), jnp.full((1, 2, 3), -2.0), None, kind="l1")
  np.testing.assert_allclose(np.asarray(per), [[2.0, 2.0]])
  with pytest.raises(ValueError, match="diffusion.loss"):
    diffusion.element_loss(jnp.zeros(2), "huber")


def test_min_snr_weights():
  sched = diffusion.make_schedule("linear", 1000)
  snr = np.asarray(sched.alphas_cumprod / (1 - sched.alphas_cumprod))
  w = np.asarray(diffusion.timestep_weights(sched, "min_snr", "eps", 5.0))
  np.testing.assert_allclose(w, np.minimum(snr, 5.0) / snr, rtol=1e-5)
  assert np.all(np.asarray(diffusion.timestep_weights(sched, "none", "x0")) == 1)


def test_logit_normal_weights():
  # Against the logit-normal density written out (scipy.stats: the normal pdf of logit(u) over
  # u (1 - u)), and the x0 weighting carried to each parameterization's target: the eps error
  # is the x0 error times sqrt(snr), the v error times sqrt(snr + 1).
  from scipy import stats  # noqa: PLC0415

  sched = diffusion.make_schedule("linear", 1000)
  u = (np.arange(1000) + 0.5) / 1000
  density = stats.norm(0.4, 0.8).pdf(np.log(u / (1 - u))) / (u * (1 - u))
  w = np.asarray(diffusion.timestep_weights(sched, "logit_normal", "x0", logit_normal=(0.4, 0.8)))
  np.testing.assert_allclose(w, density / density.mean(), rtol=1e-5, atol=1e-12)
  assert np.mean(w) == pytest.approx(1.0, rel=1e-5)
  assert abs(int(np.argmax(w)) - 600) < 100  # near sigmoid(0.4) = 0.6 of the way, skewed
  standard = diffusion.logit_normal_density(1000, 0.0, 1.0)
  assert standard[500] == pytest.approx(1.596, abs=0.01) and standard[950] < 0.12
  snr = np.asarray(sched.alphas_cumprod / (1 - sched.alphas_cumprod))
  for param, factor in (("eps", snr), ("v", snr + 1)):
    got = np.asarray(diffusion.timestep_weights(sched, "logit_normal", param, logit_normal=(0.4, 0.8)))
    np.testing.assert_allclose(got * factor, w, rtol=1e-4)
  with pytest.raises(ValueError, match="logit_normal"):
    diffusion.timestep_weights(sched, "lognormal", "x0")


def test_ddim_timesteps():
  ts = diffusion.ddim_timesteps(1000, 50)
  assert ts[0] == 999 and ts[-1] == -1 and len(ts) == 51
  assert np.all(np.diff(ts) == -20)
  np.testing.assert_array_equal(diffusion.ddim_timesteps(10, 10), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, -1])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_oracle_lands_on_x0(eta):
  """A model that always returns the true x0 drives every frame onto it, whatever its path."""
  sched = diffusion.make_schedule("linear", 1000)
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  x0 = jax.random.uniform(k1, (2, 3, 16, 4), minval=-1, maxval=1)
  grid = jnp.asarray(diffusion.ddim_timesteps(1000, 10))
  # Frames at different points of their schedule in one batch (an AR-style lag of 3 steps).
  lag = jnp.array([[0, 3, 6], [0, 0, 9]])
  k = jnp.zeros((2, 3), jnp.int32)  # steps completed
  x = jax.random.normal(k2, x0.shape)
  for i in range(20):
    target_k = jnp.clip(i + 1 - lag, 0, 10)
    t, t_next = grid[k], grid[target_k]
    x0_hat, eps_hat = diffusion.to_x0_eps(sched, "x0", x, t, x0)
    noise = jax.random.normal(jax.random.fold_in(k3, i), x.shape)
    before = x
    x = diffusion.ddim_step(sched, x, t, t_next, x0_hat, eps_hat, noise, eta)
    # Frames whose timestep does not change come back bit-identical.
    same = np.asarray(t == t_next)
    np.testing.assert_array_equal(np.asarray(x)[same], np.asarray(before)[same])
    k = target_k
  assert np.all(np.asarray(k) == 10)
  np.testing.assert_allclose(np.asarray(x), np.asarray(x0), atol=1e-5)


# 0.5: below the cap at every step; 1.2: above it at 600 -> 400 only; 5: above it everywhere.
@pytest.mark.parametrize("eta", [0.5, 1.2, 5.0])
def test_ddim_step_matches_float64_formula(eta):
  """Song et al.'s step in float64; where eta's noise would exceed t_next's level (eta > 1), the
  step is x0 noised afresh to t_next: never more noise than the level the next call feeds the
  model at."""
  sched = diffusion.make_schedule("linear", 1000)
  ac = np.cumprod(1 - diffusion.make_betas("linear", 1000))
  xt, x0, eps, noise = 0.4, -0.2, 1.1, 0.5
  arr = lambda v: jnp.full((1, 1, 1, 1), v)  # noqa: E731
  for t, t_next in [(600, 400), (80, 40), (999, 959)]:
    a, an = ac[t], ac[t_next]
    sigma = min(eta * np.sqrt((1 - an) / (1 - a) * (1 - a / an)), np.sqrt(1 - an))
    expect = np.sqrt(an) * x0 + np.sqrt(max(1 - an - sigma**2, 0)) * eps + sigma * noise
    got = diffusion.ddim_step(sched, arr(xt), jnp.array([[t]]), jnp.array([[t_next]]), arr(x0),
                              arr(eps), arr(noise), eta)
    assert float(got.squeeze()) == pytest.approx(expect, rel=1e-5)
    if eta == 5.0:  # past the cap: x0 re-noised, eps gone
      assert float(got.squeeze()) == pytest.approx(
          np.sqrt(an) * x0 + np.sqrt(1 - an) * noise, rel=1e-5)
