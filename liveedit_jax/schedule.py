"""Flow-matching schedule (Wan2.1's shifted σ and Self-Forcing's warped denoising steps).

σ ∈ [0, 1] is the noise level and t = 1000·σ the timestep the DiT is told.
  shift:       σ' = s·σ / (1 + (s − 1)·σ)
  noising:     x_t = (1 − σ)·x0 + σ·ε,   target v = ε − x0
  prediction:  x0 = x_t − σ·v̂
The distilled generator runs 4 steps at the shift-5 warp of [1000, 750, 500, 250]: t = 1000, 937.5, 833.33…, 625
(as floats; Self-Forcing's `warp_denoising_step`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TRAIN_TIMESTEPS = 1000
GENERATOR_SHIFT = 5.0
DENOISING_STEPS = (1000, 750, 500, 250)


def shift_sigma(sigma, shift: float):
  """σ' = s·σ / (1 + (s − 1)·σ); works on floats, numpy and jax arrays."""
  return shift * sigma / (1 + (shift - 1) * sigma)


def warped_timesteps(steps=DENOISING_STEPS, shift: float = GENERATOR_SHIFT) -> tuple[float, ...]:
  """The t actually run for a configured step list: t = 1000·shift(s/1000) (Self-Forcing's grid lookup)."""
  return tuple(float(TRAIN_TIMESTEPS * shift_sigma(np.float64(s) / TRAIN_TIMESTEPS, shift)) for s in steps)


def add_noise(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
  """x_t = (1 − σ)·x0 + σ·ε; σ broadcasts from the left ([B] or [B, F] against [B, F, H, W, C])."""
  sigma = _expand(sigma, x0.ndim)
  return (1 - sigma) * x0 + sigma * noise


def x0_from_flow(x_t: jax.Array, flow: jax.Array, sigma: jax.Array) -> jax.Array:
  """x0 = x_t − σ·v̂."""
  return x_t - _expand(sigma, x_t.ndim) * flow


def flow_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  """The velocity the DiT is trained to predict: v = ε − x0."""
  return noise - x0


def _expand(sigma, ndim: int) -> jax.Array:
  sigma = jnp.asarray(sigma, jnp.float32)
  return sigma.reshape(sigma.shape + (1,) * (ndim - sigma.ndim))


def sample_timesteps(key: jax.Array, shape: tuple[int, ...], shift: float = GENERATOR_SHIFT,
                     t_min: float = 0.0, t_max: float = 1000.0) -> jax.Array:
  """Training timesteps: σ ~ U[0, 1), shifted, clamped to [t_min, t_max]; returns t = 1000·σ (float32)."""
  sigma = shift_sigma(jax.random.uniform(key, shape), shift)
  return jnp.clip(TRAIN_TIMESTEPS * sigma, t_min, t_max)


def sampling_sigmas(num_steps: int, shift: float = GENERATOR_SHIFT) -> np.ndarray:
  """Wan's sampler grid: σ = shift(linspace(1, 0, n + 1)), n + 1 values ending at 0 (float64)."""
  return shift_sigma(np.linspace(1.0, 0.0, num_steps + 1), shift)
