"""Plans: how a block attends and which of its tokens it computes, handed to the one block and the one forward.

`dit.Block.__call__` is the only block and `dit.dit_forward` the only forward. What differs between the training
forwards, the stream, the DMD rollout and the Mask Cache is a plan, a small pytree passed down to every layer
(penzai's sampling mode swaps layers in the same spirit; here the layers stay and the plan changes):

  MaskedAttention      the whole sequence under a static mask: bidirectional, chunk-causal, teacher forcing.
  CachedAttention      a chunk against a KV cache of earlier chunks; keeps the chunk's K/V for the cache.
  PrefixAttention      (train/rollout.py) every chunk of a clip against its prefix of the DMD rollout's cache.
  RoutedSelfAttention  (mask_cache.py) the Mask Cache: only active tokens run self-attention, the rest take
  RoutedFeedForward      their output from the token cache; the same for the FFN. Each wraps an attention plan.
  ProbedAttention      (attention_probe.py) any attention plan, also returning its attention mass per key frame.
The last three are `WrappedAttention`s: they attend by the attention plan they wrap.

A plan's fields with a leading layer axis [L] are named in `layer_fields`; the forward's layer scan hands each
block its own slice of them (`at_layer`) and every other field is shared by all layers. What a plan returns for a
layer (its "kept": new K/V, token-cache entries, probe sums) is stacked over layers and returned to the caller,
as Flax gemma's block returns `(new_cache, out)`. A new cache policy is one `Plan` subclass and its test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from liveedit_jax.attention import FULL, AttentionMask, attention
from liveedit_jax.kv_cache import KVCache

if TYPE_CHECKING:
  from liveedit_jax.dit import Block


class Plan:
  """The base of every plan: the block calls `self_attention` and `feed_forward`, then `keep`.

  A subclass is a `flax.struct.dataclass` and overrides `attend` (how queries meet keys) or, to change which
  tokens run, `self_attention` / `feed_forward`.
  """

  layer_fields: ClassVar[tuple[str, ...]] = ()  # fields with a leading [L] axis (arrays or nested plans)

  def layer_slices(self) -> dict[str, Any]:
    """What the layer scan slices: the `layer_fields`, nested plans by their own `layer_slices`."""
    return {name: _layer_slices(getattr(self, name)) for name in self.layer_fields}

  def at_layer(self, slices: dict[str, Any]) -> "Plan":
    """This plan for one layer, from that layer's slice of `layer_slices()`."""
    return self.replace(**{name: _at_layer(getattr(self, name), s) for name, s in slices.items()})

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, impl: str) -> tuple[jax.Array, Any]:
    """q [B, T, N, E], this block's own k, v [B, S, N, E] → (o [B, T, N, E], kept)."""
    raise NotImplementedError(f"{type(self).__name__} does not define how queries attend")

  def keys(self, k: jax.Array) -> jax.Array:
    """Every key `attend` attends to, given the block's own k (what the attention probe reads)."""
    return k

  def self_attention(self, block: Block, u: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, Any]:
    """u [B, F, P, D] (the modulated norm) → (the self-attention update [B, F·P, D] before its gate, kept)."""
    q, k, v = block.self_attention_qkv(u, cos, sin)
    o, kept = self.attend(q, k, v, block.config.kernels)
    return block.self_attn.project_out(o), kept

  def feed_forward(self, block: Block, u: jax.Array) -> tuple[jax.Array, Any]:
    """u [B, F, P, D] (the modulated norm) → (the FFN update before its gate, float32, kept)."""
    return block.ffn(u), None

  def keep(self, attention_kept: Any, feed_forward_kept: Any) -> Any:
    """What the block returns of this layer; by default what self-attention kept."""
    del feed_forward_kept  # only the FFN's token cache keeps anything there (mask_cache.RoutedFeedForward)
    return attention_kept


def _layer_slices(value):
  return value.layer_slices() if isinstance(value, Plan) else value


def _at_layer(value, layer_slice):
  return value.at_layer(layer_slice) if isinstance(value, Plan) else layer_slice


@flax.struct.dataclass
class MaskedAttention(Plan):
  """The whole sequence at once: every query against the sequence's keys under a static mask. Keeps nothing."""

  mask: AttentionMask = flax.struct.field(pytree_node=False, default=FULL)

  def attend(self, q, k, v, impl):
    return attention(q, k, v, mask=self.mask, impl=impl), None


@flax.struct.dataclass
class CachedAttention(Plan):
  """A chunk's queries against its own keys and a KV cache of earlier chunks; keeps the chunk's (k, v)."""

  k: jax.Array  # [L, B, S, N, E] cached roped keys (the cache is read, never written here)
  v: jax.Array  # [L, B, S, N, E]
  kv_length: jax.Array  # [B] int32: valid keys of [chunk ‖ cache], the chunk's tokens plus the cache's length
  layer_fields = ("k", "v")

  @classmethod
  def of(cls, kv: KVCache, chunk_tokens: int) -> "CachedAttention":
    """The plan of a chunk of `chunk_tokens` tokens against `kv`."""
    return cls(kv.k, kv.v, jnp.full((kv.k.shape[1],), chunk_tokens, jnp.int32) + kv.length)

  def keys(self, k):
    # The chunk first, then the cache: the valid keys stay a prefix (what cuDNN's padding mask needs).
    return jnp.concatenate([k, self.k], 1)

  def attend(self, q, k, v, impl):
    o = attention(q, self.keys(k), jnp.concatenate([v, self.v], 1), kv_length=self.kv_length, impl=impl)
    return o, (k, v)


@flax.struct.dataclass
class WrappedAttention(Plan):
  """The base of plans over another attention plan, `attention`, by which their queries attend (the Mask Cache's
  routing and the probe wrap the stream's `CachedAttention` or the sequence's `MaskedAttention`)."""

  attention: Plan
  layer_fields = ("attention",)

  def attend(self, q, k, v, impl):
    return self.attention.attend(q, k, v, impl)

  def keys(self, k):
    return self.attention.keys(k)
