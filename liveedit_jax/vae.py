"""The Wan2.1 VAE as Linen modules and pure functions over a plain parameter pytree, channels last.

Facts follow Wan2.1's `wan/modules/vae.py`: causal 3-D convolutions, 8× spatial and 4× temporal
compression with the first frame encoded alone (T = 1 + 4k frames ↔ 1 + k latents), z = 16, latents normalised
per channel with Wan's mean/std.

Shapes: video [B, T, H, W, 3] in [−1, 1]; latents [B, F, H/8, W/8, z] (F = 1 + (T − 1)/4).

Parameters are a dict: encoder {conv1, downsamples_i, middle_0..2, head_norm, head_conv}, quant_conv,
post_quant_conv, decoder {conv1, middle_0..2, upsamples_i, head_norm, head_conv}. Wan's checkpoint names the two
top-level pointwise convs conv1 / conv2 and numbers its Sequentials (convert/wan_vae.py has the full map).
  - 3-D convs: {kernel [kt, kh, kw, C_in, C_out], bias}; the per-frame 2-D convs of the resamplers: {kernel
    [kh, kw, C_in, C_out], bias}; pointwise convs (shortcuts, attention, quant convs) are `Dense` {kernel
    [C_in, C_out], bias}; norms {scale [C]}.

Streaming (§6.5). Every 3-tap causal conv reads the last CACHE_T = 2 frames of its input from the previous chunk
instead of zero padding; each temporal downsampler reads the last frame of its input. `VAEStreamState` holds these
buffers as a pytree of fixed shapes, zero-initialised, so chunk 2, 3, … run one compiled step. A zero buffer is
exactly Wan's "no cache yet" (zero padding), so only the resamplers treat the first chunk specially, through the
static `first` flag: its first frame skips the temporal conv (Wan's first encoder call, and the 'Rep' marker of
the decoder's temporal upsample). Because every layer is causal in time, a chunk of many frames gives the same
result as Wan's frame-group-by-frame-group loop.

Precision: convs and matmuls run in `config.compute_dtype` (bf16 on GPU) and activations and stream buffers are
stored in it; norms, softmax, latent (de)normalisation and the final clamp run in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, ClassVar, Literal

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from liveedit_jax import param_io
from liveedit_jax.config import PresetConfig
from liveedit_jax.layers import TORCH_DEFAULT_INIT, Dense, init_key

Params = dict[str, Any]
Cache = dict[str, Any]
ResampleMode = Literal["downsample2d", "downsample3d", "upsample2d", "upsample3d"]

CACHE_T = 2  # past frames a 3-tap causal conv reads from the previous chunk (§6.5)

# Per-channel latent statistics of Wan2.1's VAE (§6.6): z = (μ − mean) / std.
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True, slots=True)
class VAEConfig(PresetConfig):
  """Wan2.1 VAE hyper-parameters (§6.1).

  Encoder widths are dim·[1, *dim_mult]; each stage but the last halves H and W, and also T where
  `temporal_downsample` says so. The decoder mirrors the encoder, halving the width at each upsample.
  """

  LABEL: ClassVar[str] = "VAE"

  name: str = "wan2.1-vae"
  dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)  # per downsampling stage; the decoder reverses it
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  compute_dtype: str = "float32"  # conv / matmul and activation dtype; norms and softmax stay float32
  param_dtype: str = "float32"

  def __post_init__(self):
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"{self.name}: temporal_downsample needs one entry per downsampling stage "
                       f"({len(self.dim_mult) - 1}), got {len(self.temporal_downsample)}")
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise ValueError(f"{self.name}: latents_mean and latents_std need z_dim={self.z_dim} entries, got "
                       f"{len(self.latents_mean)} and {len(self.latents_std)}")
    if min(self.latents_std) <= 0:
      raise ValueError(f"{self.name}: latents_std must be positive, got {self.latents_std}")
    odd = [self.dim * m for m in self.dim_mult if self.dim * m % 2]
    if odd:
      raise ValueError(f"{self.name}: the decoder halves every stage width, so dim·dim_mult must be even; got {odd}")
    self.check_dtypes()

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    """Frames per latent after the first (4 for Wan)."""
    return 2 ** sum(self.temporal_downsample)

  @property
  def encoder_widths(self) -> list[int]:
    return [self.dim * m for m in (1, *self.dim_mult)]

  @property
  def decoder_widths(self) -> list[int]:
    return [self.dim * m for m in (self.dim_mult[-1], *reversed(self.dim_mult))]

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.compute_dtype)

  @classmethod
  def from_diffusers(cls, fields: dict[str, Any]) -> "VAEConfig":
    """A diffusers `AutoencoderKLWan` config.json → VAEConfig; raises on variants this module does not build
    (Wan2.2's residual VAE, patchified input, attention outside the middle, a separate decoder width)."""
    supported = {"is_residual": False, "patch_size": None, "attn_scales": [], "in_channels": 3, "out_channels": 3}
    bad = [f"{k}={fields[k]!r} (supported: {v!r})" for k, v in supported.items() if fields.get(k, v) != v]
    if fields.get("decoder_base_dim") not in (None, fields["base_dim"]):
      bad.append(f"decoder_base_dim={fields['decoder_base_dim']!r} (supported: base_dim or None)")
    if bad:
      raise ValueError(f"unsupported AutoencoderKLWan config: {', '.join(bad)}")
    return cls(name="AutoencoderKLWan", dim=fields["base_dim"], z_dim=fields["z_dim"],
               dim_mult=tuple(fields["dim_mult"]), num_res_blocks=fields["num_res_blocks"],
               temporal_downsample=tuple(fields["temperal_downsample"]),
               latents_mean=tuple(fields["latents_mean"]), latents_std=tuple(fields["latents_std"]))


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.1-vae": VAEConfig(),
    # Every component at toy widths, for tests: shortcuts in both directions, 2-D and 3-D resamplers, attention.
    "tiny": VAEConfig(name="tiny", dim=8, dim_mult=(1, 2, 3, 3)),
    # The default model's autoencoder (train/autoencoder.py): Wan's architecture at width 16 with one block a
    # stage and two downsampling stages, so 4× space and 4× time. Its latent statistics are measured after
    # training and stored in the trained directory's config; the preset's identity statistics are the untrained ones.
    "synth": VAEConfig(name="synth", dim=16, dim_mult=(1, 2, 4), num_res_blocks=1, temporal_downsample=(True, True),
                       latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16),
}
VAEConfig.PRESETS = VAE_PRESETS


def _conv_params(module: nn.Module, kernel_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """A conv's {kernel [*window, C_in, C_out], bias [C_out]} parameters, created in `module`."""
  kernel = module.param("kernel", TORCH_DEFAULT_INIT, kernel_shape, module.param_dtype)
  return kernel, module.param("bias", nn.initializers.zeros_init(), kernel_shape[-1:], module.param_dtype)


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, strides, padding, dtype) -> jax.Array:
  """Channels-last convolution in `dtype`: x [N, *spatial, C_in], kernel [*window, C_in, C_out] → `dtype`.

  The result is rounded to `dtype`, as in flax.linen.Conv (cuDNN accumulates bf16 convolutions in float32
  internally); the bias is added in float32.
  """
  axes = "DHW"[-(kernel.ndim - 2):]
  y = jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), strides, padding,
                                   dimension_numbers=(f"N{axes}C", f"{axes}IO", f"N{axes}C"))
  return (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


class Conv(nn.Module):
  """A plain convolution over the trailing spatial axes: x [N, *spatial, C_in] → [N, *spatial', features].

  kernel [*kernel_size, C_in, features] (a torch ConvNd weight with its axes moved); `padding` is explicit, one
  (low, high) pair per spatial axis, as Wan pads by hand.
  """

  features: int
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    kernel, bias = _conv_params(self, (*self.kernel_size, x.shape[-1], self.features))
    return _conv(x, kernel, bias, self.strides, padding, self.dtype)


class CausalConv3d(nn.Module):
  """Wan's CausalConv3d with its stream buffer: x [B, T, H, W, C_in] → [B, T, H, W, features].

  Time is padded with the kt − 1 frames of `cache` ([B, kt − 1, H, W, C_in]; None means zeros, i.e. Wan's plain
  causal zero padding), space symmetrically. Returns (y, the last kt − 1 frames of [cache ; x]).
  """

  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cache: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    kt, kh, kw = self.kernel_size
    b, _, h, w, c = x.shape
    x = x.astype(self.dtype)
    if cache is None:
      cache = jnp.zeros((b, kt - 1, h, w, c), self.dtype)
    x = jnp.concatenate([cache.astype(self.dtype), x], axis=1)
    kernel, bias = _conv_params(self, (kt, kh, kw, c, self.features))
    y = _conv(x, kernel, bias, (1, 1, 1), ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)), self.dtype)
    return y, x[:, x.shape[1] - (kt - 1):]


class ChannelRMSNorm(nn.Module):
  """Wan's VAE `RMS_norm`: x / max(‖x‖₂ over channels, 1e-12) · √C · scale, in float32; float32 output."""

  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones_init(), (c,), self.param_dtype)
    x = x.astype(jnp.float32)
    # 1 / max(‖x‖, 1e-12) = rsqrt(max(‖x‖², 1e-24)), torch's F.normalize clamp.
    inv_norm = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))
    return x * inv_norm * (c ** 0.5) * scale.astype(jnp.float32)


class ResidualBlock(nn.Module):
  """x [B, T, H, W, C_in] → [B, T, H, W, features]: (norm → SiLU → conv) twice, plus a pointwise shortcut if the
  width changes. cache: {"conv1", "conv2"} buffers or None."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cache: Cache | None) -> tuple[jax.Array, Cache]:
    dt, pd = self.dtype, self.param_dtype
    shortcut = x if x.shape[-1] == self.features else Dense(self.features, dt, pd, name="shortcut")(x)
    h = jax.nn.silu(ChannelRMSNorm(pd, name="norm1")(x)).astype(dt)
    h, cache1 = CausalConv3d(self.features, dtype=dt, param_dtype=pd, name="conv1")(h, _slot(cache, "conv1"))
    h = jax.nn.silu(ChannelRMSNorm(pd, name="norm2")(h)).astype(dt)
    h, cache2 = CausalConv3d(self.features, dtype=dt, param_dtype=pd, name="conv2")(h, _slot(cache, "conv2"))
    return h + shortcut.astype(dt), {"conv1": cache1, "conv2": cache2}


class AttentionBlock(nn.Module):
  """Single-head self-attention over the h·w positions of each frame, plus the identity: [B, T, H, W, C] → same.

  The pointwise qkv conv gives q, k, v in that channel order; scale 1/√C. Logits and softmax in float32.
  """

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    dt, pd = self.dtype, self.param_dtype
    u = ChannelRMSNorm(pd, name="norm")(x).astype(dt).reshape(b * t, h * w, c)
    q, k, v = jnp.split(Dense(3 * c, dt, pd, kernel_init=TORCH_DEFAULT_INIT, name="to_qkv")(u), 3, axis=-1)
    logits = jnp.einsum("btc,bsc->bts", q, k, preferred_element_type=jnp.float32) * c ** -0.5
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    o = jnp.einsum("bts,bsc->btc", probs, v, preferred_element_type=jnp.float32).astype(dt)
    o = Dense(c, dt, pd, kernel_init=TORCH_DEFAULT_INIT, name="proj")(o)
    return x.astype(dt) + o.reshape(x.shape)


class Resample(nn.Module):
  """Wan's `Resample` (§6.2) on x [B, T, H, W, C].

  downsample2d: [B, T, H/2, W/2, C]. downsample3d: also T → T/2 (later chunks) or 1 + (T − 1)/2 (first chunk).
  upsample2d: [B, T, 2H, 2W, C/2]. upsample3d: also T → 2T (later chunks) or 1 + 2(T − 1) (first chunk).
  cache: the temporal conv's buffer ({"time_conv": ...}) for the 3-D modes, None otherwise.
  first: this chunk starts the stream; its first frame skips the temporal conv (§6.5).
  """

  features: int
  mode: ResampleMode
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cache: Cache | None, first: bool) -> tuple[jax.Array, Cache | None]:
    dt, pd = self.dtype, self.param_dtype
    new_cache = None
    if self.mode == "upsample3d":
      x, new_cache = self._temporal_upsample(x, cache, first)
    b, t, h, w, c = x.shape
    frames = x.reshape(b * t, h, w, c)
    if self.mode in ("upsample2d", "upsample3d"):
      # Nearest 2× (Wan's 'nearest-exact'; Self-Forcing's 'nearest' is the same for a factor 2). Wan upsamples in
      # float32, but a copy of values is exact in any dtype.
      frames = jnp.repeat(jnp.repeat(frames, 2, axis=1), 2, axis=2)
      frames = Conv(self.features // 2, (3, 3), (1, 1), dt, pd, name="conv")(frames, ((1, 1), (1, 1)))
    else:
      # Zero pad right and bottom by one, then a strided 3×3 conv.
      frames = Conv(self.features, (3, 3), (2, 2), dt, pd, name="conv")(frames, ((0, 1), (0, 1)))
    x = frames.reshape(b, t, *frames.shape[1:])
    if self.mode == "downsample3d":
      x, new_cache = self._temporal_downsample(x, cache, first)
    return x, new_cache

  def _temporal_upsample(self, x: jax.Array, cache: Cache | None, first: bool) -> tuple[jax.Array, Cache]:
    """Doubles T with a causal (3, 1, 1) conv to 2C channels: output frame 2τ takes the first C, 2τ+1 the rest."""
    b, _, h, w, c = x.shape
    head, rest = (x[:, :1], x[:, 1:]) if first else (x[:, :0], x)
    conv = CausalConv3d(2 * c, (3, 1, 1), self.dtype, self.param_dtype, name="time_conv")
    if rest.shape[1] == 0:
      # A first chunk of one frame: Wan stores 'Rep'; the next chunk's conv sees zero padding.
      return head.astype(self.dtype), {"time_conv": jnp.zeros((b, CACHE_T, h, w, c), self.dtype)}
    y, buffer = conv(rest, _slot(cache, "time_conv"))
    t = y.shape[1]
    y = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
    return jnp.concatenate([head.astype(self.dtype), y], axis=1), {"time_conv": buffer}

  def _temporal_downsample(self, x: jax.Array, cache: Cache | None, first: bool) -> tuple[jax.Array, Cache]:
    """Halves T with a (3, 1, 1) stride-2 conv over [previous chunk's last frame ; x]; the first chunk's first
    frame passes unchanged and is the previous frame of the next."""
    conv = Conv(self.features, (3, 1, 1), (2, 1, 1), self.dtype, self.param_dtype, name="time_conv")
    valid = ((0, 0), (0, 0), (0, 0))
    if first:
      parts = [x[:, :1]]
      if x.shape[1] > 1:
        parts.append(conv(x, valid))
      y = jnp.concatenate(parts, axis=1)
    else:
      y = conv(jnp.concatenate([cache["time_conv"].astype(self.dtype), x], axis=1), valid)
    return y, {"time_conv": x[:, -1:]}


def _slot(cache: Cache | None, name: str) -> Any:
  """The buffers of one layer; None for a stream start and for layers that keep none (2-D resamplers)."""
  return None if cache is None else cache.get(name)


def _run_layers(layers, prefix: str, x: jax.Array, cache: Cache | None, first: bool, new_cache: Cache):
  """Runs a list of ResidualBlock / Resample layers, writing each buffer to new_cache[f"{prefix}_{i}"]."""
  for i, layer in enumerate(layers):
    name = f"{prefix}_{i}"
    if isinstance(layer, Resample):
      x, layer_cache = layer(x, _slot(cache, name), first)
    else:
      x, layer_cache = layer(x, _slot(cache, name))
    if layer_cache is not None:
      new_cache[name] = layer_cache
  return x


def _middle(config: VAEConfig, width: int) -> list[nn.Module]:
  dt, pd = config.dtype, jnp.dtype(config.param_dtype)
  return [ResidualBlock(width, dt, pd), AttentionBlock(dt, pd), ResidualBlock(width, dt, pd)]


def _run_middle(middle, x: jax.Array, cache: Cache | None, new_cache: Cache) -> jax.Array:
  x, new_cache["middle_0"] = middle[0](x, _slot(cache, "middle_0"))
  x = middle[1](x)
  x, new_cache["middle_2"] = middle[2](x, _slot(cache, "middle_2"))
  return x


class Encoder(nn.Module):
  """frames [B, T, H, W, 3] → [B, F, H/8, W/8, 2z] (μ ‖ log σ², before the quant conv), with its stream buffers.

  A first chunk has T = 1 + 4(F − 1) frames, a later one T = 4F.
  """

  config: VAEConfig

  def setup(self):
    cfg = self.config
    dt, pd = cfg.dtype, jnp.dtype(cfg.param_dtype)
    widths = cfg.encoder_widths
    self.conv1 = CausalConv3d(widths[0], dtype=dt, param_dtype=pd)
    layers = []
    for stage, width in enumerate(widths[1:]):
      layers += [ResidualBlock(width, dt, pd) for _ in range(cfg.num_res_blocks)]
      if stage < len(cfg.dim_mult) - 1:
        layers.append(Resample(width, "downsample3d" if cfg.temporal_downsample[stage] else "downsample2d", dt, pd))
    self.downsamples = layers
    self.middle = _middle(cfg, widths[-1])
    self.head_norm = ChannelRMSNorm(pd)
    self.head_conv = CausalConv3d(2 * cfg.z_dim, dtype=dt, param_dtype=pd)

  def __call__(self, x: jax.Array, cache: Cache | None, first: bool) -> tuple[jax.Array, Cache]:
    new_cache: Cache = {}
    x, new_cache["conv1"] = self.conv1(x, _slot(cache, "conv1"))
    x = _run_layers(self.downsamples, "downsamples", x, cache, first, new_cache)
    x = _run_middle(self.middle, x, cache, new_cache)
    x = jax.nn.silu(self.head_norm(x)).astype(self.config.dtype)
    x, new_cache["head_conv"] = self.head_conv(x, _slot(cache, "head_conv"))
    return x, new_cache


class Decoder(nn.Module):
  """latents [B, F, h, w, z] (after the post-quant conv) → frames [B, T, 8h, 8w, 3] (not clamped), with its
  stream buffers. A first chunk gives T = 1 + 4(F − 1) frames, a later one T = 4F."""

  config: VAEConfig

  def setup(self):
    cfg = self.config
    dt, pd = cfg.dtype, jnp.dtype(cfg.param_dtype)
    widths = cfg.decoder_widths
    temporal_upsample = tuple(reversed(cfg.temporal_downsample))
    self.conv1 = CausalConv3d(widths[0], dtype=dt, param_dtype=pd)
    self.middle = _middle(cfg, widths[0])
    layers = []
    for stage, width in enumerate(widths[1:]):
      # Input widths follow from the previous stage (its upsample halves it), so only outputs are listed.
      layers += [ResidualBlock(width, dt, pd) for _ in range(cfg.num_res_blocks + 1)]
      if stage < len(cfg.dim_mult) - 1:
        layers.append(Resample(width, "upsample3d" if temporal_upsample[stage] else "upsample2d", dt, pd))
    self.upsamples = layers
    self.head_norm = ChannelRMSNorm(pd)
    self.head_conv = CausalConv3d(3, dtype=dt, param_dtype=pd)

  def __call__(self, x: jax.Array, cache: Cache | None, first: bool) -> tuple[jax.Array, Cache]:
    new_cache: Cache = {}
    x, new_cache["conv1"] = self.conv1(x, _slot(cache, "conv1"))
    x = _run_middle(self.middle, x, cache, new_cache)
    x = _run_layers(self.upsamples, "upsamples", x, cache, first, new_cache)
    x = jax.nn.silu(self.head_norm(x)).astype(self.config.dtype)
    x, new_cache["head_conv"] = self.head_conv(x, _slot(cache, "head_conv"))
    return x, new_cache


@flax.struct.dataclass
class VAEStreamState:
  """The causal buffers of one stream, by module path (as in the params); every leaf in the compute dtype.

  Each 3-tap causal conv: its last CACHE_T input frames [B, 2, h, w, C_in]; each temporal downsampler: its last
  input frame [B, 1, h, w, C]. Wan2.1 has 24 encoder and 32 decoder buffers.
  """

  encoder: Cache
  decoder: Cache


def init_vae_params(config: VAEConfig, key: jax.Array) -> Params:
  """Fresh parameters (torch's default conv init, unit norm scales). Works under `jax.eval_shape`."""
  cfg = config
  k_enc, k_quant, k_post, k_dec = jax.random.split(init_key(key), 4)
  pd = jnp.dtype(cfg.param_dtype)
  # The smallest chunks that reach every temporal conv: 1 + temporal_factor frames, 2 latents.
  frames = jnp.zeros((1, 1 + cfg.temporal_factor, cfg.spatial_factor, cfg.spatial_factor, 3))
  latents = jnp.zeros((1, 2, 1, 1, cfg.z_dim))
  quant = Dense(2 * cfg.z_dim, cfg.dtype, pd, kernel_init=TORCH_DEFAULT_INIT)
  post_quant = Dense(cfg.z_dim, cfg.dtype, pd, kernel_init=TORCH_DEFAULT_INIT)
  return {
      "encoder": Encoder(cfg).init(k_enc, frames, None, True)["params"],
      "quant_conv": quant.init(k_quant, jnp.zeros((1, 2 * cfg.z_dim)))["params"],
      "post_quant_conv": post_quant.init(k_post, jnp.zeros((1, cfg.z_dim)))["params"],
      "decoder": Decoder(cfg).init(k_dec, latents, None, True)["params"],
  }


def _latent_stats(config: VAEConfig) -> tuple[jax.Array, jax.Array]:
  return jnp.asarray(config.latents_mean, jnp.float32), jnp.asarray(config.latents_std, jnp.float32)


def _encode_chunk(config: VAEConfig, params: Params, cache: Cache | None, frames: jax.Array,
                  first: bool) -> tuple[Cache, jax.Array]:
  """frames [B, T, H, W, 3] → (encoder buffers, normalised μ [B, F, H/8, W/8, z] float32); cache None = zeros."""
  cfg = config
  h, cache = Encoder(cfg).apply({"params": params["encoder"]}, frames, cache, first)
  quant = Dense(2 * cfg.z_dim, cfg.dtype, jnp.dtype(cfg.param_dtype), out_dtype=jnp.float32)
  mu = quant.apply({"params": params["quant_conv"]}, h)[..., :cfg.z_dim]  # log σ² (the rest) is unused
  mean, std = _latent_stats(cfg)
  return cache, (mu - mean) / std


def _decode_chunk(config: VAEConfig, params: Params, cache: Cache | None, latents: jax.Array,
                  first: bool) -> tuple[Cache, jax.Array]:
  """Normalised latents [B, F, h, w, z] → (decoder buffers, frames [B, T, 8h, 8w, 3] float32 in [−1, 1])."""
  cfg = config
  mean, std = _latent_stats(cfg)
  z = latents.astype(jnp.float32) * std + mean
  post_quant = Dense(cfg.z_dim, cfg.dtype, jnp.dtype(cfg.param_dtype))
  z = post_quant.apply({"params": params["post_quant_conv"]}, z)
  x, cache = Decoder(cfg).apply({"params": params["decoder"]}, z, cache, first)
  return cache, jnp.clip(x.astype(jnp.float32), -1.0, 1.0)


def _check_size(config: VAEConfig, height: int, width: int, what: str) -> None:
  s = config.spatial_factor
  if height % s or width % s:
    raise ValueError(f"{what} height and width must be multiples of {s}, got {height}×{width}")


def _check_frames(config: VAEConfig, frames: jax.Array, first: bool, what: str = "frames") -> None:
  if frames.ndim != 5 or frames.shape[-1] != 3:
    raise ValueError(f"{what} must be [B, T, H, W, 3], got shape {frames.shape}")
  _, t, h, w, _ = frames.shape
  _check_size(config, h, w, what)
  k = config.temporal_factor
  if first and (t - 1) % k:
    raise ValueError(f"a first chunk has 1 + {k}·n frames (the first frame is encoded alone), got {t}")
  if not first and (t == 0 or t % k):
    raise ValueError(f"a chunk after the first has a positive multiple of {k} frames, got {t}")


def _check_latents(config: VAEConfig, latents: jax.Array) -> None:
  if latents.ndim != 5 or latents.shape[-1] != config.z_dim or latents.shape[1] == 0:
    raise ValueError(f"latents must be [B, F ≥ 1, h, w, {config.z_dim}], got shape {latents.shape}")


def init_vae_stream(config: VAEConfig, batch: int, height: int, width: int) -> VAEStreamState:
  """Zero buffers for a stream of `batch` videos of height × width pixels (multiples of 8)."""
  cfg = config
  _check_size(cfg, height, width, "the stream's")
  s = cfg.spatial_factor
  params = jax.eval_shape(functools.partial(init_vae_params, cfg), jax.random.key(0))
  frames = jax.ShapeDtypeStruct((batch, 1, height, width, 3), jnp.float32)
  latents = jax.ShapeDtypeStruct((batch, 1, height // s, width // s, cfg.z_dim), jnp.float32)
  # The buffers' shapes are those a first chunk of one frame / one latent writes.
  encoder, _ = jax.eval_shape(lambda p, x: _encode_chunk(cfg, p, None, x, True), params, frames)
  decoder, _ = jax.eval_shape(lambda p, z: _decode_chunk(cfg, p, None, z, True), params, latents)
  zeros = functools.partial(jax.tree.map, lambda a: jnp.zeros(a.shape, a.dtype))
  return VAEStreamState(encoder=zeros(encoder), decoder=zeros(decoder))


def vae_encode_step(config: VAEConfig, params: Params, state: VAEStreamState, frames: jax.Array, *,
                    first: bool) -> tuple[VAEStreamState, jax.Array]:
  """Encodes the next chunk of a stream: frames [B, T, H, W, 3] in [−1, 1] → latents [B, F, H/8, W/8, z].

  first: static; the chunk starts the stream (T = 1 + 4(F − 1); the incoming encoder buffers are ignored, as if
    zero). Later chunks have T = 4F. Only `state.encoder` changes. To stream, jit once with `first` static and
    the state donated, e.g. `jax.jit(functools.partial(vae_encode_step, config), static_argnames="first",
    donate_argnums=1)`: one compile for the first chunk and one for all later chunks of the same size.
  """
  _check_frames(config, frames, first)
  cache, latents = _encode_chunk(config, params, None if first else state.encoder, frames, first)
  return state.replace(encoder=cache), latents


def vae_decode_step(config: VAEConfig, params: Params, state: VAEStreamState, latents: jax.Array, *,
                    first: bool) -> tuple[VAEStreamState, jax.Array]:
  """Decodes the next chunk of a stream: latents [B, F, h, w, z] → frames [B, T, 8h, 8w, 3] in [−1, 1].

  first: static; the chunk starts the stream (T = 1 + 4(F − 1); the incoming decoder buffers are ignored).
    Later chunks give T = 4F. Only `state.decoder` changes. Jit as `vae_encode_step`.
  """
  _check_latents(config, latents)
  cache, frames = _decode_chunk(config, params, None if first else state.decoder, latents, first)
  return state.replace(decoder=cache), frames


def vae_encode(config: VAEConfig, params: Params, video: jax.Array, *, chunked: bool = True) -> jax.Array:
  """Wan's whole-clip encode: video [B, T = 1 + 4k, H, W, 3] in [−1, 1] → normalised latents [B, 1 + k, H/8,
  W/8, z] float32, the mean of the posterior (z = (μ − mean) / std).

  chunked (static): frame 0 is encoded alone, then a `lax.scan` of the stream step runs over groups of 4 frames,
  Wan's schedule, which bounds the activations' memory by one group. False: the whole clip as one first chunk,
  the same function of the frames (every layer is causal in time) in a few large convolutions instead of a long
  sequential scan of small ones: training's choice (on one GPU 49-frame clips of a 1×-time VAE ran a scan step
  after step, at about 1 s per training step).
  """
  cfg = config
  _check_frames(cfg, video, first=True, what="video")
  if not chunked:
    return _encode_chunk(cfg, params, None, video, True)[1]
  b, t, h, w, c = video.shape
  k = cfg.temporal_factor
  cache, latents = _encode_chunk(cfg, params, None, video[:, :1], True)
  if t == 1:
    return latents
  groups = jnp.moveaxis(video[:, 1:].reshape(b, (t - 1) // k, k, h, w, c), 1, 0)
  _, rest = jax.lax.scan(lambda cache, x: _encode_chunk(cfg, params, cache, x, False), cache, groups)
  rest = jnp.moveaxis(rest, 0, 1)  # [B, k, 1, h, w, z]
  return jnp.concatenate([latents, rest.reshape(b, -1, *rest.shape[3:])], axis=1)


def vae_decode(config: VAEConfig, params: Params, latents: jax.Array, *, chunked: bool = True) -> jax.Array:
  """Wan's whole-clip decode: normalised latents [B, F, h, w, z] → video [B, 1 + 4(F − 1), 8h, 8w, 3] float32,
  clamped to [−1, 1]. chunked (static): latent 0 decodes to one frame, then a `lax.scan` of the stream step runs
  latent by latent; False: all latents as one first chunk (the same function, as in `vae_encode`).
  """
  cfg = config
  _check_latents(cfg, latents)
  if not chunked:
    return _decode_chunk(cfg, params, None, latents, True)[1]
  b = latents.shape[0]
  cache, video = _decode_chunk(cfg, params, None, latents[:, :1], True)
  if latents.shape[1] == 1:
    return video
  _, rest = jax.lax.scan(lambda cache, z: _decode_chunk(cfg, params, cache, z[:, None], False), cache,
                         jnp.moveaxis(latents[:, 1:], 1, 0))
  rest = jnp.moveaxis(rest, 0, 1)  # [B, F − 1, 4, H, W, 3]
  return jnp.concatenate([video, rest.reshape(b, -1, *rest.shape[3:])], axis=1)


def load_vae(path: str | os.PathLike, compute_dtype: str | None = None) -> tuple[VAEConfig, Params]:
  """A converted VAE directory (`python -m convert.wan_vae`) → (config, params on the default device).

  compute_dtype: overrides the stored config's compute dtype (e.g. "bfloat16" on GPU).
  """
  config = VAEConfig.from_dict(param_io.read_config(path, "vae"))
  if compute_dtype is not None:
    config = config.replace(compute_dtype=compute_dtype)
  # With a sharding, Orbax restores jax arrays on the device rather than host numpy arrays.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(functools.partial(init_vae_params, config), jax.random.key(0))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
  return config, param_io.load_params(path, abstract)
