"""Flow-matching schedule and the many-step CFG sampler."""

import random

import jax
import jax.numpy as jnp
import numpy as np

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import init_dit_params
from liveedit_jax.sampler import sample_edit, sample_euler_cfg
from liveedit_jax.schedule import (add_noise, flow_target, sample_timesteps, sampling_sigmas, shift_sigma,
                                   warped_timesteps, x0_from_flow)
from tests.numerics import FP32_RTOL, rel_err


def test_warped_four_step_list():
  np.testing.assert_allclose(warped_timesteps(), (1000.0, 937.5, 2500 / 3, 625.0), rtol=1e-12)
  assert shift_sigma(0.0, 5.0) == 0.0 and shift_sigma(1.0, 5.0) == 1.0
  # Appendix A: the shift-5 grid's last point (σ_b = 0.001) is t = 4.98.
  np.testing.assert_allclose(1000 * shift_sigma(0.001, 5.0), 4.98, atol=5e-3)


def test_noising_and_prediction_are_inverse():
  key = jax.random.key(random.SystemRandom().randrange(2**31))
  x0, eps = jax.random.normal(key, (2, 2, 3, 4, 4, 16))
  sigma = jnp.array([0.3, 0.9])
  x_t = add_noise(x0, eps, sigma)
  assert rel_err(x0_from_flow(x_t, flow_target(x0, eps), sigma), x0) <= FP32_RTOL


def test_training_timesteps_are_shifted_and_clamped():
  t = sample_timesteps(jax.random.key(0), (100_000,), shift=5.0, t_min=20.0, t_max=980.0)
  assert float(t.min()) == 20.0 and float(t.max()) == 980.0
  # P(t ≥ 980) = P(σ_b ≥ shift⁻¹(0.98)) with shift⁻¹(s) = s / (5 − 4s): about 9.2% (spec §5.3).
  np.testing.assert_allclose(float(jnp.mean(t >= 980.0)), 1 - 0.98 / (5 - 4 * 0.98), atol=0.005)


def test_euler_sampler_reaches_the_data_point_and_applies_guidance():
  """For one data point c, v(x_t) = (x_t − c)/σ is the exact flow; Euler on straight paths is exact."""
  rng = np.random.default_rng(random.SystemRandom().randrange(2**31))
  c_cond, c_uncond = (jnp.asarray(rng.standard_normal((2, 5)), jnp.float32) for _ in range(2))
  noise = jnp.asarray(rng.standard_normal((2, 5)), jnp.float32)

  def flow(x, t, conditional):
    target = c_cond if conditional else c_uncond
    return (x - target) / (t[:, None] / 1000.0)

  assert rel_err(sample_euler_cfg(flow, noise, num_steps=20, guidance=1.0), c_cond) <= FP32_RTOL
  guided = sample_euler_cfg(flow, noise, num_steps=20, guidance=3.0)
  assert rel_err(guided, c_uncond + 3.0 * (c_cond - c_uncond)) <= 1e-4
  np.testing.assert_allclose(sampling_sigmas(4, 1.0), [1.0, 0.75, 0.5, 0.25, 0.0])


def test_sample_edit_runs_both_models():
  cfg = DiTConfig.preset("tiny")
  params = init_dit_params(cfg, jax.random.key(0))
  params["head"]["proj"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), params["head"]["proj"]["kernel"].shape)
  source = jax.random.normal(jax.random.key(2), (1, 6, 4, 4, 16))
  ctx = jax.random.normal(jax.random.key(3), (1, cfg.text_len, cfg.text_dim))
  neg = jnp.zeros_like(ctx)
  outs = [sample_edit(cfg, params, source, ctx, neg, jax.random.key(4), chunk_frames=c, num_steps=3)
          for c in (None, 3)]
  for out in outs:
    assert out.shape == source.shape and bool(jnp.all(jnp.isfinite(out)))
  assert rel_err(outs[0], outs[1]) > 1e-3  # the causal mask changes the result
