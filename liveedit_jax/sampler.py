"""Many-step flow-matching sampling with classifier-free guidance, for evaluating Stage 1 and 2 models.

The distilled 4-step generator streams with `stream_step.stream_step`; the bidirectional (Stage 1) and chunk-causal
teacher-forcing (Stage 2) models are evaluated here with Wan's sampler grid and guidance: 50 steps × 2 forwards =
100 NFE. The chunk-causal model denoises all chunks together under its chunk-causal mask (every chunk at the same
t), which its training admits since each chunk sees only itself and earlier chunks.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import Params, dit_forward
from liveedit_jax.schedule import GENERATOR_SHIFT, TRAIN_TIMESTEPS, sampling_sigmas

# flow_fn(x_t [B, ...], t [B], conditional) → v̂ for the prompt (True) or the negative / empty prompt (False).
FlowFn = Callable[[jax.Array, jax.Array, bool], jax.Array]


def sample_euler_cfg(flow_fn: FlowFn, noise: jax.Array, num_steps: int = 50, guidance: float = 5.0,
                     shift: float = GENERATOR_SHIFT) -> jax.Array:
  """Euler steps on Wan's shifted σ grid from pure noise to σ = 0, with guidance v = v_u + g·(v_c − v_u).

  Returns x0 [B, ...]. guidance 1 skips the unconditional forward (1 NFE per step).
  """
  sigmas = jnp.asarray(sampling_sigmas(num_steps, shift), jnp.float32)
  batch = noise.shape[0]

  def step(x, i):
    t = jnp.full((batch,), TRAIN_TIMESTEPS * sigmas[i])
    v = flow_fn(x, t, True)
    if guidance != 1.0:
      v_u = flow_fn(x, t, False)
      v = v_u + guidance * (v - v_u)
    return x + (sigmas[i + 1] - sigmas[i]) * v, None

  x, _ = jax.lax.scan(step, noise, jnp.arange(num_steps))
  return x


@functools.partial(jax.jit, static_argnums=0, static_argnames=("chunk_frames", "num_steps", "guidance", "shift"))
def sample_edit(config: DiTConfig, params: Params, source: jax.Array, context: jax.Array,
                negative_context: jax.Array, key: jax.Array, *, chunk_frames: int | None = None,
                num_steps: int = 50, guidance: float = 5.0, shift: float = GENERATOR_SHIFT) -> jax.Array:
  """Edits a whole clip: source latents [B, F, H, W, 16] → edited latents [B, F, H, W, 16].

  context / negative_context: [B, L, text_dim] prompt and negative-prompt embeddings.
  chunk_frames: None for the bidirectional model; 3 for the chunk-causal one.
  """
  noise = jax.random.normal(key, source.shape, jnp.float32)

  def flow(x, t, conditional):
    ctx = context if conditional else negative_context
    return dit_forward(config, params, jnp.concatenate([x, source], -1), t, ctx, chunk_frames=chunk_frames)

  return sample_euler_cfg(flow, noise, num_steps, guidance, shift)
