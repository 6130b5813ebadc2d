"""The attention probe: per-frame mass against dense softmax probabilities, under every mask and in the stream.

The reference for the forward's probe swaps the blockwise computation (`attention_probe.key_frame_mass`) for dense
float32 softmax probabilities under the token-level mask the forward's attention uses (`AttentionMask.dense`, or
the stream's valid key prefix), so both read the same q and k inside the same forward.
"""

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax import attention_probe
from liveedit_jax.attention import AttentionMask
from liveedit_jax.attention_probe import (ProbeConfig, cache_key_frames, key_frame_mass, mass_by_distance,
                                          past_frame_entropy)
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import dit_forward, init_dit_params
from liveedit_jax.kv_cache import KVCache
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.stream_step import StreamConfig, advance, chunk_forward, init_stream, stream_forward, stream_probe
from tests.numerics import FP32_RTOL, rel_err
from tests.test_stream_step import _context, _latents  # the same tiny config's prompt and latents

CFG = DiTConfig.preset("tiny")
H, W = 4, 6  # latent size: 2×3 patches, P = 6 tokens per frame
GRID = (2, 3)
P = 6
CHUNK = 3
PROBE = ProbeConfig(layers=(1, 0), radii=(0.0, 1.0, 1.5))
NO_MASK = MaskCacheConfig(cache_on="none")
# One stream geometry for every stream test (one compile of each jitted function): 3 sink frames, a 2-chunk ring.
STREAM = StreamConfig(cache_frames=9, sink_frames=3, mask_cache=NO_MASK)

forward = jax.jit(dit_forward, static_argnums=0, static_argnames=("chunk_frames", "probe"))
probe_stream = jax.jit(stream_probe, static_argnums=(0, 5))
stream_forward_jit = jax.jit(stream_forward, static_argnums=0)
advance_jit = jax.jit(advance, static_argnums=0)


def _seed():
  return random.SystemRandom().randrange(2**31)


@pytest.fixture(scope="module")
def params():
  """Random weights of init_dit_params' structure (without its 3.5 s compile), q/k norms ×2 for peakier attention."""
  rng = np.random.default_rng(_seed())

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if name.endswith("['kernel']"):
      fan_in = np.prod(leaf.shape[:-1]) if "patch_embedding" in name else leaf.shape[-2]
      return jnp.asarray(noise / np.sqrt(fan_in))
    if name.endswith("['scale']"):
      return jnp.asarray((2.0 if "self_attn']['norm_" in name else 1.0) + 0.1 * noise)
    return jnp.asarray(0.1 * noise)  # biases and modulation tables

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(init_dit_params, CFG, jax.random.key(0)))


def _dense_reference(token_mask, traced=None):
  """A stand-in for `key_frame_mass`: dense softmax probabilities under a [T, S] token mask, summed per frame.

  traced: a list the stand-in appends to when traced (a cached trace of the real probe would not).
  """
  h, w = GRID
  yy, xx = np.divmod(np.arange(P), w)
  dist = np.hypot(yy[:, None] - yy[None, :], xx[:, None] - xx[None, :])  # [P query, P key]

  def fn(q, k, visible, grid, radii):
    assert grid == GRID
    if traced is not None:
      traced.append(q.shape)
    b, t, n, e = q.shape
    logits = jnp.einsum("btne,bsne->bnts", q, k, preferred_element_type=jnp.float32) * e ** -0.5
    probs = jax.nn.softmax(jnp.where(jnp.asarray(token_mask), logits, -jnp.inf), axis=-1)
    probs = probs.reshape(b, n, t // P, P, k.shape[1] // P, P)
    near = jnp.asarray(dist[..., None] <= np.asarray(radii)[None, None, :])  # [P, P, R]
    local = jnp.sum(probs[..., None] * near[None, None, None, :, None, :, :], axis=-2)
    return probs.sum(-1), local

  return fn


def _dense_mask(kind, frames):
  return np.ones((frames * P,) * 2, bool) if kind == "full" else AttentionMask(kind, CHUNK * P).dense(
      frames * P, frames * P)


def test_frame_mass_sums_to_one_and_equals_dense_softmax():
  seed = _seed()
  rng = np.random.default_rng(seed)
  b, fq, fk, n, e = 2, 3, 4, 2, 8
  q = _latents(rng, b, fq * P, n, e) * 2
  k = _latents(rng, b, fk * P, n, e) * 2
  visible = rng.random((fq, fk)) < 0.6
  visible[0] = [True, False, False, True]
  visible[2] = False  # a query frame that sees nothing gets zeros, not NaN
  radii = (0.0, 1.0, 10.0)
  mass, local = jax.jit(key_frame_mass, static_argnums=(3, 4))(q, k, visible, GRID, radii)
  assert mass.shape == (b, n, fq, P, fk) and local.shape == (b, n, fq, P, fk, 3)
  sums = np.asarray(mass).sum(-1)
  sees = visible.any(-1)
  np.testing.assert_allclose(sums[:, :, sees], 1.0, atol=1e-5, err_msg=f"seed {seed}")
  assert np.all(np.asarray(mass)[:, :, ~sees] == 0) and np.all(np.asarray(local)[:, :, ~sees] == 0)
  token_mask = np.repeat(np.repeat(visible, P, 0), P, 1)
  ref_mass, ref_local = _dense_reference(token_mask)(q, k, visible, GRID, radii)
  ref_mass, ref_local = np.array(ref_mass), np.array(ref_local)
  ref_mass[:, :, ~sees] = 0  # the dense softmax of an all-hidden row is NaN
  ref_local[:, :, ~sees] = 0
  assert rel_err(mass, ref_mass) <= FP32_RTOL, f"seed {seed}"
  assert rel_err(local, ref_local) <= FP32_RTOL, f"seed {seed}"
  np.testing.assert_allclose(local[..., 2], mass, rtol=FP32_RTOL)  # radius 10 covers the 2×3 grid


@pytest.mark.parametrize("kind", ["full", "chunk_causal", "teacher_forcing"])
def test_forward_probe_equals_dense_probabilities_and_leaves_the_output_alone(params, kind, monkeypatch):
  seed = _seed()
  rng = np.random.default_rng(seed)
  frames = 6
  x = _latents(rng, 1, frames, H, W, 32)
  t = jnp.asarray(rng.uniform(0, 1000, (1, frames)), jnp.float32)
  ctx = _context(rng)
  kwargs = {} if kind == "full" else {"chunk_frames": CHUNK}
  if kind == "teacher_forcing":
    kwargs["clean_x"] = _latents(rng, 1, frames, H, W, 32)
  plain = forward(CFG, params, x, t, ctx, **kwargs)
  out, stats = forward(CFG, params, x, t, ctx, probe=PROBE, **kwargs)
  np.testing.assert_array_equal(out, plain)  # bit for bit

  seq = 2 * frames if kind == "teacher_forcing" else frames
  traced = []
  monkeypatch.setattr(attention_probe, "key_frame_mass", _dense_reference(_dense_mask(kind, seq), traced))
  _, ref = jax.jit(functools.partial(dit_forward, CFG, probe=PROBE, **kwargs))(params, x, t, ctx)
  assert traced, "the reference probe was not traced"
  assert stats.mass.shape == (2, 1, CFG.num_heads, seq, seq) and stats.layers == (1, 0)
  assert rel_err(stats.mass, ref.mass) <= FP32_RTOL, f"seed {seed}, {kind}"
  assert rel_err(stats.local, ref.local) <= FP32_RTOL, f"seed {seed}, {kind}"
  assert rel_err(stats.mass[0], stats.mass[1]) > 1e-3  # layers 1 and 0 differ, in that order
  np.testing.assert_allclose(np.asarray(stats.mass).sum(-1), 1.0, atol=1e-5)
  positions = np.tile(np.arange(frames), seq // frames)
  np.testing.assert_array_equal(stats.query_frame, positions)
  np.testing.assert_array_equal(stats.key_frame, positions)


def test_probe_is_not_traced_when_off(params, monkeypatch):
  def fail(*_, **__):
    raise AssertionError("probe code traced without a probe")

  monkeypatch.setattr(attention_probe, "key_frame_mass", fail)
  for name in ("instrument", "collect", "frame_visibility", "cache_key_frames"):
    monkeypatch.setattr(f"liveedit_jax.dit.{name}", fail, raising=False)
    monkeypatch.setattr(f"liveedit_jax.stream_step.{name}", fail, raising=False)
  rng = np.random.default_rng(0)
  x, ctx = _latents(rng, 1, 6, H, W, 32), _context(rng)
  for kwargs in ({}, {"chunk_frames": CHUNK}, {"chunk_frames": CHUNK, "clean_x": x}):
    jaxpr = jax.make_jaxpr(functools.partial(dit_forward, CFG, **kwargs))(params, x, jnp.zeros(1), ctx)
    assert len(jaxpr.out_avals) == 1 and "cond[" not in str(jaxpr)  # the probe's only primitive is its cond
  state = init_stream(CFG, params, ctx, latent_height=H, latent_width=W,
                      options=STREAM)
  jaxpr = jax.make_jaxpr(functools.partial(stream_forward, CFG))(params, state, x[:, :CHUNK], jnp.zeros(1))
  assert "cond[" not in str(jaxpr)


def _stream_inputs(rng, n):
  noisy, clean, source = (_latents(rng, 1, n * CHUNK, H, W, 16) for _ in range(3))
  return noisy, clean, source, rng.uniform(1, 1000, (1, n)).astype(np.float32)


def test_stream_probe_equals_the_teacher_forcing_probe(params):
  """Nothing evicted: the chunk's queries over [cache ‖ chunk] = teacher forcing's noisy queries (clean past, own)."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  n = 2  # 6 frames: the teacher-forcing probe compiled for the test above
  ctx = _context(rng)
  noisy, clean, source, t = _stream_inputs(rng, n)
  state = init_stream(CFG, params, ctx, latent_height=H, latent_width=W, options=STREAM)
  _, tf = forward(CFG, params, jnp.concatenate([noisy, source], -1), np.repeat(t, CHUNK, axis=1), ctx,
                  chunk_frames=CHUNK, clean_x=jnp.concatenate([clean, source], -1), probe=PROBE)
  f = n * CHUNK
  key_frames = STREAM.cache_frames + CHUNK
  for c in range(n):
    sl = slice(c * CHUNK, (c + 1) * CHUNK)
    x = jnp.concatenate([noisy[:, sl], source[:, sl]], -1)
    flow, stats = probe_stream(CFG, params, state, x, t[:, c], PROBE)
    np.testing.assert_array_equal(flow, stream_forward_jit(CFG, params, state, x, t[:, c])[0])
    seen = (c + 1) * CHUNK
    np.testing.assert_array_equal(stats.query_frame, np.arange(c * CHUNK, seen))
    np.testing.assert_array_equal(stats.key_frame, np.r_[np.arange(seen), -np.ones(key_frames - seen)])
    rows = slice(f + c * CHUNK, f + seen)
    for got, want in ((stats.mass, tf.mass), (stats.local, tf.local)):
      expected = jnp.concatenate([want[:, :, :, rows, :c * CHUNK], want[:, :, :, rows, f + c * CHUNK:f + seen]], 4)
      assert rel_err(got[:, :, :, :, :seen], expected) <= FP32_RTOL, f"seed {seed}, chunk {c}"
      assert np.all(np.asarray(got)[:, :, :, :, seen:] == 0)
    _, kv, _ = stream_forward_jit(CFG, params, state, jnp.concatenate([clean[:, sl], source[:, sl]], -1),
                                  jnp.zeros(1))
    state = advance_jit(CFG, state, kv)


def test_stream_probe_over_a_wrapped_ring_equals_dense_probabilities(params, monkeypatch):
  seed = _seed()
  rng = np.random.default_rng(seed)
  ctx = _context(rng)
  noisy, clean, source, t = _stream_inputs(rng, 5)
  state = init_stream(CFG, params, ctx, latent_height=H, latent_width=W, options=STREAM)
  for c in range(4):  # chunks 0-3 cached: sink 0-2, ring slots hold frames 9-11 (slot 3) and 6-8 (slot 6)
    sl = slice(c * CHUNK, (c + 1) * CHUNK)
    _, kv, _ = stream_forward_jit(CFG, params, state, jnp.concatenate([clean[:, sl], source[:, sl]], -1),
                                  jnp.zeros(1))
    state = advance_jit(CFG, state, kv)
  x = jnp.concatenate([noisy[:, 12:], source[:, 12:]], -1)
  _, stats = probe_stream(CFG, params, state, x, t[:, 4], PROBE)
  np.testing.assert_array_equal(stats.key_frame, [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14])

  traced = []
  monkeypatch.setattr(attention_probe, "key_frame_mass",
                      _dense_reference(np.ones((CHUNK * P, 4 * CHUNK * P), bool), traced))
  # A new partial: jax.jit(stream_probe) again would reuse the trace above.
  _, ref = jax.jit(functools.partial(stream_probe, CFG, probe=PROBE))(params, state, x, t[:, 4])
  assert traced, "the reference probe was not traced"
  assert rel_err(stats.mass, ref.mass) <= FP32_RTOL, f"seed {seed}"
  assert rel_err(stats.local, ref.local) <= FP32_RTOL, f"seed {seed}"


@pytest.mark.parametrize("cache_frames, sink_frames", [(6, 0), (9, 3), (12, 6)])
def test_cache_key_frames_follow_the_ring(cache_frames, sink_frames):
  """Each cache slot's reported frame = the frame index written into it (k holds frame ids here)."""
  kv = KVCache.empty(1, 1, cache_frames, 1, 1, 1, jnp.float32, sink_frames)
  for c in range(8):
    frames = np.asarray(cache_key_frames(kv, CHUNK, c * CHUNK))
    np.testing.assert_array_equal(frames[:CHUNK], np.arange(c * CHUNK, (c + 1) * CHUNK))
    valid = frames[CHUNK:] >= 0
    assert valid.sum() == min(c * CHUNK, cache_frames)
    np.testing.assert_array_equal(frames[CHUNK:][valid], np.asarray(kv.k[0, 0, :, 0, 0])[valid])
    ids = jnp.arange(c * CHUNK, (c + 1) * CHUNK, dtype=jnp.float32).reshape(1, 1, CHUNK, 1, 1)
    kv = kv.write(ids, ids)


def test_distance_and_entropy_helpers_against_loops():
  seed = _seed()
  rng = np.random.default_rng(seed)
  qf = np.array([3, 4, 5])
  kf = np.array([0, 1, 2, 3, 4, 5, -1])
  mass = rng.random((2, 3, 3, 7))
  mass[..., -1] = 0
  distances, by = mass_by_distance(mass, qf, kf)
  np.testing.assert_array_equal(distances, np.arange(-2, 6))
  for i, d in enumerate(distances):
    rows = [qi for qi in range(3) if any(qf[qi] - kf[j] == d for j in range(6))]
    want = np.mean([sum(mass[..., qi, j] for j in range(6) if qf[qi] - kf[j] == d) for qi in rows], axis=0)
    np.testing.assert_allclose(by[..., i], want, rtol=1e-12)
  entropy = past_frame_entropy(mass, qf, kf)
  for qi in range(3):
    p = mass[..., qi, :qf[qi]] / mass[..., qi, :qf[qi]].sum(-1, keepdims=True)
    np.testing.assert_allclose(entropy[..., qi], -(p * np.log(p)).sum(-1), rtol=1e-12)
  assert np.isnan(past_frame_entropy(mass, np.array([0]), kf)[..., 0]).all()  # frame 0 has no past


def test_bad_probes_are_explained(params):
  with pytest.raises(ValueError, match="ProbeConfig.layers is empty"):
    ProbeConfig(layers=())
  with pytest.raises(ValueError, match="names a layer twice"):
    ProbeConfig(layers=(1, 1))
  with pytest.raises(ValueError, match="radii must be ≥ 0"):
    ProbeConfig(layers=(0,), radii=(-1,))
  rng = np.random.default_rng(0)
  x, ctx = _latents(rng, 1, 3, H, W, 32), _context(rng)
  with pytest.raises(ValueError, match=r"probe layers \[2\] are out of range: config 'tiny' has 2 layers"):
    dit_forward(CFG, params, x, jnp.zeros(1), ctx, probe=ProbeConfig(layers=(0, 2)))
  state = init_stream(CFG, params, ctx, latent_height=H, latent_width=W,
                      options=STREAM)
  with pytest.raises(ValueError, match="does not take the mask cache's routing"):
    chunk_forward(CFG, params, (state.text_k, state.text_v), state.kv, state.frame_index, x, jnp.zeros(1),
                  routing=(None, None, MaskCacheConfig()), probe=PROBE)
