"""The autoencoder's reconstruction errors and scores against NumPy, the colour term's meaning, its curriculum's
batches, the loss restricted to the first frames, and the VAE overrides of a run."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax import cli, metrics
from liveedit_jax.vae import VAEConfig, init_vae_params, vae_decode, vae_encode
from train.autoencoder import (AutoencoderConfig, _reconstruct, evaluate_reconstruction, loss_fn, parse_overrides,
                               reconstruction_errors, to_video, training_batch)


def _clips(seed):
  return np.random.default_rng(seed).uniform(-1, 1, (2, 5, 8, 8, 3)).astype(np.float32)


def test_errors_match_numpy():
  reconstruction, video = _clips(0), _clips(1)
  errors = jax.device_get(reconstruction_errors(reconstruction, video))
  error = reconstruction.astype(np.float64) - video
  chroma = error - error.mean(-1, keepdims=True)
  np.testing.assert_allclose(errors["mse"], np.mean(error ** 2), rtol=1e-5)
  np.testing.assert_allclose(errors["l1"], np.mean(np.abs(error)), rtol=1e-5)
  np.testing.assert_allclose(errors["chroma_mse"], np.mean(chroma ** 2), rtol=1e-5)


def test_colour_term_ignores_brightness_and_scores_grey_as_the_colour_lost():
  video = _clips(2)
  brighter = video + np.random.default_rng(3).uniform(-0.2, 0.2, video.shape[:-1] + (1,)).astype(np.float32)
  assert float(reconstruction_errors(brighter, video)["chroma_mse"]) < 1e-12
  grey = np.repeat(video.mean(-1, keepdims=True), 3, -1)
  colour = video - video.mean(-1, keepdims=True)
  np.testing.assert_allclose(float(reconstruction_errors(grey, video)["chroma_mse"]), np.mean(colour ** 2), rtol=1e-5)
  # Per clip, the same quantity as the benchmark's chroma PSNR (peak 2 on [−1, 1] is peak 1 on [0, 1]).
  expected = metrics.chroma_psnr((grey + 1) / 2, (video + 1) / 2)
  mses = [float(reconstruction_errors(grey[i:i + 1], video[i:i + 1])["chroma_mse"]) for i in range(len(video))]
  np.testing.assert_allclose(10 * np.log10(4 / np.array(mses)), expected, rtol=1e-5)


def test_training_batch_starts_on_short_clips():
  config = AutoencoderConfig(frames=9, short_steps=3, short_frames=5, short_batch=4, batch_size=2, crop=8)
  clips = np.random.default_rng(4).integers(0, 256, (6, 9, 16, 16, 3), dtype=np.uint8)
  rng = np.random.default_rng(5)
  for step in (1, 3):
    batch = training_batch(config, rng, clips, step)
    assert batch.shape == (4, 5, 8, 8, 3)
    # Each is a crop of some clip's first 5 frames.
    for crop in batch:
      assert any((clip[:5, y:y + 8, x:x + 8] == crop).all() for clip in clips for y in range(9) for x in range(9))
  assert training_batch(config, rng, clips, 4).shape == (2, 9, 8, 8, 3)
  assert training_batch(AutoencoderConfig(frames=9, batch_size=2, crop=8), rng, clips, 1).shape == (2, 9, 8, 8, 3)


def test_reconstruction_scores_per_clip_and_per_frame():
  vae = VAEConfig.preset("tiny", compute_dtype="float32")
  params = jax.jit(functools.partial(init_vae_params, vae))(jax.random.key(6))
  clips = np.random.default_rng(7).integers(0, 256, (4, 5, 16, 16, 3), dtype=np.uint8)
  scores = evaluate_reconstruction(vae, params, clips, batch=2)  # two batches, one compile
  reconstruction = np.concatenate([np.asarray(_reconstruct(vae, params, to_video(clips[i:i + 2]))) for i in (0, 2)])
  reconstruction = np.clip((reconstruction + 1) / 2, 0, 1)
  target = clips / 255.0
  np.testing.assert_allclose(scores["psnr"], np.mean(metrics.psnr(reconstruction, clips)), rtol=1e-5)
  np.testing.assert_allclose(scores["chroma_psnr"], np.mean(metrics.chroma_psnr(reconstruction, clips)), rtol=1e-5)
  error = reconstruction.astype(np.float64) - target
  frame_mse = np.mean(error ** 2, axis=(0, 2, 3, 4))
  np.testing.assert_allclose(scores["frame_psnr"], 10 * np.log10(1 / frame_mse), rtol=1e-5)
  # The colour alone: each pixel's error less its mean over R, G, B (metrics.chroma_psnr's split, pooled per frame).
  chroma_mse = np.mean((error - error.mean(-1, keepdims=True)) ** 2, axis=(0, 2, 3, 4))
  np.testing.assert_allclose(scores["frame_chroma_psnr"], 10 * np.log10(1 / chroma_mse), rtol=1e-5)


def test_loss_on_the_first_frames_alone():
  config = AutoencoderConfig(vae="tiny", compute_dtype="float32", loss_frames=5)
  vae = config.model()
  params = jax.jit(functools.partial(init_vae_params, vae))(jax.random.key(8))
  video = np.random.default_rng(9).uniform(-1, 1, (2, 9, 16, 16, 3)).astype(np.float32)
  key = jax.random.key(10)
  loss, _ = jax.jit(functools.partial(loss_fn, config, vae))(params, video, key)

  @jax.jit
  def by_hand(params, video):  # the whole clip encoded and decoded in one pass, as training does, the same noise
    mu = vae_encode(vae, params, video, chunked=False)
    rms = jnp.sqrt(jnp.mean(jnp.square(mu)) + 1e-6)
    return mu, vae_decode(vae, params, mu + config.latent_noise * rms * jax.random.normal(key, mu.shape), chunked=False)

  mu, reconstruction = jax.device_get(by_hand(params, video))
  error = np.asarray(reconstruction, np.float64) - video
  latent = config.latent_l2 * np.mean(np.square(mu))
  first = np.mean(error[:, :5] ** 2) + 0.1 * np.mean(np.abs(error[:, :5])) + latent
  np.testing.assert_allclose(float(loss), first, rtol=1e-5)
  whole = np.mean(error ** 2) + 0.1 * np.mean(np.abs(error)) + latent  # what loss_frames=0 computes
  assert abs(whole - first) > 1e-3 * first


def test_vae_overrides_change_the_preset():
  overrides = parse_overrides('{"vae_overrides": {"temporal_downsample": [false, false, false]}, "steps": 7}', "x")
  config = dataclasses.replace(AutoencoderConfig(vae="tiny", compute_dtype="float32"), **overrides)
  vae = config.model()
  assert (vae.temporal_downsample, vae.temporal_factor, config.steps) == ((False, False, False), 1, 7)
  assert vae.replace(temporal_downsample=(False, True, True)) == VAEConfig.preset("tiny", compute_dtype="float32")
  # One latent a frame: a 3-frame clip (not 1 + 4k) encodes to 3 latents and decodes to 3 frames.
  params = jax.eval_shape(functools.partial(init_vae_params, vae), jax.random.key(11))
  clip = jax.ShapeDtypeStruct((1, 3, 16, 16, 3), np.float32)
  latents = jax.eval_shape(functools.partial(vae_encode, vae), params, clip)
  assert latents.shape[1] == 3 and jax.eval_shape(functools.partial(vae_decode, vae), params, latents).shape[1] == 3
  for text, message in [('{"vae_overrides": {"width": 3}}', "unknown VAEConfig fields ['width']"),
                        ('{"vae_overrides": [1]}', "vae_overrides is a JSON object"),
                        ('{"stepz": 1}', "unknown AutoencoderConfig fields ['stepz']"),
                        ('{"workdir": "x"}', "unknown AutoencoderConfig fields ['workdir']"),
                        ("{", "x: not JSON")]:
    with pytest.raises(cli.UserError, match=re.escape(message)):
      parse_overrides(text, "x")
