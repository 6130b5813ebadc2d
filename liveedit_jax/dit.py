"""The Wan2.1 diffusion transformer as Linen modules and pure functions over a plain parameter pytree.

Axis letters used in shapes and einsums across the package:
  B batch · F latent frames · H, W latent height and width · C channels · T query tokens · S key tokens ·
  P tokens per latent frame (h·w patches) · N heads · E head dim · D model width · L layers.

Parameters are a dict (names follow Wan's original checkpoint):
  patch_embedding {kernel [1, 2, 2, C_in, D], bias}, text_embedding {fc1, fc2}, time_embedding {fc1, fc2,
  projection}, blocks {...}, each leaf with a leading [L] axis, and head {modulation [2, D], proj}.

`Block.__call__` is the only block and `dit_forward` the only forward; how the blocks attend and which tokens
they compute is the plan passed in (`plans.py`; docs/architecture.md draws the whole).

Precision follows Wan2.1's `wan/modules/model.py`: the sinusoid, time MLP, modulation,
norms, residual stream and head run in float32; other matmuls run in `config.compute_dtype` with float32
accumulation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from liveedit_jax.attention import FULL, AttentionMask, attention
from liveedit_jax.attention_probe import ProbeConfig, collect, frame_visibility, probed
from liveedit_jax.config import DiTConfig
from liveedit_jax.fused import modulated_layer_norm, modulated_layer_norm_reference, rms_norm_rope
from liveedit_jax.layers import Dense, LayerNorm, RMSNorm, gelu_tanh
from liveedit_jax.param_io import load_params, read_config
from liveedit_jax.plans import MaskedAttention, Plan
from liveedit_jax.rope import rope_cos_sin

Params = dict[str, Any]

_embed_init = nn.initializers.normal(stddev=0.02)


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Wan's timestep sinusoid, cos first: t [...] float → [..., dim] float32, ω_k = 10000^(−k/(dim/2))."""
  half = dim // 2
  freqs = np.power(10000.0, -np.arange(half, dtype=np.float64) / half).astype(np.float32)
  arg = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


def patchify(x: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
  """[B, F, H, W, C] → [B, F/pt, H/ph, W/pw, pt·ph·pw·C] with (pt, ph, pw, C) order, C fastest."""
  pt, ph, pw = patch_size
  b, f, h, w, c = x.shape
  x = x.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c)
  return jnp.einsum("bfphqwrc->bfhwpqrc", x).reshape(b, f // pt, h // ph, w // pw, pt * ph * pw * c)


def unpatchify(x: jax.Array, patch_size: tuple[int, int, int], channels: int) -> jax.Array:
  """Inverse of `patchify`: [B, F, h, w, pt·ph·pw·C] → [B, F·pt, h·ph, w·pw, C]."""
  pt, ph, pw = patch_size
  b, f, h, w, _ = x.shape
  x = x.reshape(b, f, h, w, pt, ph, pw, channels)
  return jnp.einsum("bfhwpqrc->bfphqwrc", x).reshape(b, f * pt, h * ph, w * pw, channels)


class PatchEmbedding(nn.Module):
  """Conv3d with kernel = stride = patch, as one matmul per patch: [B, F, H, W, C_in] → [B, F, P, D] float32."""

  config: DiTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kernel = self.param("kernel", nn.initializers.xavier_uniform(in_axis=(0, 1, 2, 3), out_axis=-1),
                        (*cfg.patch_size, cfg.in_channels, cfg.dim), jnp.dtype(cfg.param_dtype))
    bias = self.param("bias", nn.initializers.zeros_init(), (cfg.dim,), jnp.dtype(cfg.param_dtype))
    patches = patchify(x, cfg.patch_size)
    b, f, h, w, k = patches.shape
    y = jnp.einsum("bfhwk,kd->bfhwd", patches.astype(cfg.dtype), kernel.reshape(k, cfg.dim).astype(cfg.dtype),
                   preferred_element_type=jnp.float32)
    return (y + bias.astype(jnp.float32)).reshape(b, f, h * w, cfg.dim)


class TimeEmbedding(nn.Module):
  """t [B, F] → (e [B, F, D], e0 [B, F, 6, D]), all in float32 (Wan's autocast-fp32 island)."""

  config: DiTConfig

  @nn.compact
  def __call__(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    h = Dense(cfg.dim, jnp.float32, pd, kernel_init=_embed_init, name="fc1")(sinusoidal_embedding(t, cfg.freq_dim))
    e = Dense(cfg.dim, jnp.float32, pd, kernel_init=_embed_init, name="fc2")(jax.nn.silu(h))
    e0 = Dense(6 * cfg.dim, jnp.float32, pd, name="projection")(jax.nn.silu(e))
    return e, e0.reshape(*e0.shape[:-1], 6, cfg.dim)


class TextEmbedding(nn.Module):
  """context [B, L, text_dim] → [B, L, D] in the compute dtype: Linear → GELU(tanh) → Linear."""

  config: DiTConfig

  @nn.compact
  def __call__(self, context: jax.Array) -> jax.Array:
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    h = Dense(cfg.dim, cfg.dtype, pd, kernel_init=_embed_init, name="fc1")(context)
    return Dense(cfg.dim, cfg.dtype, pd, kernel_init=_embed_init, name="fc2")(gelu_tanh(h))


class Attention(nn.Module):
  """Projections of Wan's self- and cross-attention: q/k RMSNorm over the full width, before the head split."""

  config: DiTConfig

  def setup(self):
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    self.q, self.k, self.v, self.o = (Dense(cfg.dim, cfg.dtype, pd) for _ in range(4))
    self.norm_q = RMSNorm(cfg.dim, cfg.eps, pd)
    self.norm_k = RMSNorm(cfg.dim, cfg.eps, pd)

  def _heads(self, x: jax.Array) -> jax.Array:
    return x.reshape(*x.shape[:-1], self.config.num_heads, self.config.head_dim)

  def project_q(self, x: jax.Array) -> jax.Array:
    """x [B, T, D] → q [B, T, N, E] in float32 (normalised, not roped)."""
    return self._heads(self.norm_q(self.q(x)))

  def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, S, D] → (k float32 normalised, v compute dtype), each [B, S, N, E]."""
    return self._heads(self.norm_k(self.k(x))), self.project_v(x)

  def project_v(self, x: jax.Array) -> jax.Array:
    """x [B, S, D] → v [B, S, N, E] in the compute dtype."""
    return self._heads(self.v(x))

  def project_q_roped(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, D], cos/sin [T, E/2] or [B, T, E/2] → normalised, roped q [B, T, N, E] in the compute dtype."""
    return self._norm_rope(self.q(x), self.norm_q, cos, sin)

  def project_k_roped(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """As `project_q_roped`, for k."""
    return self._norm_rope(self.k(x), self.norm_k, cos, sin)

  def _norm_rope(self, projected: jax.Array, norm: RMSNorm, cos: jax.Array, sin: jax.Array) -> jax.Array:
    cfg = self.config
    return rms_norm_rope(projected, norm.scale, cos, sin, num_heads=cfg.num_heads, eps=cfg.eps, impl=cfg.kernels)

  def project_out(self, o: jax.Array) -> jax.Array:
    """o [B, T, N, E] → [B, T, D] float32."""
    return self.o(o.reshape(*o.shape[:-2], self.config.dim)).astype(jnp.float32)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """Unmasked attention of x over context, used only to create the parameters."""
    k, v = self.project_kv(context)
    dt = self.config.dtype
    return self.project_out(attention(self.project_q(x).astype(dt), k.astype(dt), v, impl="xla"))


class FeedForward(nn.Module):
  config: DiTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    h = gelu_tanh(Dense(cfg.ffn_dim, cfg.dtype, pd, out_dtype=jnp.float32, name="fc1")(x))
    return Dense(cfg.dim, cfg.dtype, pd, out_dtype=jnp.float32, name="fc2")(h)


class Block(nn.Module):
  """One Wan attention block, the only one: every forward runs it, told by a plan (`plans.py`) how its
  self-attention attends and which tokens its sublayers compute. The residual stream x is [B, F, P, D] float32;
  e0 is [B, F, 6, D].

  Modulation rows: 0 shift_msa, 1 scale_msa, 2 gate_msa, 3 shift_ffn, 4 scale_ffn, 5 gate_ffn.
  """

  config: DiTConfig

  def setup(self):
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    self.modulation = self.param("modulation", nn.initializers.normal(stddev=cfg.dim ** -0.5), (6, cfg.dim), pd)
    self.self_attn = Attention(cfg)
    self.norm3 = LayerNorm(cfg.eps, affine=True, param_dtype=pd)
    self.cross_attn = Attention(cfg)
    self.ffn = FeedForward(cfg)

  def modulations(self, e0: jax.Array) -> jax.Array:
    """e0 [B, F, 6, D] → six [B, F, 1, D] float32 terms (learned table + time projection)."""
    m = self.modulation.astype(jnp.float32) + e0
    return [m[:, :, i, None, :] for i in range(6)]

  def self_attention_input(self, x: jax.Array, m: list[jax.Array]) -> jax.Array:
    """Modulated LayerNorm of x [B, F, P, D] float32, in the compute dtype (what the projections read)."""
    cfg = self.config
    return modulated_layer_norm(x, m[0], m[1], eps=cfg.eps, out_dtype=cfg.dtype, impl=cfg.kernels)

  def self_attention_qkv(self, u: jax.Array, cos: jax.Array, sin: jax.Array):
    """u [B, F, P, D] → roped q, k and v, each [B, F·P, N, E] in the compute dtype."""
    u = u.reshape(u.shape[0], -1, u.shape[-1])
    attn = self.self_attn
    return attn.project_q_roped(u, cos, sin), attn.project_k_roped(u, cos, sin), attn.project_v(u)

  def cross_attention(self, x: jax.Array, text_k: jax.Array, text_v: jax.Array) -> jax.Array:
    """x [B, F, P, D] attends to the text K/V [B, L, N, E]; returns the residual update, float32."""
    b, f, p, d = x.shape
    u = self.norm3(x).reshape(b, f * p, d)
    q = self.cross_attn.project_q(u).astype(self.config.dtype)
    return self.cross_attn.project_out(attention(q, text_k, text_v, impl=self.config.kernels)).reshape(b, f, p, d)

  def text_kv(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Embedded text [B, L, D] → this block's cross-attention (k, v), each [B, L, N, E] compute dtype."""
    k, v = self.cross_attn.project_kv(context)
    return k.astype(self.config.dtype), v

  def feed_forward_input(self, x: jax.Array, m: list[jax.Array]) -> jax.Array:
    """Modulated LayerNorm of x [B, F, P, D] before the FFN, in the compute dtype."""
    cfg = self.config
    return modulated_layer_norm(x, m[3], m[4], eps=cfg.eps, out_dtype=cfg.dtype, impl=cfg.kernels)

  def __call__(self, x, e0, text_k, text_v, cos, sin, plan: Plan):
    """x [B, F, P, D] float32, cos/sin [F·P, E/2], text K/V [B, L, N, E] → (x, what the plan keeps of this layer).

    The plan computes both gated sublayers' updates, [B, F·P, D] or [B, F, P, D] (the Mask Cache's in the compute
    dtype, hence the casts); cross-attention always runs for every token.
    """
    m = self.modulations(e0)
    y, attention_kept = plan.self_attention(self, self.self_attention_input(x, m), cos, sin)
    x = x + y.reshape(x.shape).astype(jnp.float32) * m[2]
    x = x + self.cross_attention(x, text_k, text_v)
    f, feed_forward_kept = plan.feed_forward(self, self.feed_forward_input(x, m))
    return x + f.reshape(x.shape).astype(jnp.float32) * m[5], plan.keep(attention_kept, feed_forward_kept)

  def init_all(self, x, e0, context, cos, sin):
    """Touches every parameter (for `init`)."""
    text_k, text_v = self.text_kv(context)
    return self(x, e0, text_k, text_v, cos, sin, MaskedAttention())


class Head(nn.Module):
  """x [B, F, P, D], e [B, F, D] → [B, F, P, pt·ph·pw·C_out] float32, modulated by e (not e0)."""

  config: DiTConfig

  @nn.compact
  def __call__(self, x: jax.Array, e: jax.Array) -> jax.Array:
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    table = self.param("modulation", nn.initializers.normal(stddev=cfg.dim ** -0.5), (2, cfg.dim), pd)
    shift = table[0].astype(jnp.float32) + e[:, :, None, :]
    scale = table[1].astype(jnp.float32) + e[:, :, None, :]
    u = modulated_layer_norm_reference(x, shift, scale, eps=cfg.eps, out_dtype=jnp.float32)
    return Dense(cfg.patch_dim, jnp.float32, pd, kernel_init=nn.initializers.zeros_init(), name="proj")(u)


@functools.partial(jax.jit, static_argnums=0)
def init_dit_params(config: DiTConfig, key: jax.Array) -> Params:
  """Fresh parameters with Wan's initialisation. Works under `jax.eval_shape` (no allocation)."""
  cfg = dataclasses.replace(config, kernels="xla")  # the same parameters; the XLA ops batch under the vmap
  pt, ph, pw = cfg.patch_size
  keys = jax.random.split(key, 5)
  x = jnp.zeros((1, pt, ph, pw, cfg.in_channels))
  t = jnp.zeros((1, 1))
  ctx = jnp.zeros((1, 1, cfg.text_dim))
  h = jnp.zeros((1, 1, 1, cfg.dim))
  e0 = jnp.zeros((1, 1, 6, cfg.dim))
  cos, sin = rope_cos_sin(jnp.zeros((1,), jnp.int32), 1, 1, head_dim=cfg.head_dim,
                          max_positions=cfg.rope_max_positions, theta=cfg.rope_theta)

  def init_block(k):
    return Block(cfg).init(k, h, e0, jnp.zeros((1, 1, cfg.dim)), cos, sin, method=Block.init_all)["params"]

  return {
      "patch_embedding": PatchEmbedding(cfg).init(keys[0], x)["params"],
      "text_embedding": TextEmbedding(cfg).init(keys[1], ctx)["params"],
      "time_embedding": TimeEmbedding(cfg).init(keys[2], t)["params"],
      "blocks": jax.vmap(init_block)(jax.random.split(keys[3], cfg.num_layers)),
      "head": Head(cfg).init(keys[4], h, jnp.zeros((1, 1, cfg.dim)))["params"],
  }


def count_params(params: Params) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _as_frame_timesteps(t: jax.Array, batch: int, frames: int, what: str = "t") -> jax.Array:
  t = jnp.asarray(t, jnp.float32)
  if t.ndim == 0:
    t = jnp.broadcast_to(t, (batch,))
  if t.shape == (batch,):
    return jnp.broadcast_to(t[:, None], (batch, frames))
  if t.shape == (batch, frames):
    return t
  raise ValueError(f"{what} must be [B]={batch} or [B, F]=[{batch}, {frames}], got shape {t.shape}")


def _check_inputs(cfg: DiTConfig, x: jax.Array, context: jax.Array | None, name: str = "x") -> None:
  pt, ph, pw = cfg.patch_size
  if x.ndim != 5:
    raise ValueError(f"{name} must be latents [B, F, H, W, C], got shape {x.shape}")
  b, f, h, w, c = x.shape
  if c != cfg.in_channels:
    raise ValueError(f"{name} has {c} channels; config {cfg.name!r} expects in_channels={cfg.in_channels}"
                     + (" (noisy latent ‖ source latent)" if cfg.is_editing else ""))
  if f % pt or h % ph or w % pw:
    raise ValueError(f"{name} [F, H, W]=({f}, {h}, {w}) must be divisible by the patch {cfg.patch_size}")
  if context is None:  # the text came as every layer's K/V (`dit_forward`'s text_kv)
    return
  if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
    raise ValueError(f"context must be [B={b}, L, {cfg.text_dim}], got shape {context.shape}")
  if context.shape[1] > cfg.text_len:
    raise ValueError(f"context has {context.shape[1]} rows, more than text_len={cfg.text_len}")


def embed_context(config: DiTConfig, params: Params, context: jax.Array) -> jax.Array:
  """Text embeddings [B, L ≤ text_len, text_dim] → [B, text_len, D], zero-padding rows as Wan does."""
  pad = config.text_len - context.shape[1]
  context = jnp.pad(context, ((0, 0), (0, pad), (0, 0)))
  return TextEmbedding(config).apply({"params": params["text_embedding"]}, context)


def text_kv_per_layer(config: DiTConfig, params: Params, context: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Every block's cross-attention K/V from raw text embeddings: each [L, B, text_len, N, E]."""
  ctx = embed_context(config, params, context)
  block = Block(config)
  return jax.lax.map(lambda p: block.apply({"params": p}, ctx, method=Block.text_kv), params["blocks"])


def frame_rope(config: DiTConfig, frame_positions: jax.Array, h: int, w: int):
  """RoPE (cos, sin), each [F·h·w, E/2], for patch grids at the given frame positions."""
  return rope_cos_sin(frame_positions, h, w, head_dim=config.head_dim, max_positions=config.rope_max_positions,
                      theta=config.rope_theta)


def embed_latents(config: DiTConfig, params: Params, x: jax.Array, t: jax.Array):
  """x [B, F, H, W, C_in], t [B, F'] (F' = F/pt) → tokens [B, F', P, D], e [B, F', D], e0 [B, F', 6, D]."""
  tokens = PatchEmbedding(config).apply({"params": params["patch_embedding"]}, x)
  e, e0 = TimeEmbedding(config).apply({"params": params["time_embedding"]}, t)
  return tokens, e, e0


def output_head(config: DiTConfig, params: Params, tokens: jax.Array, e: jax.Array, h: int, w: int) -> jax.Array:
  """tokens [B, F', P, D], e [B, F', D] → flow [B, F'·pt, h·ph, w·pw, latent_channels] float32."""
  out = Head(config).apply({"params": params["head"]}, tokens, e)
  b, f = tokens.shape[:2]
  return unpatchify(out.reshape(b, f, h, w, config.patch_dim), config.patch_size, config.latent_channels)


def run_blocks(config: DiTConfig, block_params: Params, x: jax.Array, e0: jax.Array, text_kv, cos, sin,
               plan: Plan) -> tuple[jax.Array, Any]:
  """All blocks over the residual stream x [B, F, P, D] (a `lax.scan` over the stacked layer axis).

  Each layer runs `Block.__call__` with its own slice of the plan (`Plan.layer_slices`).
  Returns (x, what the plan kept of every layer, stacked over layers).
  """
  block = Block(config)

  def body(x, layer):
    p, text_k, text_v, slices = layer
    return block.apply({"params": p}, x, e0, text_k, text_v, cos, sin, plan.at_layer(slices))

  if config.remat:
    body = jax.checkpoint(body, prevent_cse=False)
  return jax.lax.scan(body, x, (block_params, *text_kv, plan.layer_slices()))


def _check_forward(cfg: DiTConfig, x, context, text_kv, chunk_frames, clean_x, probe, plan) -> None:
  if (context is None) == (text_kv is None):
    raise ValueError("dit_forward takes the text as either context (embeddings) or text_kv (every layer's K/V)")
  if plan is not None and (chunk_frames is not None or clean_x is not None or probe is not None):
    raise ValueError("a plan decides how the forward attends: chunk_frames, clean_x and probe go without one "
                     "(attention_probe.probed wraps a plan in the probe)")
  _check_inputs(cfg, x, context)
  nf = x.shape[1] // cfg.patch_size[0]
  if clean_x is not None:
    if chunk_frames is None:
      raise ValueError("clean_x (teacher forcing) needs chunk_frames")
    if clean_x.shape != x.shape:
      raise ValueError(f"clean_x must have x's shape {x.shape}, got {clean_x.shape}")
    _check_inputs(cfg, clean_x, context, "clean_x")
  if chunk_frames is not None and (chunk_frames <= 0 or nf % chunk_frames):
    raise ValueError(f"{nf} latent frames are not a whole number of chunks of {chunk_frames}")
  if probe is not None:
    probe.check(cfg.num_layers, cfg.name)


def _sequence_plan(cfg: DiTConfig, chunk_frames: int | None, teacher_forcing: bool, probe: ProbeConfig | None,
                   grid: tuple[int, int], frames: int) -> Plan:
  """The plan of a whole-sequence forward: its mask (`dit_forward`'s chunk_frames and clean_x), maybe probed."""
  frame_tokens = grid[0] * grid[1]
  mask = FULL
  if chunk_frames is not None:
    mask = AttentionMask("teacher_forcing" if teacher_forcing else "chunk_causal", chunk_frames * frame_tokens)
  if probe is None:
    return MaskedAttention(mask)
  return probed(MaskedAttention(mask), probe, cfg.num_layers, frame_visibility(mask, frame_tokens, frames), grid)


def dit_forward(config: DiTConfig, params: Params, x: jax.Array, t: jax.Array, context: jax.Array | None = None, *,
                chunk_frames: int | None = None, clean_x: jax.Array | None = None,
                clean_t: jax.Array | None = None, frame_offset: int | jax.Array = 0,
                probe: ProbeConfig | None = None, plan: Plan | None = None,
                text_kv: tuple[jax.Array, jax.Array] | None = None) -> jax.Array | tuple[jax.Array, Any]:
  """The DiT's flow prediction: the one forward of every caller (training, streaming, the DMD rollout).

  Args:
    x: [B, F, H, W, C_in] latents, channels last (editing: noisy ‖ source on the channel axis).
    t: [B] or [B, F] timesteps on the 0–1000 scale (per frame for the causal model).
    context: [B, L ≤ text_len, text_dim] text embeddings (rows past the prompt are zero; padded to text_len).
    chunk_frames: if set, the chunk-causal model: chunks of this many latent frames see themselves and earlier
      chunks only.
    clean_x: with chunk_frames, teacher forcing: the clean sequence [B, F, H, W, C_in] placed before x; noisy
      chunk c sees clean chunks < c and itself. Both halves use frame positions offset … offset+F−1.
    clean_t: timesteps of the clean half, [B] or [B, F] (default 0).
    frame_offset: absolute frame position of x's first frame (RoPE); int32 [] may be traced.
    probe: if set, the attention probe of these layers (`attention_probe.py`); off (None), nothing of it is traced.
    plan: how the blocks attend and which tokens they compute (`plans.py`), instead of chunk_frames / clean_x /
      probe, which pick a `MaskedAttention` plan.
    text_kv: every layer's cross-attention K/V, each [L, B, text_len, N, E] (`text_kv_per_layer`), instead of
      context (a stream computes them once per prompt).

  Returns:
    [B, F, H, W, latent_channels] float32 flow prediction v̂ ≈ ε − x0; with a probe, (that, ProbeStats) with
    query and key frames the sequence's (F, or 2F under teacher forcing: clean first), the output bit for bit the
    same; with a plan, (that, what the plan kept of every layer, stacked over layers).
  """
  cfg = config
  _check_forward(cfg, x, context, text_kv, chunk_frames, clean_x, probe, plan)
  b, f, hh, ww, _ = x.shape
  pt, ph, pw = cfg.patch_size
  nf, h, w = f // pt, hh // ph, ww // pw
  tokens, e, e0 = embed_latents(cfg, params, x, _as_frame_timesteps(t, b, nf))
  positions = frame_offset + jnp.arange(nf, dtype=jnp.int32)
  cos, sin = frame_rope(cfg, positions, h, w)
  if clean_x is not None:  # teacher forcing: the sequence is [clean ‖ noisy], both halves at the same positions
    clean_t = _as_frame_timesteps(jnp.zeros((b,)) if clean_t is None else clean_t, b, nf, "clean_t")
    clean_tokens, _, clean_e0 = embed_latents(cfg, params, clean_x, clean_t)
    tokens, e0 = jnp.concatenate([clean_tokens, tokens], axis=1), jnp.concatenate([clean_e0, e0], axis=1)
    cos, sin = jnp.concatenate([cos, cos]), jnp.concatenate([sin, sin])
  if text_kv is None:
    text_kv = text_kv_per_layer(cfg, params, context)
  given = plan is not None
  if not given:
    plan = _sequence_plan(cfg, chunk_frames, clean_x is not None, probe, (h, w), tokens.shape[1])
  tokens, kept = run_blocks(cfg, params["blocks"], tokens, e0, text_kv, cos, sin, plan)
  out = output_head(cfg, params, tokens[:, -nf:], e, h, w)  # teacher forcing: the noisy half only
  if given:
    return out, kept
  if probe is None:
    return out
  frames = positions if clean_x is None else jnp.concatenate([positions, positions])
  return out, collect(probe, kept, frames, frames)[1]


def load_dit(path: str, compute_dtype: str | None = None) -> tuple[DiTConfig, Params]:
  """A converted DiT directory (`python -m convert.wan_dit`) → (config, params as jax arrays).

  compute_dtype: overrides the stored config's matmul dtype (e.g. "bfloat16" on GPU).
  """
  config = DiTConfig.from_dict(read_config(path, "dit"))
  if compute_dtype is not None:
    config = config.replace(compute_dtype=compute_dtype)
  abstract = jax.eval_shape(lambda: init_dit_params(config, jax.random.key(0)))
  return config, load_params(path, abstract)
