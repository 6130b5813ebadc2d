"""TAEHV: golden parity with madebyollin/taehv's `taehv.py` (@1f14a56), streaming against whole clips, geometry,
configs and errors.

Golden fixtures (tests/fixtures/taehv_{tiny,p2}.npz, from `python scripts/taehv_reference.py fixtures
--reference taehv.py`): random weights in the reference's own module at toy widths, inputs, and the reference's
`encode_video` / `decode_video` outputs (PyTorch, CPU, float32). "tiny" is the tiny preset (taew2_1's geometry);
"p2" sets every other knob differently (pixel-shuffle 2, 12 latent channels, 8× time both ways). At the published
widths the same script's `parity` mode gives 2-3e-6 (see its docstring; not run in CI: the reference is no
dependency).
"""

import functools
import json
import random
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert.common import TensorRef, apply_rules
from convert.taehv import taehv_rules
from liveedit_jax import taehv
from liveedit_jax.vae import VAEConfig
from tests.numerics import BF16_RTOL, FP32_RTOL, rel_err

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_NAMES = ("tiny", "p2")
FP16_RTOL = 3e-3  # float16 keeps 11 significant bits: 1.3e-3 measured on both fixtures (reference: its default dtype)


@functools.cache
def fixture(name: str) -> tuple[taehv.TAEHVConfig, dict[str, np.ndarray]]:
  """(config, arrays) of tests/fixtures/taehv_{name}.npz; the reference's weights stay under "weights/<key>"."""
  with np.load(FIXTURES / f"taehv_{name}.npz") as f:
    arrays = {k: f[k] for k in f.files}
  return taehv.TAEHVConfig.from_dict(json.loads(str(arrays["config"]))), arrays


def state_dict(name: str) -> dict[str, np.ndarray]:
  """The fixture's weights as the reference's state dict (float32)."""
  _, arrays = fixture(name)
  return {k.removeprefix("weights/"): v.astype(np.float32) for k, v in arrays.items() if k.startswith("weights/")}


@functools.cache
def fixture_params(name: str):
  """The fixture's weights as our params, through the converter's table, placed as `load_taehv` places them (jit
  keys its compile cache on placement, and tests/test_convert_taehv.py reuses these compiles)."""
  config, _ = fixture(name)
  refs = {k: TensorRef(v.shape, lambda v=v: v) for k, v in state_dict(name).items()}
  abstract = jax.eval_shape(functools.partial(taehv.init_taehv_params, config), jax.random.key(0))
  return jax.device_put(apply_rules(refs, taehv_rules(config), abstract, np.float32, name), jax.devices()[0])


def fixture_inputs(name: str) -> tuple[np.ndarray, np.ndarray]:
  """(video [B, T, H, W, 3] in [−1, 1], latents [B, F, h, w, z]) exactly as the script fed the reference."""
  _, arrays = fixture(name)
  return arrays["video_u8"].astype(np.float32) / 127.5 - 1, arrays["latents"].astype(np.float32)


@functools.cache
def jitted(fn, config: taehv.TAEHVConfig):
  """jax.jit(fn bound to config), one object per (fn, config) so that compiles are shared between tests."""
  return jax.jit(functools.partial(fn, config))


def check_golden(name: str, params, config: taehv.TAEHVConfig | None = None, rtol: tuple[float, float] = (
    FP32_RTOL, FP32_RTOL)) -> tuple[float, float]:
  """Whole-clip encode / decode with `params` (at `config`, default the fixture's) against the fixture's reference
  outputs; returns the two relative errors after asserting them."""
  fixture_config, arrays = fixture(name)
  config = config or fixture_config
  video, latents = fixture_inputs(name)
  err_encode = rel_err(jitted(taehv.taehv_encode, config)(params, video), arrays["encoded"])
  err_decode = rel_err(jitted(taehv.taehv_decode, config)(params, latents), arrays["decoded"])
  assert err_encode <= rtol[0], f"{name} {config.compute_dtype}: encode {err_encode}"
  assert err_decode <= rtol[1], f"{name} {config.compute_dtype}: decode {err_decode}"
  return err_encode, err_decode


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_golden_float32(name):
  _, arrays = fixture(name)
  # The fixture itself is informative: latents spread, decoded pixels mostly inside the clamp.
  assert 0.5 < arrays["encoded"].std() < 2 and np.mean(np.abs(arrays["decoded"]) >= 1) < 0.25
  check_golden(name, fixture_params(name))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_golden_low_precision(name):
  """bf16 and fp16 compute against the float32 reference. bf16 keeps 8 significant bits: rounding the weights
  alone costs ~1e-2 on these ~25-conv-deep random networks, and the reference run in bf16 on the same weights
  is off by 1.2-1.7e-2 (stored in the fixture), so bf16 must stay within 1e-2 or the reference's own bf16 error."""
  config, arrays = fixture(name)
  floor = np.maximum(BF16_RTOL, arrays["reference_bf16_error"])
  check_golden(name, fixture_params(name), config.replace(compute_dtype="bfloat16"), tuple(floor))
  check_golden(name, fixture_params(name), config.replace(compute_dtype="float16"), (FP16_RTOL, FP16_RTOL))


def _counted_steps(config: taehv.TAEHVConfig, traces: list):
  def counted(step):
    def fn(params, state, x, first):
      traces.append((step.__name__, first))  # runs only while tracing
      return step(config, params, state, x, first=first)
    return jax.jit(fn, static_argnames="first", donate_argnums=1)

  return counted(taehv.taehv_encode_step), counted(taehv.taehv_decode_step)


def test_streaming_equals_whole_clip():
  """A fresh random 13-frame clip, padded with its last frame as `taehv_encode` pads it, through the jitted,
  donated encode step as 12 + 4 frames = one whole-clip encode; 4 random latents as 3 + 1 through the decode step
  = one whole-clip decode (9 + 4 frames). The state keeps its structure, the later chunk depends on the memories,
  a first chunk restarts the stream, and each step traces once per `first`. (The fixture's shapes, so the
  whole-clip compiles are the golden tests'.)"""
  config, seed = fixture("tiny")[0], random.randrange(2**31)
  rng = np.random.default_rng(seed)
  params = fixture_params("tiny")
  video = rng.uniform(-1, 1, (2, 13, 16, 24, 3)).astype(np.float32)
  latents = (rng.standard_normal((2, 4, 2, 3, 16)) * 1.5).astype(np.float32)
  padded = np.concatenate([video, np.repeat(video[:, -1:], 3, axis=1)], axis=1)
  traces = []
  encode_step, decode_step = _counted_steps(config, traces)
  state = taehv.init_taehv_stream(config, 2, 16, 24)
  structure = jax.tree.map(lambda a: (a.shape, a.dtype), state)
  out_latents, out_frames = [], []
  for first, frames, z_in in ((True, padded[:, :12], latents[:, :3]), (False, padded[:, 12:], latents[:, 3:])):
    state, z = encode_step(params, state, frames, first=first)
    out_latents.append(z)
    state, y = decode_step(params, state, z_in, first=first)
    out_frames.append(y)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == structure
  assert [f.shape[1] for f in out_frames] == [9, 4]
  whole_latents = jitted(taehv.taehv_encode, config)(params, video)
  whole_frames = jitted(taehv.taehv_decode, config)(params, latents)
  assert rel_err(jnp.concatenate(out_latents, 1), whole_latents) <= FP32_RTOL, f"seed {seed}"
  assert rel_err(jnp.concatenate(out_frames, 1), whole_frames) <= FP32_RTOL, f"seed {seed}"
  # The later chunks depend on the earlier ones through the memories (else streaming would be trivially exact).
  _, alone = decode_step(params, taehv.init_taehv_stream(config, 2, 16, 24), latents[:, 3:], first=False)
  assert rel_err(alone, out_frames[1]) > 1e-3, f"seed {seed}"
  _, restart = encode_step(params, state, padded[:, :12], first=True)
  assert rel_err(restart, out_latents[0]) <= FP32_RTOL, f"seed {seed}"
  assert sorted(traces) == [("taehv_decode_step", False), ("taehv_decode_step", True),
                            ("taehv_encode_step", False), ("taehv_encode_step", True)]


def test_bfloat16_stream_state():
  """With bf16 compute, the stream state and activations are bf16; latents and frames come out float32."""
  config = fixture("tiny")[0].replace(compute_dtype="bfloat16")
  state = taehv.init_taehv_stream(config, 1, 16, 24)
  assert {a.dtype for a in jax.tree.leaves(state)} == {jnp.dtype(jnp.bfloat16)}
  state, z = jax.eval_shape(functools.partial(taehv.taehv_encode_step, config, first=True),
                            fixture_params("tiny"), state, jnp.zeros((1, 4, 16, 24, 3)))
  assert z.dtype == jnp.float32 and {a.dtype for a in jax.tree.leaves(state)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("name", ["taew2_1", "p2"])  # tiny has taew2_1's geometry
def test_chunk_geometry(name):
  """The steps' shapes follow `encoder_frames` / `decoder_frames`; taew2_1's decoder and whole clips have Wan's
  frame counts, its stream encoder takes 4 frames a latent from the first chunk on."""
  config = fixture("p2")[0] if name == "p2" else taehv.TAEHVConfig.preset(name)
  s, t_in, t_out = config.spatial_factor, config.time_downscale, config.time_upscale
  params = jax.eval_shape(functools.partial(taehv.init_taehv_params, config), jax.random.key(0))
  state = taehv.init_taehv_stream(config, 1, 2 * s, 3 * s)
  for first in (True, False):
    frames = jax.ShapeDtypeStruct((1, config.encoder_frames(3, first), 2 * s, 3 * s, 3), jnp.float32)
    _, z = jax.eval_shape(functools.partial(taehv.taehv_encode_step, config, first=first), params, state, frames)
    assert z.shape == (1, 3, 2, 3, config.latent_channels)
    _, y = jax.eval_shape(functools.partial(taehv.taehv_decode_step, config, first=first), params, state, z)
    assert y.shape == (1, config.decoder_frames(3, first), 2 * s, 3 * s, 3)
  assert (config.encoder_frames(3, True), config.decoder_frames(3, True), config.decoder_frames(3, False)) == (
      3 * t_in, 3 * t_out - (t_out - 1), 3 * t_out)
  video = jax.ShapeDtypeStruct((1, 1 + 4 * 5, s, s, 3), jnp.float32)
  latents = jax.eval_shape(functools.partial(taehv.taehv_encode, config), params, video)
  assert latents.shape[1] == -(-video.shape[1] // t_in)  # the end padded up to whole groups
  frames = jax.eval_shape(functools.partial(taehv.taehv_decode, config), params, latents)
  assert frames.shape[1] == t_out * latents.shape[1] - (t_out - 1)
  if name == "taew2_1":
    wan = VAEConfig.preset("wan2.1-vae")
    assert (latents.shape[1], frames.shape[1]) == (6, 21)  # Wan: 1 + 4k frames ↔ 1 + k latents, both ways
    assert (config.spatial_factor, config.time_upscale) == (wan.spatial_factor, wan.temporal_factor)
    assert config.decoder_frames(3, True) == 1 + wan.temporal_factor * 2


def test_sizes_match_the_reference():
  """taew2_1's parameters have exactly the reference module's shapes, key for key (recorded from the reference's
  own `TAEHV()` in the fixture), and the stream holds 9 + 9 MemBlock memories."""
  config = taehv.TAEHVConfig.preset("taew2_1")
  published = {k: tuple(v) for k, v in json.loads(str(fixture("tiny")[1]["reference_taew2_1_shapes"])).items()}
  assert {r.source: r.source_shape for r in taehv_rules(config)} == published
  params = jax.eval_shape(functools.partial(taehv.init_taehv_params, config), jax.random.key(0))
  assert sum(a.size for a in jax.tree.leaves(params)) == sum(np.prod(v) for v in published.values())
  state = taehv.init_taehv_stream(config, 1, 480, 832)
  assert (len(state.encoder), len(state.decoder)) == (9, 9)
  assert state.encoder["block_0_0"].shape == (1, 1, 240, 416, 64)
  assert state.decoder["block_0_0"].shape == (1, 1, 60, 104, 256)
  assert state.decoder["block_2_2"].shape == (1, 1, 240, 416, 64)


def test_pixel_shuffles_match_torch():
  rng = np.random.default_rng(random.randrange(2**31))
  x = rng.standard_normal((2, 3, 6, 10, 5)).astype(np.float32)  # [B, T, H, W, C]
  nchw = torch.from_numpy(x).reshape(6, 6, 10, 5).permute(0, 3, 1, 2)
  want = torch.nn.functional.pixel_unshuffle(nchw, 2).permute(0, 2, 3, 1).reshape(2, 3, 3, 5, 20).numpy()
  np.testing.assert_array_equal(taehv._unshuffle(jnp.asarray(x), 2), want)
  np.testing.assert_array_equal(taehv._shuffle(jnp.asarray(want), 2), x)


def test_upsampled_conv_is_upsample_then_conv():
  """The decoder's phase-split conv equals torch's nearest 2× upsample then 3×3 conv (odd sizes, a bias)."""
  rng = np.random.default_rng(random.randrange(2**31))
  x, kernel, bias = (rng.standard_normal(shape).astype(np.float32) for shape in ((2, 5, 7, 3), (3, 3, 3, 4), (4,)))
  up = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=2, mode="nearest")
  dense = torch.nn.functional.conv2d(up, torch.from_numpy(kernel).permute(3, 2, 0, 1), torch.from_numpy(bias),
                                     padding=1).permute(0, 2, 3, 1).numpy()
  assert rel_err(taehv._conv_upsampled(jnp.asarray(x), kernel, bias, jnp.float32), dense) <= FP32_RTOL


def test_time_pool_and_grow_match_torch():
  """The reference's TPool / TGrow reshapes of [N·T, C, H, W] (frames side by side on channels, in order)."""
  rng = np.random.default_rng(random.randrange(2**31))
  x = rng.standard_normal((2, 4, 3, 5, 7)).astype(np.float32)  # [B, T, H, W, C]
  nchw = torch.from_numpy(x).reshape(8, 3, 5, 7).permute(0, 3, 1, 2)
  pooled = nchw.reshape(-1, 2 * 7, 3, 5).permute(0, 2, 3, 1).reshape(2, 2, 3, 5, 14).numpy()
  np.testing.assert_array_equal(taehv._pool_time(jnp.asarray(x), 2), pooled)
  grown = torch.from_numpy(pooled).reshape(4, 3, 5, 14).permute(0, 3, 1, 2).reshape(-1, 7, 3, 5)
  np.testing.assert_array_equal(taehv._grow_time(jnp.asarray(pooled), 2),
                                grown.permute(0, 2, 3, 1).reshape(2, 4, 3, 5, 7).numpy())


def test_bad_inputs_are_named():
  config, params, state = taehv.TAEHVConfig.preset("tiny"), fixture_params("tiny"), None
  state = taehv.init_taehv_stream(config, 1, 16, 24)
  with pytest.raises(ValueError, match="a chunk has a positive multiple of 4 frames .time_downscale., got 9"):
    taehv.taehv_encode_step(config, params, state, jnp.zeros((1, 9, 16, 24, 3)), first=True)
  with pytest.raises(ValueError, match=r"frames height and width must be multiples of 8, got 16×20"):
    taehv.taehv_encode_step(config, params, state, jnp.zeros((1, 4, 16, 20, 3)), first=True)
  with pytest.raises(ValueError, match=r"latents must be \[B, F ≥ 1, h, w, 16\], got shape \(1, 3, 2, 3, 12\)"):
    taehv.taehv_decode_step(config, params, state, jnp.zeros((1, 3, 2, 3, 12)), first=True)
  with pytest.raises(ValueError, match=r"video must be \[B, T ≥ 1, H, W, 3\], got shape \(1, 4, 16, 24\)"):
    taehv.taehv_encode(config, params, jnp.zeros((1, 4, 16, 24)))
  with pytest.raises(ValueError, match="the stream's height and width must be multiples of 8, got 12×24"):
    taehv.init_taehv_stream(config, 1, 12, 24)


def test_configs():
  config = taehv.TAEHVConfig.preset("taew2_1", compute_dtype="bfloat16")
  assert config.dtype == jnp.bfloat16 and taehv.TAEHVConfig.from_dict(config.to_dict()) == config
  assert (config.time_downscale, config.time_upscale, config.frames_to_trim) == (4, 4, 3)
  with pytest.raises(ValueError, match=r"unknown TAEHV preset 'nope'; valid presets: \['taew2_1', 'tiny'\]"):
    taehv.TAEHVConfig.preset("nope")
  with pytest.raises(ValueError, match=r"decoder_time_upscale needs one entry per stage \(3\), got \(True, True\)"):
    taehv.TAEHVConfig(decoder_time_upscale=(True, True))
  with pytest.raises(ValueError, match=r"decoder_widths needs 4 entries, got \(64, 64\)"):
    taehv.TAEHVConfig(decoder_widths=(64, 64))
  with pytest.raises(ValueError, match="sizes must be positive, got patch_size=0"):
    taehv.TAEHVConfig(patch_size=0)
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    taehv.TAEHVConfig(compute_dtype="int8")
