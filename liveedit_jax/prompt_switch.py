"""A new instruction for a running stream, between two chunks, without recompiling.

    history = empty_history(state, config)
    for chunk in chunks:
      edited, state = stream_step(config, params, state, chunk)
      history = push_history(history, edited, chunk)
      if the user typed a new prompt:
        state = switch_prompt(config, params, state, new_context, history=history if recache else None)

`switch_prompt` replaces the cross-attention K/V of every layer (computed once, as at the stream's start) and
makes the next chunk run in full when the Mask Cache is on: its cached self-attention outputs were computed under
the old prompt (cross-attention feeds every later layer's input), and its mask marks where the old edit acted. The
self-attention K/V of the frames already in the cache are either

- kept (`history=None`): later chunks attend to the past as it was edited under the old prompt, so the old edit
  fades only as those frames leave the cache; free.
- re-cached (LongLive's recache): rebuilt from the cached frames' clean edited latents and source latents
  (`History`, kept beside the state) by one forward each at t = 0 under the new prompt, chunk by chunk in time order,
  each seeing the re-cached chunks before it, at its own RoPE position: what a stream with `refresh="clean"` would
  have cached had those frames been edited under the new prompt. One chunk forward per cached chunk.

Every shape is fixed by the state, so each policy compiles once (a fixed-size history with a count of valid frames:
a switch early in the stream runs the same executable). Sink frames are not supported by the recache (their RoPE
positions are not the history's); `history` is refused then.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import Params, text_kv_per_layer
from liveedit_jax.kv_cache import KVCache
from liveedit_jax.stream_step import StreamState, chunk_forward


@flax.struct.dataclass
class History:
  """The stream's latest frames as the KV cache's clean refresh saw them, in time order, newest last."""

  frames: jax.Array  # [B, cache_frames, H, W, 2·latent_channels] edited ‖ source latents; zeros before they fill
  count: jax.Array  # int32 []: how many of the last frames are valid (≤ cache_frames, a multiple of the chunk)


def empty_history(state: StreamState, config: DiTConfig) -> History:
  """An empty history for `state`'s stream (its cache size, latent size and batch)."""
  b = state.text_k.shape[1]
  shape = (b, state.options.cache_frames, *state.latent_hw, 2 * config.latent_channels)
  return History(jnp.zeros(shape, jnp.float32), jnp.zeros((), jnp.int32))


@jax.jit
def push_history(history: History, edited: jax.Array, source: jax.Array) -> History:
  """Appends a chunk: edited and source latents [B, c, H, W, C] (what `stream_step` returned and was given)."""
  chunk = jnp.concatenate([edited, source], -1).astype(history.frames.dtype)
  c = chunk.shape[1]
  frames = jnp.concatenate([history.frames[:, c:], chunk], axis=1)
  return History(frames, jnp.minimum(history.count + c, history.frames.shape[1]))


def _recache(config: DiTConfig, params: Params, state: StreamState, history: History) -> KVCache:
  """The KV cache rebuilt from `history` under the state's (new) text K/V."""
  c = state.options.chunk_frames
  slots = state.options.cache_frames // c
  b = history.frames.shape[0]
  first_valid = slots - history.count // c  # older slots hold zeros, not frames
  kv = KVCache.empty(config.num_layers, b, state.options.cache_frames, state.kv.frame_tokens, config.num_heads,
                     config.head_dim, config.dtype, state.kv.sink_frames)

  def rebuild(j, kv):
    def write(kv):
      x = jax.lax.dynamic_slice_in_dim(history.frames, j * c, c, axis=1)
      position = state.frame_index - (slots - j) * c
      _, chunk_kv, _ = chunk_forward(config, params, (state.text_k, state.text_v), kv, position, x,
                                     jnp.zeros((b,), jnp.float32))
      return kv.write(*chunk_kv)

    return jax.lax.cond(j >= first_valid, write, lambda kv: kv, kv)

  return jax.lax.fori_loop(0, slots, rebuild, kv)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def switch_step(config: DiTConfig, params: Params, state: StreamState, context: jax.Array,
                history: History | None) -> StreamState:
  """`switch_prompt`'s jitted core, unchecked, for ahead-of-time lowering (the stream CLI compiles it before
  streaming). As `switch_prompt` does, call it on `state.replace(first_chunk=False)` (one executable whatever the
  previous chunk was) and set `first_chunk=state.tokens is not None` on its result."""
  text_k, text_v = text_kv_per_layer(config, params, context)
  state = state.replace(text_k=text_k.astype(state.text_k.dtype), text_v=text_v.astype(state.text_v.dtype))
  if history is not None:
    state = state.replace(kv=_recache(config, params, state, history))
  return state


def switch_prompt(config: DiTConfig, params: Params, state: StreamState, context: jax.Array, *,
                  history: History | None = None) -> StreamState:
  """The stream under a new prompt from its next chunk: context [B, L ≤ text_len, text_dim] text embeddings (zero
  rows past the prompt), as `init_stream` takes. With `history` the KV cache is re-cached under the new prompt,
  else kept (see the module docstring). The state is donated."""
  want = (state.text_k.shape[1], config.text_len, config.text_dim)
  if context.ndim != 3 or context.shape[0] != want[0] or context.shape[1] > want[1] or context.shape[2] != want[2]:
    raise ValueError(f"context must be [B = {want[0]}, L ≤ {want[1]}, {want[2]}], got {list(context.shape)}")
  if history is not None:
    if state.kv.sink_frames:
      raise ValueError(f"a recache needs a stream without sink frames (this one keeps {state.kv.sink_frames})")
    expected = (want[0], state.options.cache_frames, *state.latent_hw, 2 * config.latent_channels)
    if tuple(history.frames.shape) != expected:
      raise ValueError(f"history frames must be {list(expected)} (empty_history of this stream), "
                       f"got {list(history.frames.shape)}")
  # `first_chunk` is static: cleared for the call so that one executable serves a switch right after another.
  switched = switch_step(config, params, state.replace(first_chunk=False), context, history)
  return switched.replace(first_chunk=state.tokens is not None)
