"""The autoencoder's reconstruction errors against NumPy, and the colour term's meaning."""

import jax
import numpy as np

from liveedit_jax import metrics
from train.autoencoder import reconstruction_errors


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
