"""Prompt switching in a running stream: the new text K/V, the Mask Cache reset, the recache against a stream
rebuilt by hand under the new prompt, and no compilation per switch."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax import cli
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import text_kv_per_layer
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.prompt_switch import empty_history, push_history, switch_prompt
from liveedit_jax.stream_step import StreamConfig, advance, chunk_forward, init_stream, stream_step
from tests.numerics import FP32_RTOL, rel_err
from tests.random_params import random_dit_params

CFG = DiTConfig.preset("tiny")
H, W, CHUNK = 4, 6, 3
STEPS = 4
NO_MASK = MaskCacheConfig(cache_on="none")


@pytest.fixture(scope="module")
def params():
  return random_dit_params(CFG, random.SystemRandom().randrange(2**31))


def _context(rng):
  ctx = np.zeros((1, CFG.text_len, CFG.text_dim), np.float32)
  ctx[:, :5] = rng.standard_normal((1, 5, CFG.text_dim))
  return jnp.asarray(ctx)


def _stream(params, rng, options, chunks):
  """A stream of `chunks` random source chunks: (state, history, [(edited, source)], prompt)."""
  context = _context(rng)
  state = init_stream(CFG, params, context, latent_height=H, latent_width=W, options=options)
  history, outputs = empty_history(state, CFG), []
  for _ in range(chunks):
    source = jnp.asarray(rng.standard_normal((1, CHUNK, H, W, 16)).astype(np.float32))
    edited, state = stream_step(CFG, params, state, source)
    history = push_history(history, edited, source)
    outputs.append((edited, source))
  return state, history, outputs


def _noise(rng):
  return jnp.asarray(rng.standard_normal((STEPS, 1, CHUNK, H, W, 16)).astype(np.float32))


@pytest.mark.parametrize("chunks,cache_frames", [(2, 9), (3, 6)], ids=["cache-not-full", "ring-wrapped"])
def test_recache_equals_the_cached_frames_refreshed_under_the_new_prompt(params, chunks, cache_frames):
  rng = np.random.default_rng(random.SystemRandom().randrange(2**31))
  options = StreamConfig(cache_frames=cache_frames, mask_cache=NO_MASK)
  state, history, outputs = _stream(params, rng, options, chunks)
  frame_index, old_k = int(state.frame_index), np.asarray(state.kv.k)
  new_prompt = _context(rng)
  switched = switch_prompt(CFG, params, state, new_prompt, history=history)

  # By hand: a fresh stream under the new prompt that caches each chunk still in the cache, oldest first, from a
  # forward at t = 0 of its edited ‖ source latents at its own position.
  kept = outputs[-(cache_frames // CHUNK):]
  reference = init_stream(CFG, params, new_prompt, latent_height=H, latent_width=W, options=options)
  reference = reference.replace(frame_index=jnp.asarray(frame_index - len(kept) * CHUNK, jnp.int32))
  for edited, source in kept:
    _, chunk_kv, _ = chunk_forward(CFG, params, (reference.text_k, reference.text_v), reference.kv,
                                   reference.frame_index, jnp.concatenate([edited, source], -1), jnp.zeros((1,)))
    reference = advance(CFG, reference, chunk_kv)
  assert int(switched.frame_index) == int(reference.frame_index) == frame_index
  assert int(switched.kv.length) == int(reference.kv.length)
  assert int(switched.kv.write_frame) == int(reference.kv.write_frame)
  for got, want in ((switched.kv.k, reference.kv.k), (switched.kv.v, reference.kv.v), (switched.text_k,
                                                                                           reference.text_k)):
    assert rel_err(got, want) <= FP32_RTOL
  if chunks * CHUNK <= cache_frames:  # same slots: the old prompt's keys differ from the recached ones
    assert rel_err(old_k, reference.kv.k) > 1e-3


def test_keep_replaces_only_the_text_and_the_next_chunk_runs_in_full(params):
  rng = np.random.default_rng(random.SystemRandom().randrange(2**31))
  options = StreamConfig(cache_frames=9, mask_cache=MaskCacheConfig(prune_ratio=0.7))
  state, _, _ = _stream(params, rng, options, 2)
  assert not state.first_chunk
  old_k = np.asarray(state.kv.k)
  new_prompt = _context(rng)
  switched = switch_prompt(CFG, params, state, new_prompt)
  np.testing.assert_array_equal(np.asarray(switched.kv.k), old_k)
  want_k, want_v = text_kv_per_layer(CFG, params, new_prompt)
  assert rel_err(switched.text_k, want_k) <= FP32_RTOL and rel_err(switched.text_v, want_v) <= FP32_RTOL
  assert switched.first_chunk

  # The next chunk recomputes every token: the same as a stream without the mask cache on that state.
  source, noise = jnp.asarray(rng.standard_normal((1, CHUNK, H, W, 16)).astype(np.float32)), _noise(rng)
  plain = switched.replace(tokens=None, first_chunk=False,
                           options=StreamConfig(cache_frames=9, mask_cache=NO_MASK))
  plain = jax.tree.map(jnp.copy, plain)  # the next call donates `switched`
  edited, _ = stream_step(CFG, params, switched, source, noise)
  expected, _ = stream_step(CFG, params, plain, source, noise)
  assert rel_err(edited, expected) <= FP32_RTOL


def test_a_switch_does_not_compile(params):
  rng = np.random.default_rng(0)
  options = StreamConfig(cache_frames=6, mask_cache=MaskCacheConfig(prune_ratio=0.7))
  state, history, _ = _stream(params, rng, options, 2)  # compiles the first and the later chunks' steps
  state = switch_prompt(CFG, params, state, _context(rng), history=history)  # and each policy once
  state = switch_prompt(CFG, params, state, _context(rng))
  zeros = jnp.zeros((1, CHUNK, H, W, 16))
  _, state = stream_step(CFG, params, state, zeros)
  with cli.CompileTimer() as timer:
    for recache in (True, False, True):  # early in the stream (history not full) and later: one executable
      source = jnp.asarray(rng.standard_normal((1, CHUNK, H, W, 16)).astype(np.float32))
      edited, state = stream_step(CFG, params, state, source)
      history = push_history(history, edited, source)
      state = switch_prompt(CFG, params, state, _context(rng), history=history if recache else None)
    _, state = stream_step(CFG, params, state, zeros)
    jax.block_until_ready(state)
  assert timer.count == 0


def test_bad_switches_are_explained(params):
  rng = np.random.default_rng(0)
  options = StreamConfig(cache_frames=6, sink_frames=3, mask_cache=NO_MASK)
  state, history, _ = _stream(params, rng, options, 1)
  with pytest.raises(ValueError, match=r"context must be \[B = 1, L ≤ 16, 40\], got \[1, 16, 7\]"):
    switch_prompt(CFG, params, state, jnp.zeros((1, 16, 7)))
  with pytest.raises(ValueError, match="without sink frames"):
    switch_prompt(CFG, params, state, _context(rng), history=history)
