"""Streaming step: exactness against teacher forcing, chunk causality, fixed shapes over unbounded streams."""

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import dit_forward
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.schedule import TRAIN_TIMESTEPS, add_noise, x0_from_flow
from liveedit_jax.stream_step import (StreamConfig, _stream_step, advance, init_stream, stream_forward,
                                    stream_step)
from tests.numerics import FP32_RTOL, rel_err
from tests.random_params import random_dit_params

CFG = DiTConfig.preset("tiny")
H, W = 4, 6  # latent size: 2×3 patches, P = 6 tokens per frame
CHUNK = 3
NO_MASK = MaskCacheConfig(cache_on="none")  # exact chunk-causal streaming (the mask cache approximates it)


def _seed():
  return random.SystemRandom().randrange(2**31)


@pytest.fixture(scope="module")
def params():
  return random_dit_params(CFG, _seed())


def _context(rng, b=1):
  ctx = np.zeros((b, CFG.text_len, CFG.text_dim), np.float32)
  ctx[:, :5] = rng.standard_normal((b, 5, CFG.text_dim))
  return jnp.asarray(ctx)


def _latents(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape).astype(np.float32))


tf_forward = jax.jit(functools.partial(dit_forward, chunk_frames=CHUNK), static_argnums=0)
chunk_forward = jax.jit(stream_forward, static_argnums=0)
advance_jit = jax.jit(advance, static_argnums=0)


def test_stream_forward_equals_teacher_forcing(params):
  """Chunk by chunk with the cache refreshed from clean latents = one teacher-forcing forward (spec §3.1(b))."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  n, b = 4, 2
  ctx = _context(rng, b)
  noisy, clean, source = (_latents(rng, b, n * CHUNK, H, W, 16) for _ in range(3))
  t = rng.uniform(1, 1000, (b, n)).astype(np.float32)
  state = init_stream(CFG, params, ctx, latent_height=H, latent_width=W,
                      options=StreamConfig(cache_frames=n * CHUNK, mask_cache=NO_MASK))
  streamed = []
  for c in range(n):
    sl = slice(c * CHUNK, (c + 1) * CHUNK)
    flow, _, _ = chunk_forward(CFG, params, state, jnp.concatenate([noisy[:, sl], source[:, sl]], -1), t[:, c])
    streamed.append(flow)
    _, kv, _ = chunk_forward(CFG, params, state, jnp.concatenate([clean[:, sl], source[:, sl]], -1), jnp.zeros(b))
    state = advance_jit(CFG, state, kv)
  tf = tf_forward(CFG, params, jnp.concatenate([noisy, source], -1), np.repeat(t, CHUNK, axis=1), ctx,
                  clean_x=jnp.concatenate([clean, source], -1))
  err = rel_err(jnp.concatenate(streamed, 1), tf)
  assert err <= FP32_RTOL, f"seed {seed}: relative error {err:.2e}"


def test_chunk_causal_forward_ignores_later_chunks(params):
  seed = _seed()
  rng = np.random.default_rng(seed)
  ctx = _context(rng)
  x = _latents(rng, 1, 9, H, W, 32)
  t = rng.uniform(0, 1000, (1, 9)).astype(np.float32)
  base = tf_forward(CFG, params, x, t, ctx, clean_x=None)
  changed = x.at[:, 6:].set(_latents(rng, 1, 3, H, W, 32))  # the last chunk only
  out = tf_forward(CFG, params, changed, t, ctx, clean_x=None)
  np.testing.assert_array_equal(out[:, :6], base[:, :6])
  assert rel_err(out[:, 6:], base[:, 6:]) > 1e-3
  full = jax.jit(dit_forward, static_argnums=0)(CFG, params, changed, t, ctx)  # bidirectional does see it
  assert rel_err(full[:, :6], base[:, :6]) > 1e-4


def _teacher_forcing_rollout(params, ctx, source, noise, options):
  """What the stream must produce, recomputed with whole-sequence teacher-forcing forwards.

  Chunk c depends only on chunks < c, so iterating the whole rollout n_chunks times, each time using the previous
  iterate's cached latents as the clean context, reaches the exact fixed point.
  """
  steps, n_frames = len(options.timesteps), source.shape[1]
  b = source.shape[0]
  ts = options.timesteps
  context_x = jnp.zeros_like(source)
  context_t = jnp.zeros((b,))
  for _ in range(n_frames // CHUNK):
    x = noise[0]
    for i, t in enumerate(ts):
      flow = tf_forward(CFG, params, jnp.concatenate([x, source], -1), jnp.full((b,), t), ctx,
                        clean_x=jnp.concatenate([context_x, source], -1), clean_t=context_t)
      x0 = x0_from_flow(x, flow, t / TRAIN_TIMESTEPS)
      last_input = x
      if i + 1 < steps:
        x = add_noise(x0, noise[i + 1], ts[i + 1] / TRAIN_TIMESTEPS)
    if options.refresh == "clean":
      context_x, context_t = x0, jnp.zeros((b,))
    else:  # the cache holds the last denoising forward's K/V: its input at its timestep
      context_x, context_t = last_input, jnp.full((b,), ts[-1])
  return x0


@pytest.mark.parametrize("refresh", ["clean", "none"])
def test_stream_step_equals_teacher_forcing_rollout(params, refresh):
  seed = _seed()
  rng = np.random.default_rng(seed)
  n, b = 3, 1
  options = StreamConfig(cache_frames=n * CHUNK, refresh=refresh, mask_cache=NO_MASK)
  ctx = _context(rng, b)
  source = _latents(rng, b, n * CHUNK, H, W, 16)
  noise = _latents(rng, len(options.timesteps), b, n * CHUNK, H, W, 16)
  state = init_stream(CFG, params, ctx, latent_height=H, latent_width=W, options=options)
  outs = []
  for c in range(n):
    sl = slice(c * CHUNK, (c + 1) * CHUNK)
    out, state = stream_step(CFG, params, state, source[:, sl], noise[:, :, sl])
    outs.append(out)
  expected = _teacher_forcing_rollout(params, ctx, source, noise, options)
  err = rel_err(jnp.concatenate(outs, 1), expected)
  assert err <= FP32_RTOL, f"seed {seed}, refresh={refresh}: relative error {err:.2e}"


def _run_stream(params, options, n_chunks, seed, config=CFG):
  rng = np.random.default_rng(seed)
  ctx = _context(rng)
  state = init_stream(config, params, ctx, latent_height=H, latent_width=W, options=options,
                      rng=jax.random.key(seed))
  outs = []
  for _ in range(n_chunks):
    out, state = stream_step(config, params, state, _latents(rng, 1, CHUNK, H, W, 16))
    outs.append(np.asarray(out))
  return np.concatenate(outs, 1), state


def test_window_larger_than_stream_is_no_window(params):
  seed = _seed()
  n = 4
  exact, _ = _run_stream(params, StreamConfig(cache_frames=n * CHUNK, mask_cache=NO_MASK), n, seed)
  wide, _ = _run_stream(params, StreamConfig(cache_frames=4 * n * CHUNK, mask_cache=NO_MASK), n, seed)
  assert rel_err(wide, exact) <= FP32_RTOL
  narrow, _ = _run_stream(params, StreamConfig(cache_frames=CHUNK, mask_cache=NO_MASK), n, seed)
  assert rel_err(narrow[:, :2 * CHUNK], exact[:, :2 * CHUNK]) <= FP32_RTOL  # nothing evicted yet
  assert rel_err(narrow[:, 2 * CHUNK:], exact[:, 2 * CHUNK:]) > 1e-4  # chunk 0 evicted from chunk 2 on


def test_rope_rebasing_preserves_outputs(params):
  """A stream re-based every few chunks (table of 24 positions) equals one that never needs to (1024)."""
  seed = _seed()
  options = StreamConfig(cache_frames=6, sink_frames=3, mask_cache=NO_MASK)
  n = 20  # 60 frames: re-bases at frames 21, 39 and 57
  short, state = _run_stream(params, options, n, seed, CFG.replace(rope_max_positions=24))
  long, _ = _run_stream(params, options, n, seed)
  assert int(state.frame_index) < 24
  err = rel_err(short, long)
  assert err <= FP32_RTOL, f"seed {seed}: relative error {err:.2e}"


def test_unbounded_stream_compiles_once_at_constant_memory(params):
  seed = _seed()
  cfg = CFG.replace(rope_max_positions=30)  # re-bases many times over the stream
  options = StreamConfig(cache_frames=6, sink_frames=3, refresh="none", mask_cache=NO_MASK)
  rng = np.random.default_rng(seed)
  state = init_stream(cfg, params, _context(rng), latent_height=H, latent_width=W, options=options)
  shapes = jax.tree.map(lambda a: (a.shape, a.dtype), state)
  compiled_before = stream_step._cache_size()
  live = []
  for _ in range(120):
    out, state = stream_step(cfg, params, state, _latents(rng, 1, CHUNK, H, W, 16))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == shapes
    del out
    live.append(len(jax.live_arrays()))
  assert stream_step._cache_size() == compiled_before + 1
  assert live[-1] == live[2], f"live buffers grew: {live[2]} → {live[-1]}"
  assert max(live[2:]) == min(live[2:])
  assert np.all(np.isfinite(np.asarray(state.kv.k)))


def test_bad_chunk_shape_is_explained(params):
  rng = np.random.default_rng(0)
  state = init_stream(CFG, params, _context(rng), latent_height=H, latent_width=W,
                      options=StreamConfig(mask_cache=NO_MASK))
  with pytest.raises(ValueError, match=r"source_chunk must be \[B, chunk_frames, H, W, C\] = \[1, 3, 4, 6, 16\], "
                     r"got \[1, 2, 4, 6, 16\]"):
    _stream_step(CFG, params, state, jnp.zeros((1, 2, H, W, 16)))
  with pytest.raises(ValueError, match="multiples of chunk_frames"):
    StreamConfig(cache_frames=7)
