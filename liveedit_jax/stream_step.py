"""The jitted streaming step: edit one chunk of latent frames against explicit, fixed-shape caches.
(Not the command line: that is `stream.py`, `python -m liveedit_jax.stream`, which runs this step.)

    state = init_stream(config, params, context, latent_height=60, latent_width=104)
    for source_chunk in chunks:                       # [B, 3, 60, 104, 16] source-video latents
      edited, state = stream_step(config, params, state, source_chunk)

One call runs the distilled generator's denoising steps on the chunk (the source latent concatenated on the channel
axis at every forward, fresh noise between steps), then refreshes the KV cache with the chunk's keys and values:
from a forward at t = 0 on the clean output (`refresh="clean"`, Self-Forcing's inference) or from the last
denoising forward (`refresh="none"`, one forward fewer per chunk). The first chunk attends to an empty cache.

With the mask cache on (`StreamConfig.mask_cache`, see `mask_cache.py`) the first chunk runs in full and later
chunks recompute only their most-edited tokens; the first chunk and the rest are two compiles.

Every shape in `StreamState` is fixed by `StreamConfig` and the latent size, so one compile serves a stream of any
length at constant memory: the KV cache is a ring of `cache_frames` past frames (`sink_frames` of them never
evicted) and RoPE positions are re-based before they run past the table (see `kv_cache.py`).
With `cache_frames` ≥ the stream's length nothing is evicted and streaming is exact chunk-causal attention:
`stream_forward` over chunks equals one teacher-forcing `dit_forward` over the whole sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp

from liveedit_jax.attention_probe import ProbeConfig, ProbeStats, cache_key_frames, collect, probed
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import Params, dit_forward, text_kv_per_layer
from liveedit_jax.kv_cache import KVCache
from liveedit_jax.mask_cache import (MaskCacheConfig, MaskStats, TokenCache, chunk_token_indices, mask_iou, routed,
                                     select_active, token_distance)
from liveedit_jax.plans import CachedAttention
from liveedit_jax.schedule import TRAIN_TIMESTEPS, add_noise, warped_timesteps, x0_from_flow

Refresh = Literal["clean", "none"]


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """Static streaming options (they fix the state's shapes and the compiled step)."""

  chunk_frames: int = 3  # latent frames per chunk
  cache_frames: int = 18  # past latent frames kept (18 + a 3-frame chunk = Self-Forcing's 21-frame context)
  sink_frames: int = 0  # of those, the first frames of the stream, never evicted
  timesteps: tuple[float, ...] = warped_timesteps()  # 1000, 937.5, 833.33…, 625
  refresh: Refresh = "clean"
  mask_cache: MaskCacheConfig = MaskCacheConfig()

  @property
  def forwards_per_chunk(self) -> int:
    return len(self.timesteps) + (self.refresh == "clean")

  def __post_init__(self):
    c = self.chunk_frames
    if c <= 0 or self.cache_frames % c or self.sink_frames % c:
      raise ValueError(f"cache_frames ({self.cache_frames}) and sink_frames ({self.sink_frames}) must be multiples "
                       f"of chunk_frames ({c})")
    if self.sink_frames + c > self.cache_frames:
      raise ValueError(f"cache_frames ({self.cache_frames}) must hold the sink frames ({self.sink_frames}) and one "
                       f"chunk ({c})")
    if self.refresh not in ("clean", "none"):
      raise ValueError(f"refresh must be 'clean' or 'none', got {self.refresh!r}")
    if not self.timesteps or any(not 0 < t <= TRAIN_TIMESTEPS for t in self.timesteps):
      raise ValueError(f"timesteps must be in (0, {TRAIN_TIMESTEPS}], got {self.timesteps}")


@flax.struct.dataclass
class StreamState:
  kv: KVCache  # self-attention K/V of past chunks, [L, B, cache_frames·P, N, E]
  text_k: jax.Array  # [L, B, text_len, N, E] cross-attention keys, computed once per prompt
  text_v: jax.Array  # [L, B, text_len, N, E]
  frame_index: jax.Array  # int32 []: RoPE frame position of the next chunk (re-based, < rope_max_positions)
  rng: jax.Array  # PRNG key for the denoising noise
  tokens: TokenCache | None  # the mask cache's token cache and next mask (None when the mask cache is off)
  options: StreamConfig = flax.struct.field(pytree_node=False)
  latent_hw: tuple[int, int] = flax.struct.field(pytree_node=False)
  first_chunk: bool = flax.struct.field(pytree_node=False, default=False)  # runs in full (mask cache only)


_text_kv = jax.jit(text_kv_per_layer, static_argnums=0)  # once per prompt; compiled once per config and shape


def init_stream(config: DiTConfig, params: Params, context: jax.Array, *, latent_height: int, latent_width: int,
                options: StreamConfig = StreamConfig(), rng: jax.Array | None = None) -> StreamState:
  """A fresh stream for a prompt: empty KV cache, text K/V of every layer, position 0.

  context: [B, L ≤ text_len, text_dim] text embeddings (zero rows past the prompt).
  """
  _, ph, pw = config.patch_size
  if latent_height % ph or latent_width % pw:
    raise ValueError(f"latent size {latent_height}×{latent_width} is not divisible by the patch {config.patch_size}")
  if options.cache_frames + 2 * options.chunk_frames > config.rope_max_positions:
    raise ValueError(f"cache_frames + 2·chunk_frames must fit the RoPE table ({config.rope_max_positions})")
  text_k, text_v = _text_kv(config, params, context)
  frame_tokens = (latent_height // ph) * (latent_width // pw)
  batch = context.shape[0]
  kv = KVCache.empty(config.num_layers, batch, options.cache_frames, frame_tokens, config.num_heads,
                     config.head_dim, config.dtype, options.sink_frames)
  mc = options.mask_cache
  tokens = None
  if mc.enabled:
    tokens = TokenCache.empty(mc, config.num_layers, options.forwards_per_chunk, batch, options.chunk_frames,
                              frame_tokens, config.dim, config.num_heads, config.dtype)
  return StreamState(kv, text_k, text_v, jnp.zeros((), jnp.int32), jax.random.key(0) if rng is None else rng,
                     tokens, options, (latent_height, latent_width), first_chunk=mc.enabled)


def chunk_forward(config: DiTConfig, params: Params, text_kv: tuple[jax.Array, jax.Array], kv: KVCache,
                  frame_index: jax.Array, x: jax.Array, t: jax.Array,
                  routing: tuple[jax.Array, Any, MaskCacheConfig] | None = None, probe: ProbeConfig | None = None):
  """`dit_forward` of a chunk under the stream's plan: against a KV cache (which it does not modify), routed by
  the mask cache or probed.

  text_kv: each [L, B, text_len, N, E]; kv: the cache of earlier chunks; frame_index: int32 [], the chunk's first
  RoPE frame position; x: [B, c, H, W, C_in] (noisy ‖ source for editing); t: [B] timesteps.
  routing: for the mask cache, (active token indices [B, c·A], this step's token-cache entries (out, k, v), the
    mask-cache options).
  probe: the attention probe of these layers (not with routing), its key frames [chunk ‖ cache slots] at the
    positions `attention_probe.cache_key_frames` gives for frame_index.
  Returns (flow [B, c, H, W, latent_channels] float32, the chunk's (k, v), each [L, B, c·P, N, E], and with
  routing the updated token-cache entries, else None), and with a probe its ProbeStats fourth.
  """
  if probe is not None:
    if routing is not None:
      raise ValueError("the attention probe runs the full chunk forward: it does not take the mask cache's routing")
    probe.check(config.num_layers, config.name)
  c = x.shape[1]
  _, ph, pw = config.patch_size
  grid = (x.shape[2] // ph, x.shape[3] // pw)
  plan = CachedAttention.of(kv, c * grid[0] * grid[1])
  if probe is not None:
    key_frame = cache_key_frames(kv, c, frame_index)
    visible = jnp.broadcast_to(key_frame >= 0, (c, key_frame.shape[0]))
    plan = probed(plan, probe, config.num_layers, visible, grid)
  if routing is not None:
    active, entries, options = routing
    plan = routed(options, plan, active, entries)
  flow, kept = dit_forward(config, params, x, t, text_kv=text_kv, plan=plan, frame_offset=frame_index)
  if probe is not None:
    chunk_kv, stats = collect(probe, kept, key_frame[:c], key_frame)
    return flow, chunk_kv, None, stats
  return (flow, *kept) if routing is not None else (flow, kept, None)


def stream_forward(config: DiTConfig, params: Params, state: StreamState, x: jax.Array, t: jax.Array,
                   routing: tuple[jax.Array, Any] | None = None):
  """`chunk_forward` for the stream's next chunk: its cache, text K/V, position and mask-cache options.

  routing: (active token indices [B, c·A], this step's token-cache entries) when the mask cache is on.
  """
  if routing is not None:
    routing = (*routing, state.options.mask_cache)
  return chunk_forward(config, params, (state.text_k, state.text_v), state.kv, state.frame_index, x, t, routing)


def stream_probe(config: DiTConfig, params: Params, state: StreamState, x: jax.Array, t: jax.Array,
                 probe: ProbeConfig) -> tuple[jax.Array, ProbeStats]:
  """The attention probe of the stream's next chunk: one `chunk_forward` of x [B, c, H, W, C_in] at t [B] against
  the state's cache (the full forward, which the mask cache approximates), the state unchanged.

  Returns (flow [B, c, H, W, latent_channels], ProbeStats): query frames the chunk's, key frames the chunk's and the
  cache's in time order (absolute frame indices until the first RoPE re-base, see `cache_key_frames`), empty cache
  slots last with key_frame −1 and mass 0.
  """
  flow, _, _, stats = chunk_forward(config, params, (state.text_k, state.text_v), state.kv, state.frame_index, x, t,
                                    probe=probe)
  return flow, stats.in_time_order()


def advance(config: DiTConfig, state: StreamState, chunk_kv: tuple[jax.Array, jax.Array]) -> StreamState:
  """Commits a chunk's K/V to the cache and moves to the next chunk's position, re-basing RoPE if needed."""
  c = state.options.chunk_frames
  kv = state.kv.write(*chunk_kv)
  frame_index = state.frame_index + c
  need = frame_index + c > config.rope_max_positions
  delta = jnp.where(need, frame_index - state.options.cache_frames, 0).astype(jnp.int32)
  kv = jax.lax.cond(need, lambda kv: kv.rebase(delta, config.rope_max_positions, config.rope_theta),
                    lambda kv: kv, kv)
  return state.replace(kv=kv, frame_index=frame_index - delta)


def _check_chunk(config: DiTConfig, state: StreamState, source_chunk: jax.Array) -> None:
  want = (state.text_k.shape[1], state.options.chunk_frames, *state.latent_hw, config.latent_channels)
  if tuple(source_chunk.shape) != want:
    raise ValueError(f"source_chunk must be [B, chunk_frames, H, W, C] = {list(want)}, got {list(source_chunk.shape)}")
  if not config.is_editing:
    raise ValueError(f"stream_step edits video: config {config.name!r} has {config.in_channels} input channels, "
                     f"expected {2 * config.latent_channels} (noisy ‖ source)")


def _stream_step(config: DiTConfig, params: Params, state: StreamState, source_chunk: jax.Array,
                 noise: jax.Array | None = None) -> tuple[jax.Array, StreamState]:
  _check_chunk(config, state, source_chunk)
  opts = state.options
  steps = len(opts.timesteps)
  rng, key = jax.random.split(state.rng)
  if noise is None:
    noise = jax.random.normal(key, (steps, *source_chunk.shape), jnp.float32)
  source = source_chunk.astype(jnp.float32)
  b = source.shape[0]
  tokens = state.tokens
  if tokens is not None:
    frame_tokens = state.kv.frame_tokens
    spatial = (jnp.broadcast_to(jnp.arange(frame_tokens, dtype=jnp.int32), (b, frame_tokens)) if state.first_chunk
               else tokens.active)
    active = chunk_token_indices(spatial, opts.chunk_frames, frame_tokens)

  def forward(i, x, t):
    nonlocal tokens
    routing = None if tokens is None else (active, tokens.step(i))
    flow, chunk_kv, entries = stream_forward(config, params, state, jnp.concatenate([x, source], -1),
                                             jnp.full((b,), t), routing)
    if tokens is not None:
      tokens = tokens.set_step(i, entries)
    return flow, chunk_kv

  x = noise[0]
  for i, t in enumerate(opts.timesteps):
    flow, chunk_kv = forward(i, x, t)
    x0 = x0_from_flow(x, flow, t / TRAIN_TIMESTEPS)
    if i + 1 < steps:
      x = add_noise(x0, noise[i + 1], opts.timesteps[i + 1] / TRAIN_TIMESTEPS)
  if opts.refresh == "clean":
    _, chunk_kv = forward(steps, x0, 0.0)
  state = advance(config, state, chunk_kv).replace(rng=rng)
  if tokens is not None:
    state = state.replace(tokens=_next_mask(config, state, tokens, x0, source), first_chunk=False)
  return x0, state


def _next_mask(config: DiTConfig, state: StreamState, tokens: TokenCache, edited: jax.Array,
               source: jax.Array) -> TokenCache:
  """The next chunk's active tokens: the most-edited positions of this chunk, with their statistics."""
  frame_tokens = state.kv.frame_tokens
  distance = token_distance(edited, source, config.patch_size)
  active, threshold = select_active(distance, tokens.active.shape[1])
  iou = mask_iou(active, tokens.active, frame_tokens) if not state.first_chunk else jnp.zeros(active.shape[:1])
  stats = MaskStats(jnp.asarray(active.shape[1] / frame_tokens, jnp.float32), iou, threshold, distance)
  return tokens.replace(active=active, stats=stats)


stream_step = jax.jit(_stream_step, static_argnums=0, donate_argnums=2)
stream_step.__doc__ = """Edits one chunk: (config, params, state, source_chunk [B, c, H, W, 16], noise=None) →
(edited latents [B, c, H, W, 16] float32, next state). Jitted with the state donated.

noise: optional [steps, B, c, H, W, 16] standard normal draws (step 0's is the initial latent); by default they
come from the state's PRNG key."""
