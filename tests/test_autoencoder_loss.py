"""The autoencoder's reconstruction errors and scores against NumPy, the colour term's meaning, and its curriculum's
batches."""

import jax
import numpy as np

from liveedit_jax import metrics
from liveedit_jax.vae import VAEConfig, init_vae_params
from train.autoencoder import (AutoencoderConfig, _reconstruct, evaluate_reconstruction, reconstruction_errors,
                               to_video, training_batch)


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
  params = init_vae_params(vae, jax.random.key(6))
  clips = np.random.default_rng(7).integers(0, 256, (4, 5, 16, 16, 3), dtype=np.uint8)
  value, chroma, per_frame = evaluate_reconstruction(vae, params, clips, batch=2)  # two batches, one compile
  reconstruction = np.concatenate([np.asarray(_reconstruct(vae, params, to_video(clips[i:i + 2]))) for i in (0, 2)])
  reconstruction = np.clip((reconstruction + 1) / 2, 0, 1)
  target = clips / 255.0
  np.testing.assert_allclose(value, np.mean(metrics.psnr(reconstruction, clips)), rtol=1e-5)
  np.testing.assert_allclose(chroma, np.mean(metrics.chroma_psnr(reconstruction, clips)), rtol=1e-5)
  frame_mse = np.mean((reconstruction.astype(np.float64) - target) ** 2, axis=(0, 2, 3, 4))
  np.testing.assert_allclose(per_frame, 10 * np.log10(1 / frame_mse), rtol=1e-5)
