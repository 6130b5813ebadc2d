"""Training losses: the DMD gradient, the self-forcing rollout against teacher-forcing forwards, text dropout."""

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax.dit import dit_forward, text_kv_per_layer
from liveedit_jax.schedule import TRAIN_TIMESTEPS, add_noise, x0_from_flow
from tests.numerics import FP32_RTOL, rel_err
from tests.random_params import random_dit_params
from train.configs import TrainConfig
from train.losses import dmd_generator_loss, dmd_objective, drop_text, predict_x0
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.stream_step import StreamConfig, chunk_forward, init_stream, stream_step
from train.rollout import exit_forward, rollout
from train.step import RNG_IMPL

CFG = TrainConfig.preset("tiny", 3)
DIT = CFG.dit()
B, F, H, W = 2, 6, 4, 4
CHUNK = CFG.chunk_frames


def _seed():
  return random.SystemRandom().randrange(2**31)


def _params(seed):
  return random_dit_params(DIT, seed)


def _batch(rng):
  context = np.zeros((B, DIT.text_len, DIT.text_dim), np.float32)
  context[:, :5] = rng.standard_normal((B, 5, DIT.text_dim))
  latents = lambda: jnp.asarray(rng.standard_normal((B, F, H, W, 16)), jnp.float32)  # noqa: E731
  return {"source": latents(), "target": latents(), "context": jnp.asarray(context)}


def test_dmd_gradient_is_delta_over_n():
  """∂/∂x̂ of 0.5·mean((x̂ − sg(x̂ − Δ))²) is Δ/N with Δ = (x0_fake − x0_real) / mean|x̂ − x0_real| per sample."""
  rng = np.random.default_rng(_seed())
  x_hat, x0_real, x0_fake = (rng.standard_normal((3, 6, 4, 4, 16)).astype(np.float32) for _ in range(3))
  grad = jax.grad(dmd_objective)(jnp.asarray(x_hat), jnp.asarray(x0_real), jnp.asarray(x0_fake))
  x, real, fake = (a.astype(np.float64) for a in (x_hat, x0_real, x0_fake))
  norm = np.abs(x - real).mean(axis=(1, 2, 3, 4), keepdims=True)
  expected = (fake - real) / norm / x.size
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-6, atol=0)
  np.testing.assert_array_equal(np.asarray(jax.grad(dmd_objective)(jnp.asarray(x_hat), jnp.asarray(x0_real),
                                                                   jnp.asarray(x0_real))), 0.0)


@functools.partial(jax.jit, static_argnums=0)
def _generator_grad(config, gen, real, fake, batch, key):
  return jax.grad(lambda g: dmd_generator_loss(config, g, real, fake, batch, key)[0])(gen)


def test_dmd_generator_gradient_vanishes_when_fake_equals_real():
  """With the fake score equal to the real one (no guidance, no MSE) the generator gets no gradient; with a
  different fake score it does, down to the text embedding, whose K/V the exit forward must differentiate."""
  seed = _seed()
  config = CFG.replace(guidance=0.0, mse_weight=0.0)
  batch = _batch(np.random.default_rng(seed))
  gen, score, other = _params(seed), _params(seed + 2), _params(seed + 4)
  key = jax.random.key(seed, impl=RNG_IMPL)
  same = _generator_grad(config, gen, score, score, batch, key)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(same))
  differ = _generator_grad(config, gen, score, other, batch, key)
  for name, g in (("text_embedding", differ["text_embedding"]), ("cross_attn.k", differ["blocks"]["cross_attn"]["k"]),
                  ("self_attn.q", differ["blocks"]["self_attn"]["q"])):
    assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g)) > 1e-7, f"seed {seed}: no gradient in {name}"


tf_forward = jax.jit(functools.partial(dit_forward, chunk_frames=CHUNK), static_argnums=0)


def _reference_rollout(params, batch, noise, exit_step):
  """The rollout recomputed with whole-clip teacher-forcing forwards (the stage-2 model): chunk c denoises against
  the clean outputs of chunks < c at t = 0. Chunk c depends only on earlier chunks, so iterating the rollout once
  per chunk, each time with the previous iterate as the clean context, reaches the exact fixed point."""
  source, context = batch["source"], batch["context"]
  clean = jnp.zeros_like(source)
  for _ in range(F // CHUNK):
    x = noise[0]
    for k in range(exit_step + 1):
      t = CFG.timesteps[k]
      flow = tf_forward(DIT, params, jnp.concatenate([x, source], -1), jnp.full((B,), t), context,
                        clean_x=jnp.concatenate([clean, source], -1))
      x0 = x0_from_flow(x, flow, t / TRAIN_TIMESTEPS)
      if k < exit_step:
        x = add_noise(x0, noise[k + 1], CFG.timesteps[k + 1] / TRAIN_TIMESTEPS)
    clean = x0
  return x0


def test_rollout_equals_teacher_forcing_and_exit_forward_its_gradient():
  """Phase 1 (the cached rollout) equals teacher-forcing forwards for every exit step; phase 2 (all exit forwards
  at once against the final cache) reproduces phase 1's samples, and its gradient equals that of chunk-by-chunk
  exit forwards against the cache as it was (Self-Forcing's order)."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  params, batch = _params(seed), _batch(rng)
  noise = jnp.asarray(rng.standard_normal((len(CFG.timesteps), B, F, H, W, 16)), jnp.float32)
  text_kv = jax.jit(text_kv_per_layer, static_argnums=0)(DIT, params, batch["context"])
  run = jax.jit(rollout, static_argnums=(0, 6, 7))
  exit_fn = jax.jit(exit_forward, static_argnums=(0, 7))
  for k in range(len(CFG.timesteps)):
    roll = run(DIT, params, text_kv, batch["source"], noise, jnp.int32(k), CFG.timesteps, CHUNK)
    err = rel_err(roll.samples, _reference_rollout(params, batch, noise, k))
    assert err <= FP32_RTOL, f"seed {seed}, exit step {k}: rollout vs teacher forcing {err:.2e}"
    t = jnp.full((B,), CFG.timesteps[k])
    err = rel_err(exit_fn(DIT, params, text_kv, roll.kv, roll.exit_inputs, batch["source"], t, CHUNK), roll.samples)
    assert err <= FP32_RTOL, f"seed {seed}, exit step {k}: exit forward vs rollout {err:.2e}"

  weights = jnp.asarray(rng.standard_normal(roll.samples.shape), jnp.float32)

  def together(p):
    tkv = text_kv_per_layer(DIT, p, batch["context"])
    return jnp.sum(weights * exit_forward(DIT, p, tkv, roll.kv, roll.exit_inputs, batch["source"], t, CHUNK))

  def chunk_by_chunk(p):
    tkv = text_kv_per_layer(DIT, p, batch["context"])
    total = 0.0
    for c in range(F // CHUNK):
      sl = slice(c * CHUNK, (c + 1) * CHUNK)
      cache = roll.kv.replace(length=jnp.int32(c * CHUNK * (H // 2) * (W // 2)))  # the chunks before c
      x = roll.exit_inputs[:, sl]
      flow, _, _ = chunk_forward(DIT, p, tkv, jax.lax.stop_gradient(cache), c * CHUNK,
                                 jnp.concatenate([x, batch["source"][:, sl]], -1), t)
      total += jnp.sum(weights[:, sl] * x0_from_flow(x, flow, t / TRAIN_TIMESTEPS))
    return total

  g_together = jax.jit(jax.grad(together))(params)
  g_chunks = jax.jit(jax.grad(chunk_by_chunk))(params)
  flat = lambda g: np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])  # noqa: E731
  err = rel_err(flat(g_together), flat(g_chunks))
  assert err <= FP32_RTOL, f"seed {seed}: exit-forward gradient vs chunk-by-chunk {err:.2e}"


@pytest.mark.parametrize("cache_on", ["self_attn", "ffn"])
def test_pruned_rollout_equals_streaming_with_the_mask_cache(cache_on):
  """The pruned-noise rollout (Mask Cache in phase 1) equals `stream_step` with the same Mask Cache, chunk by chunk,
  for every exit step k* (a stream of the first k* + 1 denoising steps), and pruning changes the samples."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  params, batch = _params(seed), _batch(rng)
  noise = jnp.asarray(rng.standard_normal((len(CFG.timesteps), B, F, H, W, 16)), jnp.float32)
  text_kv = jax.jit(text_kv_per_layer, static_argnums=0)(DIT, params, batch["context"])
  mask_cache = MaskCacheConfig(prune_ratio=0.5, cache_on=cache_on)
  run = jax.jit(rollout, static_argnums=(0, 6, 7, 8))
  for k in (0, len(CFG.timesteps) - 1):
    roll = run(DIT, params, text_kv, batch["source"], noise, jnp.int32(k), CFG.timesteps, CHUNK, mask_cache)
    options = StreamConfig(chunk_frames=CHUNK, cache_frames=F, timesteps=CFG.timesteps[:k + 1],
                           mask_cache=mask_cache)
    state = init_stream(DIT, params, batch["context"], latent_height=H, latent_width=W, options=options)
    for c in range(F // CHUNK):
      sl = slice(c * CHUNK, (c + 1) * CHUNK)
      edited, state = stream_step(DIT, params, state, batch["source"][:, sl], noise[:k + 1, :, sl])
      err = rel_err(roll.samples[:, sl], edited)
      assert err <= FP32_RTOL, f"seed {seed}, {cache_on}, exit step {k}, chunk {c}: rollout vs stream {err:.2e}"
  full = run(DIT, params, text_kv, batch["source"], noise, jnp.int32(k), CFG.timesteps, CHUNK)
  assert rel_err(roll.samples[:, CHUNK:], full.samples[:, CHUNK:]) > 1e-3, f"seed {seed}: pruning changed nothing"
  assert rel_err(roll.samples[:, :CHUNK], full.samples[:, :CHUNK]) <= FP32_RTOL  # chunk 0 runs every token


def test_text_dropout_replaces_whole_prompts():
  context = jnp.ones((4000, 3, 2))
  assert drop_text(jax.random.key(0), context, 0.0) is context
  np.testing.assert_array_equal(drop_text(jax.random.key(0), context, 1.0), 0.0)
  dropped = np.asarray(drop_text(jax.random.key(0), context, 0.25))
  per_prompt = dropped.reshape(4000, -1)
  assert np.all((per_prompt == 0).all(1) | (per_prompt == 1).all(1))  # a prompt is kept or dropped whole
  assert abs((per_prompt == 0).all(1).mean() - 0.25) < 0.03


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_real_score_guidance_formula(guidance):
  """predict_x0 with guidance g is x0_c + g·(x0_c − x0_u), the null prompt being the zero context."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  params, batch = _params(seed), _batch(rng)
  x_t, t = batch["target"], jnp.asarray([300.0, 900.0])
  fn = jax.jit(predict_x0, static_argnums=(0, 6))
  cond = fn(CFG, params, x_t, batch["source"], t, batch["context"], 0.0)
  uncond = fn(CFG, params, x_t, batch["source"], t, jnp.zeros_like(batch["context"]), 0.0)
  guided = fn(CFG, params, x_t, batch["source"], t, batch["context"], guidance)
  assert rel_err(guided, cond + guidance * (cond - uncond)) <= FP32_RTOL
