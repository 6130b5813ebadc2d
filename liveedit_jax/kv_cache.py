"""Fixed-size self-attention KV cache for streaming: sink frames plus a ring of recent frames, RoPE re-basing.

Layout: k, v are [L, B, S, N, E] with S = cache_frames · P tokens (P tokens per latent frame). Frames are written
a chunk at a time. Before the buffer fills, chunks go to consecutive slots, so the valid rows are the prefix
[0, length); once it is full every row is valid and new chunks overwrite the oldest non-sink chunk (a ring over
frame slots [sink_frames, cache_frames)). Attention order does not matter, so the ring needs no reordering.

Keys are stored after RoPE at their absolute frame position. RoPE tables cover positions [0, max_positions), so an
unbounded stream re-bases: when the next chunk would run past the table, every cached key is rotated back by Δ
frames on the frame-axis pairs and positions restart Δ lower. RoPE logits depend only on position differences, so
re-basing leaves every attention logit unchanged (up to float rounding), sink frames included (they keep their
true distance; after re-basing their positions are negative, which a rotation handles).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from liveedit_jax.rope import apply_rope, rope_pair_split, rope_tables


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # [L, B, S, N, E] roped keys, compute dtype
  v: jax.Array  # [L, B, S, N, E]
  length: jax.Array  # int32 []: valid rows form the prefix [0, length); S once full
  write_frame: jax.Array  # int32 []: frame slot the next chunk is written to
  frame_tokens: int = flax.struct.field(pytree_node=False)  # P
  sink_frames: int = flax.struct.field(pytree_node=False)

  @classmethod
  def empty(cls, layers: int, batch: int, cache_frames: int, frame_tokens: int, heads: int, head_dim: int,
            dtype, sink_frames: int = 0) -> "KVCache":
    shape = (layers, batch, cache_frames * frame_tokens, heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32),
               jnp.zeros((), jnp.int32), frame_tokens, sink_frames)

  @property
  def cache_frames(self) -> int:
    return self.k.shape[2] // self.frame_tokens

  def write(self, k: jax.Array, v: jax.Array) -> "KVCache":
    """Stores one chunk's keys and values, k and v [L, B, c·P, N, E], evicting the oldest non-sink chunk if full."""
    chunk_frames = k.shape[2] // self.frame_tokens
    start = self.write_frame * self.frame_tokens
    new_k = jax.lax.dynamic_update_slice_in_dim(self.k, k.astype(self.k.dtype), start, axis=2)
    new_v = jax.lax.dynamic_update_slice_in_dim(self.v, v.astype(self.v.dtype), start, axis=2)
    nxt = self.write_frame + chunk_frames
    nxt = jnp.where(nxt + chunk_frames > self.cache_frames, self.sink_frames, nxt)
    length = jnp.minimum(self.length + k.shape[2], self.k.shape[2])
    return self.replace(k=new_k, v=new_v, length=length, write_frame=nxt.astype(jnp.int32))

  def rebase(self, delta: jax.Array, max_positions: int, theta: float) -> "KVCache":
    """Rotates every cached key back by `delta` frames (int32 [], 0 ≤ delta < max_positions)."""
    head_dim = self.k.shape[-1]
    (cos_f, sin_f), _, _ = rope_tables(head_dim, max_positions, theta)
    p_f = rope_pair_split(head_dim)[0]
    rest = head_dim // 2 - p_f
    cos = jnp.concatenate([jnp.asarray(cos_f)[delta], jnp.ones((rest,), jnp.float32)])[None]
    sin = jnp.concatenate([-jnp.asarray(sin_f)[delta], jnp.zeros((rest,), jnp.float32)])[None]
    k = self.k.reshape(-1, *self.k.shape[2:])
    return self.replace(k=apply_rope(k, cos, sin).reshape(self.k.shape))
