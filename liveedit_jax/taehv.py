"""TAEHV, the tiny video autoencoder of madebyollin/taehv (`taehv.py` @1f14a56), as Linen modules and pure
functions over a plain parameter pytree, channels last. `taew2_1` is its file for Wan 2.1's latent space.

Shapes: video [B, T, H, W, 3] in [−1, 1] (the project's range; TAEHV itself works in [0, 1], converted at the
entry and the exit); latents [B, F, H/s, W/s, z] with s = 8·patch_size, z = latent_channels.

Architecture (all 2-D convs act on each frame alone; time is mixed only by the three kinds of blocks below):
  - MemBlock: relu(conv3(relu(conv2(relu(conv1([x_t ‖ x_{t−1}]))))) + x_t), 3×3 convs; x_{t−1} is the block's
    input one frame earlier (zeros before the first frame): the only memory across time.
  - TPool(stride): concatenates `stride` consecutive frames on channels, then a 1×1 conv back to C (T → T/stride).
  - TGrow(stride): a 1×1 conv C → stride·C, whose channel groups become `stride` consecutive frames (T → stride·T).
  - Encoder: [pixel-unshuffle p] conv 3×3 → 64, relu, then 3 stages of {TPool, 3×3 stride-2 conv, 3 MemBlocks},
    conv 3×3 → z. Decoder: tanh(z/3)·3 (the reference's Clamp), conv 3×3, relu, then 3 stages of {3 MemBlocks,
    nearest 2× upsample, TGrow, 3×3 conv to the next width}, relu, conv 3×3 → 3p², [pixel-shuffle p], clamp to
    [0, 1]. `encoder_time_downscale` / `decoder_time_upscale` say which stages have stride 2 (taew2_1: the first
    two encoder stages pool, the last two decoder stages grow: 4× in time both ways).

Latent space. The latents are the Wan DiT's own latents, i.e. Wan's *normalised* latents (μ − mean) / std, the
space `liveedit_jax.vae.vae_encode` returns and `vae_decode` takes: TAEHV's README says it "encodes / decodes
exactly what diffusion models use" with no scale or shift, and its diffusers example swaps it in for
AutoencoderKLWan with latents_mean 0 and latents_std 1 (so the pipeline hands it the DiT's latents unchanged).
Encoders and decoders of the two autoencoders can therefore be mixed freely.

Frame/latent geometry (t = 4 for taew2_1), against the Wan VAE's 1 + 4(F − 1) frames ↔ F latents:
  - Encoder: every t consecutive frames give one latent, the first chunk included: a 3-latent chunk is 12 frames
    every time (Wan: 9, then 12). Latent i is computed from frames ≤ t·i + t − 1 where Wan's uses frames ≤ t·i:
    three frames of look-ahead. A whole clip is padded at its end with copies of its last frame up to a multiple of
    t (the reference's `encode_video`), so 1 + 4k frames still give 1 + k latents, as with Wan.
  - Decoder: every latent gives t frames and the stream's first t − 1 frames are dropped (the reference's
    `frames_to_trim`): F latents → t·F − (t − 1) frames for the first chunk, t·F after: 3 latents → 9 frames, then
    12, exactly Wan's decode, with latent i ending at frame t·i as in Wan.
  So a stream encoding with TAEHV reads 12 frames a chunk and writes 9 then 12: its output lags its input by
  t − 1 = 3 frames, and the last 3 frames read only feed look-ahead. Decoding with TAEHV after Wan's encoder
  keeps Wan's 9-then-12 in and out. `TAEHVConfig.encoder_frames` / `decoder_frames` give the counts.

Streaming. A chunk's frame count is a multiple of the total temporal stride, so every TPool sees whole groups
and keeps nothing; the state is each MemBlock's last input frame [B, 1, h, w, C] (9 in the encoder, 9 in the
decoder), zeros at the start, exactly the reference's empty memory. One chunk of any length runs all its frames
in parallel (the reference's `parallel=True`), so a stream of chunks equals one whole-clip call.

Speed: channels last; every conv batches all frames of a chunk; a decoder stage grows in time before it
upsamples (a 1×1 conv commutes with nearest upsampling: a quarter of the pixels), and its upsample + 3×3 conv runs
as one 2×2 conv to the four output phases (4 instead of 9 multiply-adds a pixel, no upsampled tensor; decode
-18 % on CPU).

Precision: convs take operands in `config.compute_dtype` and accumulate in float32; each layer rounds once, after
its bias, activation and residual, and activations and stream state are stored in the compute dtype. The input
clamp, the [−1, 1] ↔ [0, 1] maps, latents and the output clamp are float32. Against the float32 reference on
random weights at taew2_1's widths (scripts/taehv_reference.py parity): float32 2-3e-6, float16 0.9-1.3e-3,
bfloat16 1.0-1.4e-2 (the reference itself in bf16: 1.2-1.4e-2): bf16's 8 significant bits over ~25 stacked convs.
float16, the reference's own inference dtype, is the precise choice at the same tensor-core speed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from liveedit_jax import param_io
from liveedit_jax.config import PresetConfig
from liveedit_jax.layers import TORCH_DEFAULT_INIT, Dense, init_key

Params = dict[str, Any]
Cache = dict[str, jax.Array]

KIND = "taehv"  # param_io kind of a converted directory (python -m convert.taehv)
STAGES = 3  # resolution stages of the encoder and of the decoder
BLOCKS_PER_STAGE = 3  # MemBlocks per stage, in every published file


@dataclasses.dataclass(frozen=True, slots=True)
class TAEHVConfig(PresetConfig):
  """TAEHV hyper-parameters: the knobs the reference's `TAEHV.__init__` sets per published file."""

  LABEL: ClassVar[str] = "TAEHV"

  name: str = "taew2_1"
  latent_channels: int = 16
  patch_size: int = 1  # pixel-(un)shuffle factor at the input and output (2 for taew2_2 and taehv1_5)
  encoder_width: int = 64
  decoder_widths: tuple[int, ...] = (256, 128, 64, 64)  # the three stages, then the last conv's input
  encoder_time_downscale: tuple[bool, ...] = (True, True, False)  # per encoder stage: its TPool has stride 2
  decoder_time_upscale: tuple[bool, ...] = (False, True, True)  # per decoder stage: its TGrow has stride 2
  compute_dtype: str = "float32"  # conv dtype of activations and stream state; the clamps stay float32
  param_dtype: str = "float32"

  def __post_init__(self):
    for field in ("encoder_time_downscale", "decoder_time_upscale"):
      if len(getattr(self, field)) != STAGES:
        raise ValueError(f"{self.name}: {field} needs one entry per stage ({STAGES}), got {getattr(self, field)}")
    if len(self.decoder_widths) != STAGES + 1:
      raise ValueError(f"{self.name}: decoder_widths needs {STAGES + 1} entries, got {self.decoder_widths}")
    sizes = {"latent_channels": self.latent_channels, "patch_size": self.patch_size,
             "encoder_width": self.encoder_width, "decoder_widths": min(self.decoder_widths)}
    bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
    if bad:
      raise ValueError(f"{self.name}: sizes must be positive, got {', '.join(bad)}")
    self.check_dtypes()

  @property
  def spatial_factor(self) -> int:
    return 2 ** STAGES * self.patch_size

  @property
  def time_downscale(self) -> int:
    """Frames per latent at the encoder (4 for taew2_1)."""
    return 2 ** sum(self.encoder_time_downscale)

  @property
  def time_upscale(self) -> int:
    """Frames per latent at the decoder (4 for taew2_1)."""
    return 2 ** sum(self.decoder_time_upscale)

  @property
  def frames_to_trim(self) -> int:
    """Decoded frames dropped at the start of a stream, so that latent i ends at frame time_upscale·i."""
    return self.time_upscale - 1

  def encoder_frames(self, latents: int, first: bool) -> int:
    """Video frames an encode step takes for `latents` latents (the same for the first chunk: no frame is alone)."""
    del first
    return self.time_downscale * latents

  def decoder_frames(self, latents: int, first: bool) -> int:
    """Video frames a decode step gives for `latents` latents: the first chunk loses `frames_to_trim`."""
    return self.time_upscale * latents - (self.frames_to_trim if first else 0)

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.compute_dtype)


TAEHV_PRESETS: dict[str, TAEHVConfig] = {
    # taew2_1.pth / safetensors/taew2_1.safetensors: Wan 2.1 (and Wan 2.2 14B, Qwen Image) latents.
    "taew2_1": TAEHVConfig(),
    # Toy widths for tests, with taew2_1's geometry (z = 16, 8× space, 4× time), so it pairs with the tiny DiT.
    "tiny": TAEHVConfig(name="tiny", encoder_width=8, decoder_widths=(16, 12, 8, 6)),
}
TAEHVConfig.PRESETS = TAEHV_PRESETS


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, stride: int, dtype) -> jax.Array:
  """3×3 channels-last conv, zero padding 1 (torch's `padding=1`): x [N, H, W, C_in] → [N, H/stride, W/stride,
  C_out] float32, from operands in `dtype`; the bias is added in float32."""
  y = jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (stride, stride), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
  return y if bias is None else y + bias.astype(jnp.float32)


# Nearest 2× upsampling then a 3-tap conv, per output phase i ∈ {0, 1}: output row 2y + i reads upsampled rows
# 2y + i − 1 … 2y + i + 1, i.e. input rows (y − 1, y) for i = 0 and (y, y + 1) for i = 1, with the taps summed as
# these matrices say (rows: the 2 input rows, columns: the 3 taps).
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def _conv_upsampled(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
  """conv3×3(nearest 2× upsample of x), padding 1, without the upsampled tensor: x [N, H, W, C_in] → [N, 2H, 2W,
  C_out] float32. Each of the four output phases is a 2×2 conv of x; all four run as one 2×2 conv to 4·C_out
  channels over x padded by one, phase (i, j) reading its outputs at offset (i, j): 4 instead of 9 multiply-adds
  per output pixel and channel pair."""
  n, h, w, _ = x.shape
  c_out = kernel.shape[-1]
  phases = jnp.einsum("pay,qbx,yxio->abiopq", _PHASE_TAPS, _PHASE_TAPS, kernel.astype(jnp.float32))
  phases = phases.reshape(*phases.shape[:3], 4 * c_out)  # [2, 2, C_in, (C_out, i, j)]
  y = jax.lax.conv_general_dilated(x.astype(dtype), phases.astype(dtype), (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
  y = y.reshape(n, h + 1, w + 1, c_out, 2, 2)
  rows = [jnp.stack([y[:, i:i + h, j:j + w, :, i, j] for j in (0, 1)], axis=3) for i in (0, 1)]
  y = jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, c_out)  # [N, H, i, W, j, C] → interleaved
  return y if bias is None else y + bias.astype(jnp.float32)


class Conv(nn.Module):
  """A 3×3 conv applied to every frame: x [B, T, H, W, C_in] → [B, T, H/stride, W/stride, features], or, with
  `upsample`, applied to the nearest-2×-upsampled frames → [B, T, 2H, 2W, features].

  kernel [3, 3, C_in, features] (a torch Conv2d weight with its axes moved), bias [features] if `use_bias`.
  The result is rounded once, after the bias, to `out_dtype` (default `dtype`).
  """

  features: int
  stride: int = 1
  use_bias: bool = True
  upsample: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  out_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    kernel = self.param("kernel", TORCH_DEFAULT_INIT, (3, 3, c, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype) \
        if self.use_bias else None
    x = x.reshape(b * t, h, w, c)
    y = _conv_upsampled(x, kernel, bias, self.dtype) if self.upsample else \
        _conv(x, kernel, bias, self.stride, self.dtype)
    return y.reshape(b, t, *y.shape[1:]).astype(self.out_dtype or self.dtype)


def _pointwise(features: int, dtype, param_dtype, name: str) -> Dense:
  """A bias-free 1×1 conv (TPool, TGrow): Dense {kernel [C_in, C_out]}."""
  return Dense(features, dtype, param_dtype, use_bias=False, kernel_init=TORCH_DEFAULT_INIT, name=name)


class MemBlock(nn.Module):
  """x [B, T, H, W, C] → same: each frame's convs see it and the block's previous input frame.

  memory: the block's last input frame of the previous chunk [B, 1, H, W, C] (None: zeros, a stream start).
  Returns (y, the last input frame, the next chunk's memory).
  """

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    b, _, h, w, c = x.shape
    dt, pd = self.dtype, self.param_dtype
    x = x.astype(dt)
    if memory is None:
      memory = jnp.zeros((b, 1, h, w, c), dt)
    past = jnp.concatenate([memory.astype(dt), x[:, :-1]], axis=1)
    y = jax.nn.relu(Conv(c, dtype=dt, param_dtype=pd, name="conv1")(jnp.concatenate([x, past], axis=-1)))
    y = jax.nn.relu(Conv(c, dtype=dt, param_dtype=pd, name="conv2")(y))
    # The residual sum is taken in float32 and rounded once.
    y = Conv(c, dtype=dt, param_dtype=pd, out_dtype=jnp.float32, name="conv3")(y)
    return jax.nn.relu(y + x.astype(jnp.float32)).astype(dt), x[:, -1:]


def _pool_time(x: jax.Array, stride: int) -> jax.Array:
  """[B, T, H, W, C] → [B, T/stride, H, W, stride·C]: each group of frames side by side on channels, in order."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // stride, stride, h, w, c).transpose(0, 1, 3, 4, 2, 5)
  return x.reshape(b, t // stride, h, w, stride * c)


def _grow_time(x: jax.Array, stride: int) -> jax.Array:
  """[B, T, H, W, stride·C] → [B, stride·T, H, W, C]: channel group k becomes the k-th frame of its group."""
  b, t, h, w, sc = x.shape
  x = x.reshape(b, t, h, w, stride, sc // stride).transpose(0, 1, 4, 2, 3, 5)
  return x.reshape(b, stride * t, h, w, sc // stride)


def _unshuffle(x: jax.Array, p: int) -> jax.Array:
  """torch's pixel_unshuffle, channels last: [..., H, W, C] → [..., H/p, W/p, C·p²], channel (c, i, j)."""
  if p == 1:
    return x
  *lead, h, w, c = x.shape
  x = x.reshape(*lead, h // p, p, w // p, p, c)
  n = len(lead)
  x = jnp.moveaxis(x, (n + 1, n + 3), (n + 3, n + 4))  # [..., H/p, W/p, C, i, j]
  return x.reshape(*lead, h // p, w // p, c * p * p)


def _shuffle(x: jax.Array, p: int) -> jax.Array:
  """torch's pixel_shuffle, channels last: [..., H, W, C·p²] → [..., H·p, W·p, C], the inverse of _unshuffle."""
  if p == 1:
    return x
  *lead, h, w, cpp = x.shape
  n = len(lead)
  x = x.reshape(*lead, h, w, cpp // (p * p), p, p)
  x = jnp.moveaxis(x, (n + 3, n + 4), (n + 1, n + 3))  # [..., H, i, W, j, C]
  return x.reshape(*lead, h * p, w * p, cpp // (p * p))


def _run_blocks(dtype, param_dtype, prefix: str, x: jax.Array, cache: Cache | None, new_cache: Cache) -> jax.Array:
  """One stage's MemBlocks `{prefix}_j` (created in the calling compact module), each memory read from `cache`
  and written to `new_cache` under the block's name."""
  for j in range(BLOCKS_PER_STAGE):
    name = f"{prefix}_{j}"
    x, new_cache[name] = MemBlock(dtype, param_dtype, name=name)(x, None if cache is None else cache[name])
  return x


class Encoder(nn.Module):
  """frames [B, T, H, W, 3] in [0, 1] → latents [B, T/time_downscale, H/s, W/s, z] float32, with the MemBlocks'
  memories. T must be a multiple of time_downscale."""

  config: TAEHVConfig

  @nn.compact
  def __call__(self, x: jax.Array, cache: Cache | None) -> tuple[jax.Array, Cache]:
    cfg = self.config
    dt, pd, width = cfg.dtype, jnp.dtype(cfg.param_dtype), cfg.encoder_width
    new_cache: Cache = {}
    x = jax.nn.relu(Conv(width, dtype=dt, param_dtype=pd, name="conv_in")(_unshuffle(x, cfg.patch_size)))
    for s in range(STAGES):
      x = _pointwise(width, dt, pd, f"pool_{s}")(_pool_time(x, 2 if cfg.encoder_time_downscale[s] else 1))
      x = Conv(width, stride=2, use_bias=False, dtype=dt, param_dtype=pd, name=f"down_{s}")(x)
      x = _run_blocks(dt, pd, f"block_{s}", x, cache, new_cache)
    return Conv(cfg.latent_channels, dtype=dt, param_dtype=pd, out_dtype=jnp.float32, name="conv_out")(x), new_cache


class Decoder(nn.Module):
  """latents [B, F, h, w, z] → frames [B, time_upscale·F, h·s, w·s, 3] before the output clamp (float32, [0, 1]
  scale; nothing trimmed), with the MemBlocks' memories."""

  config: TAEHVConfig

  @nn.compact
  def __call__(self, z: jax.Array, cache: Cache | None) -> tuple[jax.Array, Cache]:
    cfg = self.config
    dt, pd, widths = cfg.dtype, jnp.dtype(cfg.param_dtype), cfg.decoder_widths
    new_cache: Cache = {}
    z = jnp.tanh(z.astype(jnp.float32) / 3) * 3
    x = jax.nn.relu(Conv(widths[0], dtype=dt, param_dtype=pd, name="conv_in")(z))
    for s in range(STAGES):
      x = _run_blocks(dt, pd, f"block_{s}", x, cache, new_cache)
      # The reference upsamples, then grows; growing first is the same arithmetic on a quarter of the pixels.
      stride = 2 if cfg.decoder_time_upscale[s] else 1
      x = _grow_time(_pointwise(stride * widths[s], dt, pd, f"grow_{s}")(x), stride)
      x = Conv(widths[s + 1], use_bias=False, upsample=True, dtype=dt, param_dtype=pd, name=f"conv_{s}")(x)
    x = Conv(3 * cfg.patch_size ** 2, dtype=dt, param_dtype=pd, out_dtype=jnp.float32, name="conv_out")(jax.nn.relu(x))
    return _shuffle(x, cfg.patch_size), new_cache


@flax.struct.dataclass
class TAEHVStreamState:
  """The MemBlock memories of one stream, by block name (as in the params): each the block's last input frame
  [B, 1, h, w, C] in the compute dtype. taew2_1 at 480×832: encoder 3 × {240×416, 120×208, 60×104} × 64 channels,
  decoder 3 × {60×104 × 256, 120×208 × 128, 240×416 × 64}."""

  encoder: Cache
  decoder: Cache


def init_taehv_params(config: TAEHVConfig, key: jax.Array) -> Params:
  """Fresh parameters (torch's default conv init, zero biases). Works under `jax.eval_shape`."""
  cfg = config
  k_enc, k_dec = jax.random.split(init_key(key))
  s = cfg.spatial_factor
  frames = jnp.zeros((1, cfg.time_downscale, s, s, 3))
  latents = jnp.zeros((1, 1, 1, 1, cfg.latent_channels))
  return {"encoder": Encoder(cfg).init(k_enc, frames, None)["params"],
          "decoder": Decoder(cfg).init(k_dec, latents, None)["params"]}


def _check_size(config: TAEHVConfig, height: int, width: int, what: str) -> None:
  s = config.spatial_factor
  if height % s or width % s:
    raise ValueError(f"{what} height and width must be multiples of {s}, got {height}×{width}")


def _check_video(config: TAEHVConfig, video: jax.Array, what: str) -> None:
  if video.ndim != 5 or video.shape[-1] != 3 or video.shape[1] == 0:
    raise ValueError(f"{what} must be [B, T ≥ 1, H, W, 3], got shape {video.shape}")
  _check_size(config, video.shape[2], video.shape[3], what)


def _check_latents(config: TAEHVConfig, latents: jax.Array) -> None:
  z = config.latent_channels
  if latents.ndim != 5 or latents.shape[-1] != z or latents.shape[1] == 0:
    raise ValueError(f"latents must be [B, F ≥ 1, h, w, {z}], got shape {latents.shape}")


def _encode_chunk(config: TAEHVConfig, params: Params, cache: Cache | None,
                  frames: jax.Array) -> tuple[Cache, jax.Array]:
  """frames [B, T, H, W, 3] in [−1, 1] → (memories, latents [B, T/t, H/s, W/s, z] float32); cache None = zeros."""
  x = (frames.astype(jnp.float32) + 1) / 2
  latents, cache = Encoder(config).apply({"params": params["encoder"]}, x, cache)
  return cache, latents.astype(jnp.float32)


def _decode_chunk(config: TAEHVConfig, params: Params, cache: Cache | None, latents: jax.Array,
                  first: bool) -> tuple[Cache, jax.Array]:
  """latents [B, F, h, w, z] → (memories, frames [B, t·F (− trim if first), H, W, 3] float32 in [−1, 1])."""
  x, cache = Decoder(config).apply({"params": params["decoder"]}, latents, cache)
  if first:
    x = x[:, config.frames_to_trim:]
  return cache, jnp.clip(x, 0.0, 1.0) * 2 - 1


def init_taehv_stream(config: TAEHVConfig, batch: int, height: int, width: int) -> TAEHVStreamState:
  """Zero memories for a stream of `batch` videos of height × width pixels (multiples of spatial_factor)."""
  cfg = config
  _check_size(cfg, height, width, "the stream's")
  s = cfg.spatial_factor
  params = jax.eval_shape(functools.partial(init_taehv_params, cfg), jax.random.key(0))
  frames = jax.ShapeDtypeStruct((batch, cfg.time_downscale, height, width, 3), jnp.float32)
  latents = jax.ShapeDtypeStruct((batch, 1, height // s, width // s, cfg.latent_channels), jnp.float32)
  encoder, _ = jax.eval_shape(lambda p, x: _encode_chunk(cfg, p, None, x), params, frames)
  decoder, _ = jax.eval_shape(lambda p, z: _decode_chunk(cfg, p, None, z, False), params, latents)
  zeros = functools.partial(jax.tree.map, lambda a: jnp.zeros(a.shape, a.dtype))
  return TAEHVStreamState(encoder=zeros(encoder), decoder=zeros(decoder))


def taehv_encode_step(config: TAEHVConfig, params: Params, state: TAEHVStreamState, frames: jax.Array, *,
                      first: bool) -> tuple[TAEHVStreamState, jax.Array]:
  """Encodes the next chunk of a stream: frames [B, t·n, H, W, 3] in [−1, 1] → latents [B, n, H/s, W/s, z]
  float32 (Wan-normalised), t = time_downscale (12 frames ↔ 3 latents for taew2_1, the first chunk included).

  first: static; the chunk starts the stream (the incoming memories are ignored, as if zero). Only
    `state.encoder` changes. Jit once with `first` static and the state donated, as `vae_encode_step`.
  """
  _check_video(config, frames, "frames")
  t = config.time_downscale
  if frames.shape[1] % t:
    raise ValueError(f"a chunk has a positive multiple of {t} frames (time_downscale), got {frames.shape[1]}")
  cache, latents = _encode_chunk(config, params, None if first else state.encoder, frames)
  return state.replace(encoder=cache), latents


def taehv_decode_step(config: TAEHVConfig, params: Params, state: TAEHVStreamState, latents: jax.Array, *,
                      first: bool) -> tuple[TAEHVStreamState, jax.Array]:
  """Decodes the next chunk of a stream: latents [B, F, h, w, z] (Wan-normalised) → frames [B, T, h·s, w·s, 3] in
  [−1, 1], T = `config.decoder_frames(F, first)` (3 latents → 9 frames first, then 12, for taew2_1).

  first: static; the chunk starts the stream (the incoming memories are ignored, the first frames_to_trim frames
    dropped). Only `state.decoder` changes. Jit as `taehv_encode_step`.
  """
  _check_latents(config, latents)
  cache, frames = _decode_chunk(config, params, None if first else state.decoder, latents, first)
  return state.replace(decoder=cache), frames


def taehv_encode(config: TAEHVConfig, params: Params, video: jax.Array) -> jax.Array:
  """The reference's `encode_video`: video [B, T, H, W, 3] in [−1, 1] → latents [B, ⌈T/t⌉, H/s, W/s, z] float32;
  the end is padded with copies of the last frame up to a multiple of t (1 + 4k frames → 1 + k latents)."""
  _check_video(config, video, "video")
  t = config.time_downscale
  pad = -video.shape[1] % t
  if pad:
    video = jnp.concatenate([video, jnp.repeat(video[:, -1:], pad, axis=1)], axis=1)
  return _encode_chunk(config, params, None, video)[1]


def taehv_decode(config: TAEHVConfig, params: Params, latents: jax.Array) -> jax.Array:
  """The reference's `decode_video`: latents [B, F, h, w, z] → video [B, t·F − (t − 1), h·s, w·s, 3] float32 in
  [−1, 1] (F latents → 1 + 4(F − 1) frames for taew2_1, as Wan's decode)."""
  _check_latents(config, latents)
  return _decode_chunk(config, params, None, latents, True)[1]


def load_taehv(path: str | os.PathLike, compute_dtype: str | None = None) -> tuple[TAEHVConfig, Params]:
  """A converted TAEHV directory (`python -m convert.taehv`) → (config, params on the default device).

  compute_dtype: overrides the stored config's compute dtype (e.g. "bfloat16" on GPU).
  """
  config = TAEHVConfig.from_dict(param_io.read_config(path, KIND))
  if compute_dtype is not None:
    config = config.replace(compute_dtype=compute_dtype)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(functools.partial(init_taehv_params, config), jax.random.key(0))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
  return config, param_io.load_params(path, abstract)
