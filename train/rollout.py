"""The self-forcing rollout of the chunk-causal generator (Self-Forcing's `inference_with_trajectory`).

Each chunk of `chunk_frames` latent frames starts from noise and runs the generator's denoising steps against the
KV cache of the chunks before it, re-noising with fresh ε between steps. The rollout stops at an exit step k*,
drawn once and shared by every chunk; the chunk's output is that step's x̂0. The cache is then refreshed with the
chunk's K/V from a forward on x̂0 at t = 0, as streaming inference does (`liveedit_jax.stream_step`).

Gradients reach chunk c only through its exit-step forward: the earlier steps and the cached K/V are constants,
while the exit forward's own K/V, its text K/V and its weights are differentiated (spec §8.9: the text K/V must
keep their gradient). The rollout runs in two phases:
  1. `rollout`: every forward without gradient, a `lax.scan` over chunks, each forward against a `KVCache`
     (`stream_step.chunk_forward`, the streaming step's forward). It returns the samples, each chunk's exit-step
     input and the final cache.
  2. `exit_forward`: the exit-step forwards of all chunks at once, with gradient: one `dit_forward` under the
     `PrefixAttention` plan, where chunk c's queries attend to its own keys and to rows [0, c·chunk) of the final
     cache, which hold exactly the K/V that chunk c saw in phase 1.
Phase 2 repeats the exit forwards (one forward over the clip) so that the backward pass keeps one cache alive, not
one per chunk as differentiating through the scan would.

LiveEdit's "pruned noise inputs" (`rollout(..., mask_cache=...)`): phase 1 runs with the Mask Cache active, as
streaming does (`liveedit_jax.mask_cache`): chunk 0 in full, filling the token cache at every step; chunk c > 0
recomputes self-attention only at the most-edited tokens of chunk c − 1 (the L2 distance of its x̂0 to its source),
the rest reusing chunk c − 1's output of the same step. So the exit-step inputs the generator learns to denoise
are the ones it meets when it streams with the cache. Phase 2 (the gradient) runs every token in full: the pruned
forward takes static tokens' outputs from the previous chunk, so its gradient would only reach the active tokens,
and the weights are the same either way.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from liveedit_jax.attention import attention
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import Params, dit_forward
from liveedit_jax.kv_cache import KVCache
from liveedit_jax.mask_cache import MaskCacheConfig, chunk_token_indices, select_active, token_distance
from liveedit_jax.plans import Plan
from liveedit_jax.schedule import TRAIN_TIMESTEPS, add_noise, x0_from_flow
from liveedit_jax.stream_step import chunk_forward


class Rollout(NamedTuple):
  samples: jax.Array  # [B, F, H, W, C] the exit-step x̂0 of every chunk, float32
  exit_inputs: jax.Array  # [B, F, H, W, C] what each chunk's exit step was fed (the noisy half of its input)
  kv: KVCache  # the final cache: chunk c's refreshed K/V in rows [c·chunk, (c+1)·chunk) frames, [L, B, S, N, E]


def _chunks(x: jax.Array, chunk_frames: int, frame_axis: int) -> jax.Array:
  """Splits the frame axis into chunks and moves the chunk index first: [..., F, ...] → [n, ..., c, ...]."""
  shape = x.shape
  n = shape[frame_axis] // chunk_frames
  x = x.reshape(*shape[:frame_axis], n, chunk_frames, *shape[frame_axis + 1:])
  return jnp.moveaxis(x, frame_axis, 0)


def _unchunk(x: jax.Array) -> jax.Array:
  """[n, B, c, ...] → [B, n·c, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])


def rollout(config: DiTConfig, params: Params, text_kv: tuple[jax.Array, jax.Array], source: jax.Array,
            noise: jax.Array, exit_step: jax.Array, timesteps: tuple[float, ...], chunk_frames: int,
            mask_cache: MaskCacheConfig | None = None) -> Rollout:
  """Phase 1: the whole rollout without gradient.

  Args:
    params, text_kv: the generator's weights and its text K/V (each [L, B, text_len, N, E]), treated as constants.
    source: [B, F, H, W, C] source latents, concatenated on the channel axis at every forward.
    noise: [steps, B, F, H, W, C] standard normal: step 0's is the initial latent, step k's re-noises to t_k.
    exit_step: int32 [], k* in [0, steps).
    timesteps: the denoising steps' t (static), e.g. `warped_timesteps()`.
    mask_cache: the pruned-noise rollout's Mask Cache (module docstring); None or disabled: every token runs.
  """
  params, text_kv = jax.lax.stop_gradient((params, text_kv))
  b, f, hh, ww, _ = source.shape
  _, ph, pw = config.patch_size
  frame_tokens = (hh // ph) * (ww // pw)
  kv = KVCache.empty(config.num_layers, b, f, frame_tokens, config.num_heads, config.head_dim, config.dtype)
  pruned = mask_cache is not None and mask_cache.enabled
  if pruned and mask_cache.static_kv != "recompute":
    raise ValueError("the pruned-noise rollout recomputes static tokens' K/V (static_kv='recompute')")
  chunk_step = functools.partial(_rollout_chunk, config, params, text_kv, timesteps, exit_step,
                                 mask_cache if pruned else None)
  n = f // chunk_frames
  chunks = (jnp.arange(n, dtype=jnp.int32), _chunks(source, chunk_frames, 1), _chunks(noise, chunk_frames, 2))
  if not pruned:
    (kv, _, _), (samples, inputs) = jax.lax.scan(chunk_step, (kv, None, None), chunks)
    return Rollout(_unchunk(samples), _unchunk(inputs), kv)
  # Chunk 0 runs every token (its active set has another shape than the later chunks'), filling the token cache.
  tokens = chunk_frames * frame_tokens
  cached = jnp.zeros((config.num_layers, len(timesteps) + 1, b, tokens, config.dim), config.dtype)
  every = jnp.broadcast_to(jnp.arange(tokens, dtype=jnp.int32), (b, tokens))
  carry, first = chunk_step((kv, cached, every), jax.tree.map(lambda a: a[0], chunks))
  (kv, _, _), later = jax.lax.scan(chunk_step, carry, jax.tree.map(lambda a: a[1:], chunks))
  samples, inputs = (jnp.concatenate([a[None], rest]) for a, rest in zip(first, later))
  return Rollout(_unchunk(samples), _unchunk(inputs), kv)


def _rollout_chunk(config: DiTConfig, params: Params, text_kv: tuple[jax.Array, jax.Array],
                   timesteps: tuple[float, ...], exit_step: jax.Array, mask_cache: MaskCacheConfig | None,
                   carry, chunk):
  """One chunk of `rollout`, a `lax.scan` body; mask_cache None: every token runs.

  carry: (kv, token cache [L, steps + 1, B, c·P, D] or None, active flat tokens [B, c·A] or None);
  chunk: (index int32 [], source [B, c, H, W, C], noise [steps, B, c, H, W, C]).
  Returns (carry, (x̂0, the exit step's input), each [B, c, H, W, C]).
  """
  kv, cached, active = carry
  index, src, eps = chunk
  b, chunk_frames = src.shape[:2]
  steps, ts = len(timesteps), jnp.asarray(timesteps, jnp.float32)
  no_kv = jnp.zeros((config.num_layers, b, chunk_frames * kv.frame_tokens, config.num_heads, config.head_dim),
                    config.dtype)

  # Forwards k = 0 … k* denoise at t_k (k* is the exit step); forward k* + 1 refreshes the cache from the
  # clean output at t = 0 (its token-cache slot is the last, as in streaming). One loop body keeps a single
  # forward in the compiled program.
  def forward(k, carry):
    x, x0, x_exit, _, cached = carry
    refresh = k > exit_step
    t = jnp.where(refresh, 0.0, ts[jnp.minimum(k, steps - 1)])
    x_in = jnp.where(refresh, x0, x)
    routing = None
    if mask_cache is not None:
      slot = jnp.where(refresh, steps, k)
      routing = (active, (jax.lax.dynamic_index_in_dim(cached, slot, 1, keepdims=False), None, None), mask_cache)
    flow, chunk_kv, entries = chunk_forward(config, params, text_kv, kv, index * chunk_frames,
                                            jnp.concatenate([x_in, src], -1), jnp.full((b,), t), routing)
    if mask_cache is not None:
      cached = jax.lax.dynamic_update_index_in_dim(cached, entries[0].astype(cached.dtype), slot, 1)
    pred = x0_from_flow(x_in, flow, t / TRAIN_TIMESTEPS)
    nxt = jnp.minimum(k + 1, steps - 1)
    renoised = add_noise(pred, eps[nxt], ts[nxt] / TRAIN_TIMESTEPS)
    return (jnp.where(k < exit_step, renoised, x), jnp.where(refresh, x0, pred),
            jnp.where(k == exit_step, x, x_exit), chunk_kv, cached)

  zeros = jnp.zeros_like(eps[0])
  _, x0, x_exit, chunk_kv, cached = jax.lax.fori_loop(0, exit_step + 2, forward,
                                                      (eps[0], zeros, zeros, (no_kv, no_kv), cached))
  if mask_cache is not None:  # the next chunk's active tokens: where this chunk's edit is largest
    spatial, _ = select_active(token_distance(x0, src, config.patch_size),
                               mask_cache.active_tokens(kv.frame_tokens))
    active = chunk_token_indices(spatial, chunk_frames, kv.frame_tokens)
  return (kv.write(*chunk_kv), cached, active), (x0, x_exit)


@flax.struct.dataclass
class PrefixAttention(Plan):
  """Every chunk of a clip at once: chunk c's queries against its own keys, then rows [0, c·chunk) of a cache
  (the stream's order, `plans.CachedAttention`). Keeps nothing."""

  k: jax.Array  # [L, B, S, N, E] the rollout's final cache, a constant
  v: jax.Array  # [L, B, S, N, E]
  chunk_tokens: int = flax.struct.field(pytree_node=False)
  layer_fields = ("k", "v")

  def attend(self, q, k, v, impl):
    step = self.chunk_tokens
    outs = [attention(q[:, s:s + step], jnp.concatenate([k[:, s:s + step], self.k[:, :s]], 1),
                      jnp.concatenate([v[:, s:s + step], self.v[:, :s]], 1), impl=impl)
            for s in range(0, q.shape[1], step)]
    return jnp.concatenate(outs, 1), None


def exit_forward(config: DiTConfig, params: Params, text_kv: tuple[jax.Array, jax.Array], kv: KVCache,
                 exit_inputs: jax.Array, source: jax.Array, t: jax.Array, chunk_frames: int) -> jax.Array:
  """Phase 2: every chunk's exit-step x̂0 [B, F, H, W, C] float32, differentiable in params and text_kv.

  kv: phase 1's final cache (a constant); exit_inputs: [B, F, H, W, C]; t: [B] the exit step's timestep.
  """
  _, ph, pw = config.patch_size
  chunk_tokens = chunk_frames * (exit_inputs.shape[2] // ph) * (exit_inputs.shape[3] // pw)
  plan = PrefixAttention(*jax.lax.stop_gradient((kv.k, kv.v)), chunk_tokens)
  flow, _ = dit_forward(config, params, jnp.concatenate([exit_inputs, source], -1), t, text_kv=text_kv, plan=plan)
  return x0_from_flow(exit_inputs, flow, t / TRAIN_TIMESTEPS)
