"""LiveEdit's AR-oriented Mask Cache (paper §3.3, §4.1, Table 3): recompute only where the edit happens.

After chunk k−1 is edited, the L2 distance between its edited and source latents, per spatial token (over
channels, the 1×2×2 patch and the chunk's frames), ranks the tokens of chunk k. The `1 − prune_ratio` most-edited
spatial positions are *active* in every frame of chunk k; the rest are *static*. The threshold τ is thus chosen
per chunk, and the active set has a fixed size (top-k), so every shape stays static.

Placement (`cache_on`):
  "self_attn"  active tokens run self-attention; static tokens take their self-attention output (after the output
               projection, before the gate) from the token cache. Cross-attention and FFN run for all tokens.
  "ffn"        the same for the FFN output (the paper's failing ablation); self-attention runs for all tokens.
  "none"       no mask cache.
Each placement is a plan (`plans.py`) over the stream's `CachedAttention`: `RoutedSelfAttention`, `RoutedFeedForward`
(`routed` picks it); the one block runs them.
The token cache is kept per layer and per denoising step (the cache-refresh forward counts as one more step), as
[L, steps, B, c·P, D] in the compute dtype: 30 × 5 × 4,680 × 1,536 × 2 bytes = 2.16 GB per stream at the real
config (480×832, 3-frame chunks, bf16).

Static tokens' keys and values for the current chunk (`static_kv`), needed as attention keys by the active
queries and by the KV cache:
  "recompute"  project K/V for every token from the current hidden state (costs the K/V projections of static
               tokens; keys are exact for the current chunk).
  "reuse"      take the previous chunk's un-roped K/V for static tokens from the token cache and rope them at
               the current frame positions (saves those projections; costs 2 × 4.3 GB more cache at the real
               config). docs/benchmarks.md records both and the default follows the measurement.
The first chunk of a stream always runs in full (every token active), which also fills the token cache.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from liveedit_jax.plans import Plan, WrappedAttention
from liveedit_jax.rope import apply_rope

CacheOn = Literal["self_attn", "ffn", "none"]
StaticKV = Literal["recompute", "reuse"]


@dataclasses.dataclass(frozen=True)
class MaskCacheConfig:
  prune_ratio: float = 0.7  # fraction of spatial tokens that are static
  cache_on: CacheOn = "self_attn"
  static_kv: StaticKV = "recompute"

  def __post_init__(self):
    if not 0.0 <= self.prune_ratio < 1.0:
      raise ValueError(f"prune_ratio must be in [0, 1), got {self.prune_ratio}")
    if self.cache_on not in ("self_attn", "ffn", "none"):
      raise ValueError(f"cache_on must be 'self_attn', 'ffn' or 'none', got {self.cache_on!r}")
    if self.static_kv not in ("recompute", "reuse"):
      raise ValueError(f"static_kv must be 'recompute' or 'reuse', got {self.static_kv!r}")

  @property
  def enabled(self) -> bool:
    return self.cache_on != "none"

  def active_tokens(self, frame_tokens: int) -> int:
    """How many spatial tokens are active per frame: P − round(prune_ratio · P), at least 1."""
    return max(1, frame_tokens - round(self.prune_ratio * frame_tokens))


@flax.struct.dataclass
class MaskStats:
  """Per-chunk statistics of the mask that chunk k+1 will use (for notebooks)."""

  active_fraction: jax.Array  # [] fraction of spatial tokens active
  iou_previous: jax.Array  # [B] IoU of this mask with the previous chunk's
  threshold: jax.Array  # [B] τ: the smallest distance among active tokens
  distance: jax.Array  # [B, P] per-token L2 distance edited vs source


@flax.struct.dataclass
class TokenCache:
  out: jax.Array  # [L, S, B, c·P, D] cached sublayer outputs (S = denoising steps + refresh)
  k: jax.Array | None  # [L, S, B, c·P, N, E] un-roped keys ("reuse" only)
  v: jax.Array | None  # [L, S, B, c·P, N, E] values ("reuse" only)
  active: jax.Array  # [B, A] int32 active spatial tokens for the next chunk
  stats: MaskStats

  @classmethod
  def empty(cls, options: MaskCacheConfig, layers: int, steps: int, batch: int, chunk_frames: int,
            frame_tokens: int, dim: int, heads: int, dtype) -> "TokenCache":
    tokens = chunk_frames * frame_tokens
    out = jnp.zeros((layers, steps, batch, tokens, dim), dtype)
    kv_shape = (layers, steps, batch, tokens, heads, dim // heads)
    reuse = options.static_kv == "reuse" and options.cache_on == "self_attn"
    k, v = (jnp.zeros(kv_shape, dtype), jnp.zeros(kv_shape, dtype)) if reuse else (None, None)
    a = options.active_tokens(frame_tokens)
    active = jnp.broadcast_to(jnp.arange(a, dtype=jnp.int32), (batch, a))
    stats = MaskStats(jnp.ones(()), jnp.zeros((batch,)), jnp.zeros((batch,)), jnp.zeros((batch, frame_tokens)))
    return cls(out, k, v, active, stats)

  def step(self, i: int) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Step i's entries, each with the layer axis first: out [L, B, c·P, D] (+ k, v)."""
    return tuple(None if a is None else a[:, i] for a in (self.out, self.k, self.v))

  def set_step(self, i: int, entries) -> "TokenCache":
    out, k, v = entries
    return self.replace(out=self.out.at[:, i].set(out),
                        k=None if k is None else self.k.at[:, i].set(k),
                        v=None if v is None else self.v.at[:, i].set(v))


def token_distance(edited: jax.Array, source: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
  """Per spatial token L2 distance: edited, source [B, c, H, W, C] → [B, P] (P = (H/ph)·(W/pw), row-major)."""
  _, ph, pw = patch_size
  b, c, h, w, ch = edited.shape
  d = jnp.square(edited.astype(jnp.float32) - source.astype(jnp.float32))
  d = d.reshape(b, c, h // ph, ph, w // pw, pw, ch).sum(axis=(1, 3, 5, 6))
  return jnp.sqrt(d).reshape(b, -1)


def select_active(distance: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """The `count` most-edited tokens: (indices [B, count] int32 in ascending order, τ [B])."""
  values, idx = jax.lax.top_k(distance, count)
  return jnp.sort(idx, axis=-1).astype(jnp.int32), values[:, -1]


def mask_iou(a: jax.Array, b: jax.Array, frame_tokens: int) -> jax.Array:
  """IoU of two index sets [B, A] over P tokens → [B]."""
  ma = jnp.zeros((a.shape[0], frame_tokens), bool).at[jnp.arange(a.shape[0])[:, None], a].set(True)
  mb = jnp.zeros((b.shape[0], frame_tokens), bool).at[jnp.arange(b.shape[0])[:, None], b].set(True)
  return (ma & mb).sum(-1) / jnp.maximum((ma | mb).sum(-1), 1)


def chunk_token_indices(active: jax.Array, chunk_frames: int, frame_tokens: int) -> jax.Array:
  """Spatial indices [B, A] → flat token indices [B, c·A] of the same positions in every frame of the chunk."""
  offsets = jnp.arange(chunk_frames, dtype=jnp.int32)[:, None] * frame_tokens
  return (active[:, None, :] + offsets[None]).reshape(active.shape[0], -1)


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [B, T, ...], idx [B, A] → [B, A, ...]."""
  return jnp.take_along_axis(x, idx.reshape(*idx.shape, *(1,) * (x.ndim - 2)), axis=1)


def _put(x: jax.Array, idx: jax.Array, values: jax.Array) -> jax.Array:
  """x with rows idx [B, A] replaced by values [B, A, ...]."""
  return x.at[jnp.arange(x.shape[0])[:, None], idx].set(values.astype(x.dtype))


@flax.struct.dataclass
class RoutedSelfAttention(WrappedAttention):
  """cache_on="self_attn": the active tokens' queries attend (by `attention`, the stream's `CachedAttention`, to
  every token's keys); the static tokens take this step's cached self-attention output. Keeps (attention's kept,
  the updated (out, k, v) entries)."""

  tokens: jax.Array  # [B, c·A] int32 flat indices of the active tokens, the same in every layer
  out: jax.Array  # [L, B, c·P, D] this step's cached outputs (after the output projection, before the gate)
  k: jax.Array | None  # [L, B, c·P, N, E] this step's un-roped keys ("reuse" only)
  v: jax.Array | None  # [L, B, c·P, N, E] ("reuse" only)
  static_kv: StaticKV = flax.struct.field(pytree_node=False)
  layer_fields = ("attention", "out", "k", "v")

  def self_attention(self, block, u, cos, sin):
    b, f, p, d = u.shape
    u = u.reshape(b, f * p, d)
    u_active = _take(u, self.tokens)
    attn = block.self_attn
    q = attn.project_q_roped(u_active, cos[self.tokens], sin[self.tokens])
    if self.static_kv == "recompute":
      k_raw, v = attn.project_kv(u)
    else:
      k_active, v_active = attn.project_kv(u_active)
      k_raw, v = _put(self.k, self.tokens, k_active), _put(self.v, self.tokens, v_active)
    dt = block.config.dtype
    o, kept = self.attend(q, apply_rope(k_raw, cos, sin).astype(dt), v.astype(dt), block.config.kernels)
    y = _put(self.out, self.tokens, attn.project_out(o))
    if self.static_kv == "recompute":
      return y, (kept, (y, self.k, self.v))
    return y, (kept, (y, k_raw.astype(self.k.dtype), v.astype(self.v.dtype)))


@flax.struct.dataclass
class RoutedFeedForward(WrappedAttention):
  """cache_on="ffn": every token runs self-attention (by `attention`, the stream's `CachedAttention`); only the
  active tokens run the FFN, the static ones take this step's cached FFN output. Keeps (attention's kept, the
  updated (out, None, None) entries)."""

  tokens: jax.Array  # [B, c·A] int32 flat indices of the active tokens, the same in every layer
  out: jax.Array  # [L, B, c·P, D] this step's cached FFN outputs (before the gate)
  layer_fields = ("attention", "out")

  def feed_forward(self, block, u):
    b, f, p, d = u.shape
    out = _put(self.out, self.tokens, block.ffn(_take(u.reshape(b, f * p, d), self.tokens)))
    return out, (out, None, None)

  def keep(self, attention_kept, feed_forward_kept):
    return attention_kept, feed_forward_kept


def routed(options: MaskCacheConfig, attention: Plan, tokens: jax.Array, entries) -> Plan:
  """The Mask Cache's plan for its placement: `attention` for the active tokens [B, c·A], entries (out, k, v)
  of this step (`TokenCache.step`). The forward keeps (attention's kept, the updated entries)."""
  out, k, v = entries
  if options.cache_on == "self_attn":
    return RoutedSelfAttention(attention, tokens, out, k, v, options.static_kv)
  if options.cache_on == "ffn":
    return RoutedFeedForward(attention, tokens, out)
  raise ValueError(f"the mask cache is off (cache_on={options.cache_on!r}): no routed plan")
