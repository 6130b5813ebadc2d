"""AR-oriented Mask Cache: exactness at prune ratio 0, reuse of cached outputs, mask placement, cost."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.config import DiTConfig
from liveedit_jax.mask_cache import MaskCacheConfig, chunk_token_indices, mask_iou, select_active, token_distance
from liveedit_jax.stream_step import StreamConfig, _stream_step, init_stream, stream_step
from tests.random_params import random_dit_params

CFG = DiTConfig.preset("tiny")
H, W = 6, 8  # 3×4 = 12 spatial tokens per frame
P = 12
CHUNK = 3
# Two denoising steps + the refresh: the mask-cache mechanics at a third fewer forwards to compile than the default.
STEPS = (1000.0, 625.0)


@pytest.fixture(scope="module")
def params():
  return random_dit_params(CFG, random.SystemRandom().randrange(2**31))


def _stream(params, mask_cache, n_chunks, seed):
  """Runs a stream; returns outputs [1, n·c, H, W, 16] and the token cache after every chunk.

  Also checks that a mask-cache stream compiles exactly twice (the first chunk in full, then every later chunk).
  """
  compiled_before = stream_step._cache_size()
  rng = np.random.default_rng(seed)
  ctx = np.zeros((1, CFG.text_len, CFG.text_dim), np.float32)
  ctx[:, :4] = rng.standard_normal((1, 4, CFG.text_dim))
  state = init_stream(CFG, params, jnp.asarray(ctx), latent_height=H, latent_width=W,
                      options=StreamConfig(cache_frames=4 * CHUNK, timesteps=STEPS, mask_cache=mask_cache),
                      rng=jax.random.key(seed))
  outs, caches = [], []
  for _ in range(n_chunks):
    out, state = stream_step(CFG, params, state, jnp.asarray(rng.standard_normal((1, CHUNK, H, W, 16)), jnp.float32))
    outs.append(np.asarray(out))
    caches.append(None if state.tokens is None else jax.tree.map(np.asarray, state.tokens))
  assert stream_step._cache_size() - compiled_before <= (2 if mask_cache.enabled else 1)
  return np.concatenate(outs, 1), caches


@pytest.mark.parametrize("cache_on, static_kv", [("self_attn", "recompute"), ("self_attn", "reuse"),
                                                 ("ffn", "recompute")])
def test_prune_ratio_zero_equals_cache_free_step(params, cache_on, static_kv):
  seed = random.SystemRandom().randrange(2**31)
  reference, _ = _stream(params, MaskCacheConfig(cache_on="none"), 3, seed)
  routed, _ = _stream(params, MaskCacheConfig(prune_ratio=0.0, cache_on=cache_on, static_kv=static_kv), 3, seed)
  np.testing.assert_array_equal(routed, reference)


@pytest.mark.parametrize("cache_on, static_kv", [("self_attn", "recompute"), ("self_attn", "reuse"),
                                                 ("ffn", "recompute")])
def test_static_tokens_reuse_cached_outputs_bit_for_bit(params, cache_on, static_kv):
  seed = random.SystemRandom().randrange(2**31)
  mc = MaskCacheConfig(prune_ratio=0.75, cache_on=cache_on, static_kv=static_kv)
  reference, _ = _stream(params, MaskCacheConfig(cache_on="none"), 3, seed)
  outputs, caches = _stream(params, mc, 3, seed)
  np.testing.assert_array_equal(outputs[:, :CHUNK], reference[:, :CHUNK])  # the first chunk runs in full
  for prev, cur in zip(caches, caches[1:]):
    mask = np.zeros((1, P), bool)
    mask[0, prev.active[0]] = True  # the mask the chunk ran with
    active = np.tile(mask, (1, CHUNK))  # [1, c·P]
    for name in ("out", "k", "v"):
      a, b = getattr(prev, name), getattr(cur, name)
      if a is None:
        continue
      np.testing.assert_array_equal(b[:, :, :, ~active[0]], a[:, :, :, ~active[0]])  # static: the cached values
      assert not np.allclose(b[:, :, :, active[0]], a[:, :, :, active[0]])  # active: recomputed
    stats = cur.stats
    assert float(stats.active_fraction) == 3 / P
    assert 0.0 <= float(stats.iou_previous[0]) <= 1.0
    assert float(stats.threshold[0]) == np.sort(stats.distance[0])[-3]
  assert 0 < np.abs(outputs[:, CHUNK:] - reference[:, CHUNK:]).max()  # later chunks are approximate


def test_active_tokens_cover_the_edited_region():
  rng = np.random.default_rng(random.SystemRandom().randrange(2**31))
  source = rng.standard_normal((2, CHUNK, 16, 20, 16)).astype(np.float32)  # 8×10 = 80 tokens
  edited = source + 0.01 * rng.standard_normal(source.shape).astype(np.float32)
  region = np.zeros((2, 8, 10), bool)
  region[0, 2:5, 3:7] = True  # 12 tokens: rows 2–4, columns 3–6 of the patch grid
  region[1, 5:8, 0:4] = True
  pixel_region = np.repeat(np.repeat(region, 2, 1), 2, 2)[:, None, :, :, None]
  edited = np.where(pixel_region, edited + 3.0, edited)
  dist = token_distance(jnp.asarray(edited), jnp.asarray(source), (1, 2, 2))
  idx, tau = select_active(dist, 12)
  for b in range(2):
    np.testing.assert_array_equal(np.asarray(idx[b]), np.flatnonzero(region[b].reshape(-1)))
  assert np.all(np.asarray(tau) > np.asarray(jnp.where(region.reshape(2, -1), 0, dist)).max(-1))
  np.testing.assert_allclose(np.asarray(mask_iou(idx, idx, 80)), 1.0)
  np.testing.assert_array_equal(np.asarray(chunk_token_indices(idx[:1, :2], 2, 80)),
                                np.asarray(idx[:1, :2])[:, [0, 1, 0, 1]] + np.array([0, 0, 80, 80]))


def _step_flops(params, mask_cache):
  ctx = jnp.zeros((1, CFG.text_len, CFG.text_dim))
  state = init_stream(CFG, params, ctx, latent_height=H, latent_width=W,
                      options=StreamConfig(cache_frames=4 * CHUNK, timesteps=STEPS, mask_cache=mask_cache))
  state = state.replace(first_chunk=False)  # a steady-state chunk
  compiled = jax.jit(_stream_step, static_argnums=0).lower(CFG, params, state, jnp.zeros((1, CHUNK, H, W, 16))).compile()
  analysis = compiled.cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_cost_model_confirms_the_saving(params):
  """XLA's cost analysis of a steady-state step: fewer FLOPs at a higher prune ratio, for both placements."""
  full = _step_flops(params, MaskCacheConfig(cache_on="none"))
  attn = _step_flops(params, MaskCacheConfig(prune_ratio=0.75, cache_on="self_attn"))
  ffn = _step_flops(params, MaskCacheConfig(prune_ratio=0.75, cache_on="ffn"))
  assert attn < full and ffn < full, (attn, ffn, full)
