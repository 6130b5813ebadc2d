"""`per_frame_init`: at init the VAE is a per-frame autoencoder of every 4th frame, the first frame's path for all."""

import functools

import jax
import numpy as np
import pytest

from liveedit_jax import vae
from train.autoencoder import AutoencoderConfig, per_frame_init, train

CONFIG = vae.VAEConfig.preset("synth", compute_dtype="float32")
init_vae_params = jax.jit(functools.partial(vae.init_vae_params, CONFIG))
vae_encode = jax.jit(functools.partial(vae.vae_encode, CONFIG))
vae_decode = jax.jit(functools.partial(vae.vae_decode, CONFIG))


def _gaps(params, seed):
  """Largest relative gaps from a per-frame autoencoder of every 4th frame, on one clip shape (one compile each).

  Encoding: latent 1 of frames 0–4 is frame 4's encoding alone, i.e. latent 0 of a clip starting with frame 4, and
  frames 1–3 do not matter. Decoding: latent 1 decodes to 4 copies of its own first-frame decode, i.e. frame 0 of
  the latents [z1, z1]."""
  rng = np.random.default_rng(seed)
  video = rng.uniform(-1, 1, (1, 5, 16, 16, 3)).astype(np.float32)
  other = rng.uniform(-1, 1, video.shape).astype(np.float32)
  other[:, 0], other[:, 4] = video[:, 4], video[:, 4]
  latents, moved = np.asarray(vae_encode(params, video)), np.asarray(vae_encode(params, other))
  scale = np.abs(latents).max()
  encode_gap = max(np.abs(latents[:, 1] - moved[:, 0]).max(), np.abs(latents[:, 1] - moved[:, 1]).max()) / scale
  z = rng.normal(size=(1, 2, 4, 4, CONFIG.z_dim)).astype(np.float32)
  frames = np.asarray(vae_decode(params, z))
  repeated = np.asarray(vae_decode(params, np.concatenate([z[:, 1:], z[:, 1:]], axis=1)))
  expected = np.concatenate([frames[:, :1], np.repeat(repeated[:, :1], 4, axis=1)], axis=1)
  decode_gap = np.abs(frames - expected).max() / np.abs(expected).max()
  return encode_gap, decode_gap


def test_per_frame_init_runs_every_frame_on_the_first_frames_path():
  params = init_vae_params(jax.random.key(0))
  encode_gap, decode_gap = _gaps(per_frame_init(params), 1)
  # Latent 1 of frames 0–4 is frame 4's encoding alone; latent 1 decodes to 4 copies of its own first-frame decode.
  assert encode_gap < 1e-5 and decode_gap < 1e-5
  # Wan's random init mixes the frames: the same comparison is far off.
  default_encode, default_decode = _gaps(params, 1)
  assert default_encode > 1e-2 and default_decode > 1e-2


def test_per_frame_init_keeps_spatial_taps_and_scale():
  params = init_vae_params(jax.random.key(2))
  changed = per_frame_init(params)
  kernel, new = params["encoder"]["middle_0"]["conv1"]["kernel"], changed["encoder"]["middle_0"]["conv1"]["kernel"]
  np.testing.assert_allclose(new[-1], kernel[-1] * np.sqrt(3), rtol=1e-6)
  assert not np.any(new[:-1])
  time_conv = changed["decoder"]["upsamples_2"]["time_conv"]["kernel"]  # [3, 1, 1, C, 2C]
  c = time_conv.shape[-2]
  np.testing.assert_array_equal(time_conv[-1, 0, 0], np.concatenate([np.eye(c), np.eye(c)], axis=1))
  assert changed["decoder"]["upsamples_2"]["conv"]["kernel"] is params["decoder"]["upsamples_2"]["conv"]["kernel"]


def test_unknown_temporal_init_is_refused(tmp_path):
  with pytest.raises(ValueError, match="temporal_init must be 'default' or 'per_frame', got 'zeros'"):
    train(AutoencoderConfig(temporal_init="zeros", workdir=str(tmp_path)))
