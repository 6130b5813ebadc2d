"""Plans: one forward under every plan, each layer handed its own slice, a new plan in one class."""

import random

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.attention import AttentionMask
from liveedit_jax.attention_probe import ProbeConfig, probed
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import dit_forward, text_kv_per_layer
from liveedit_jax.kv_cache import KVCache
from liveedit_jax.mask_cache import MaskCacheConfig, RoutedFeedForward, RoutedSelfAttention, routed
from liveedit_jax.plans import CachedAttention, MaskedAttention
from tests.numerics import FP32_RTOL, rel_err
from tests.random_params import random_dit_params

CFG = DiTConfig.preset("tiny")
H, W, CHUNK = 4, 6, 3
P = 6  # 2×3 patches a frame
forward = jax.jit(dit_forward, static_argnums=0, static_argnames=("chunk_frames",))


@pytest.fixture(scope="module")
def inputs():
  seed = random.SystemRandom().randrange(2**31)
  rng = np.random.default_rng(seed)
  params = random_dit_params(CFG, seed)
  ctx = np.zeros((1, CFG.text_len, CFG.text_dim), np.float32)
  ctx[:, :5] = rng.standard_normal((1, 5, CFG.text_dim))
  x = jnp.asarray(rng.standard_normal((1, 2 * CHUNK, H, W, 32)), jnp.float32)
  t = jnp.asarray(rng.uniform(0, 1000, (1, 2 * CHUNK)), jnp.float32)
  return params, jnp.asarray(ctx), x, t


def test_a_plan_given_is_the_same_forward(inputs):
  """The chunk-causal forward asked for by chunk_frames = the same mask passed as a plan, bit for bit."""
  params, ctx, x, t = inputs
  text_kv = text_kv_per_layer(CFG, params, ctx)
  plan = MaskedAttention(AttentionMask("chunk_causal", CHUNK * P))
  out, kept = forward(CFG, params, x, t, text_kv=text_kv, plan=plan)
  assert kept is None
  np.testing.assert_array_equal(out, forward(CFG, params, x, t, ctx, chunk_frames=CHUNK))


def test_a_chunk_against_an_empty_cache_is_the_bidirectional_forward(inputs):
  params, ctx, x, t = inputs
  x, t = x[:, :CHUNK], t[:, :CHUNK]
  empty = KVCache.empty(CFG.num_layers, 1, 2 * CHUNK, P, CFG.num_heads, CFG.head_dim, CFG.dtype)
  out, (k, v) = forward(CFG, params, x, t, text_kv=text_kv_per_layer(CFG, params, ctx),
                        plan=CachedAttention.of(empty, CHUNK * P))
  assert k.shape == v.shape == (CFG.num_layers, 1, CHUNK * P, CFG.num_heads, CFG.head_dim)
  assert rel_err(out, forward(CFG, params, x, t, ctx)) <= FP32_RTOL


@flax.struct.dataclass
class KeepQueries(MaskedAttention):
  """A new plan in one class: full attention that also keeps every layer's queries."""

  def attend(self, q, k, v, impl):
    return super().attend(q, k, v, impl)[0], q


def test_a_new_plan_is_one_class_and_its_kept_is_stacked_over_layers(inputs):
  params, ctx, x, t = inputs
  out, queries = forward(CFG, params, x, t, text_kv=text_kv_per_layer(CFG, params, ctx), plan=KeepQueries())
  np.testing.assert_array_equal(out, forward(CFG, params, x, t, ctx))
  assert queries.shape == (CFG.num_layers, 1, 2 * CHUNK * P, CFG.num_heads, CFG.head_dim)
  assert rel_err(queries[0], queries[1]) > 1e-3  # each layer its own


@pytest.mark.parametrize("cache_on", ["self_attn", "ffn"])
def test_each_layer_gets_its_own_slice_of_nested_plans(cache_on):
  """A routed (and a probed) plan over a cache: layer i sees row i of every [L] field, the rest shared."""
  layers, b, tokens = 3, 2, CHUNK * P
  kv = KVCache.empty(layers, b, 2 * CHUNK, P, 2, 4, jnp.float32)
  kv = kv.replace(k=jnp.arange(kv.k.size, dtype=jnp.float32).reshape(kv.k.shape), length=jnp.int32(P))
  out = jnp.arange(layers * b * tokens * 8, dtype=jnp.float32).reshape(layers, b, tokens, 8)
  active = jnp.zeros((b, CHUNK), jnp.int32)
  plan = routed(MaskCacheConfig(cache_on=cache_on), CachedAttention.of(kv, tokens), active, (out, None, None))
  assert isinstance(plan, RoutedSelfAttention if cache_on == "self_attn" else RoutedFeedForward)
  plan = probed(plan, ProbeConfig(layers=(1,)), layers, np.ones((CHUNK, 3 * CHUNK), bool), (2, 3))
  slices = plan.layer_slices()
  for i in range(layers):
    layer = plan.at_layer(jax.tree.map(lambda a: a[i], slices))
    assert int(layer.layer) == i
    np.testing.assert_array_equal(layer.attention.out, out[i])
    np.testing.assert_array_equal(layer.attention.attention.k, kv.k[i])
    np.testing.assert_array_equal(layer.attention.attention.kv_length, [tokens + P] * b)
    assert layer.attention.tokens is active


def test_a_plan_excludes_the_mask_arguments(inputs):
  params, ctx, x, t = inputs
  with pytest.raises(ValueError, match="a plan decides how the forward attends"):
    dit_forward(CFG, params, x, t, ctx, chunk_frames=CHUNK, plan=MaskedAttention())
  with pytest.raises(ValueError, match="either context .* or text_kv"):
    dit_forward(CFG, params, x, t, plan=MaskedAttention())
