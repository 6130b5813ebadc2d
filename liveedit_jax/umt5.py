"""The umT5-XXL text encoder (encoder only) as Linen modules and pure functions over a plain parameter pytree.

    encoder = load_text_encoder("checkpoints/umt5-xxl")          # converted by `python -m convert.umt5`
    context = encode_prompts(encoder, ["a red fox in the snow"])  # [B, 512, 4096] float32, zeros past each prompt

Facts: Wan2.1's `wan/modules/t5.py` (transformers' `UMT5EncoderModel` is
the same network). Axis letters as in dit.py: B batch · T query tokens · S key tokens · N heads · E head dim ·
D width · L layers.

Parameters are a dict (names follow Wan's `models_t5_umt5-xxl-enc-bf16.pth`):
  token_embedding {embedding [vocab, D]}, norm {scale [D]} and blocks {norm1 {scale}, attn {q, k, v {kernel
  [D, N·E]}, o {kernel [N·E, D]}}, pos_embedding {embedding [num_buckets, N]}, norm2 {scale}, ffn {gate, fc1
  {kernel [D, ffn_dim]}, fc2 {kernel [ffn_dim, D]}}}, each blocks leaf with a leading [L] axis.

Precision: the residual stream, T5's RMS norms, the attention logits and the softmax run in float32; matmuls run
in `config.compute_dtype` with float32 accumulation. Wan runs the whole network in bf16, residual included; the
float32 residual is the more accurate of the two and is one [B, T, D] tensor, small next to the weights.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from liveedit_jax import param_io
from liveedit_jax.config import PresetConfig
from liveedit_jax.layers import Dense, RMSNorm, gelu_tanh
from liveedit_jax.tokenizer import Tokenizer

Params = dict[str, Any]

KIND = "umt5"  # param_io kind of a converted directory
TOKENIZER_DIR = "tokenizer"  # the tokenizer files inside a converted directory


@dataclasses.dataclass(frozen=True, slots=True)
class UMT5Config(PresetConfig):
  """umT5 encoder hyper-parameters (spec §7.1; transformers' UMT5Config names in comments)."""

  LABEL: ClassVar[str] = "umT5"

  name: str = "umt5-xxl"
  vocab_size: int = 256384
  dim: int = 4096  # d_model
  num_heads: int = 64
  head_dim: int = 64  # d_kv; N·E need not equal dim (umt5-small has 6 × 64 heads over width 512)
  ffn_dim: int = 10240  # d_ff
  num_layers: int = 24
  num_buckets: int = 32  # relative-position buckets, half for each direction
  max_distance: int = 128  # distances ≥ this share the last bucket of their direction
  eps: float = 1e-6
  text_len: int = 512  # the tokenizer pads and truncates to this many tokens (W:shared_config.py:11)
  compute_dtype: str = "float32"  # matmul dtype; norms, softmax and the residual stream stay float32
  param_dtype: str = "float32"

  def __post_init__(self):
    for field in ("vocab_size", "dim", "num_heads", "head_dim", "ffn_dim", "num_layers", "max_distance",
                  "text_len"):
      if getattr(self, field) <= 0:
        raise ValueError(f"{self.name}: {field} must be positive, got {getattr(self, field)}")
    if self.num_buckets < 4 or self.num_buckets % 4:
      raise ValueError(f"{self.name}: num_buckets must be a positive multiple of 4 (half per direction, half of "
                       f"those exact), got {self.num_buckets}")
    self.check_dtypes()

  @property
  def attn_dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.compute_dtype)

  @classmethod
  def from_transformers(cls, hf: Mapping[str, Any]) -> "UMT5Config":
    """From a transformers `config.json` dict; a preset when the sizes match one (e.g. google/umt5-xxl)."""
    if hf.get("model_type") != "umt5":
      # T5 v1.1 ("t5") shares one bias table from layer 0 and mT5 differs likewise: other parameters.
      raise ValueError(f"expected a transformers umt5 config, got model_type {hf.get('model_type')!r}")
    if hf.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
      raise ValueError(f"only the gated-GELU feed-forward is implemented, got {hf['feed_forward_proj']!r}")
    config = cls(name="converted", vocab_size=hf["vocab_size"], dim=hf["d_model"], num_heads=hf["num_heads"],
                 head_dim=hf["d_kv"], ffn_dim=hf["d_ff"], num_layers=hf["num_layers"],
                 num_buckets=hf.get("relative_attention_num_buckets", 32),
                 max_distance=hf.get("relative_attention_max_distance", 128),
                 eps=hf.get("layer_norm_epsilon", 1e-6))
    for preset in UMT5_PRESETS.values():
      if config.replace(name=preset.name, text_len=preset.text_len) == preset:
        return preset
    return config


UMT5_PRESETS: dict[str, UMT5Config] = {
    "umt5-xxl": UMT5Config(),
    # Toy widths for tests, matching the `tiny` DiT's text_dim 40 and text_len 16; 3 heads of 7 (N·E = 21 ≠ D)
    # exercise the separate attention width. The vocabulary covers a test tokenizer's 256 pieces + 100 sentinels.
    "tiny": UMT5Config(name="tiny", vocab_size=389, dim=40, num_heads=3, head_dim=7, ffn_dim=53, num_layers=2,
                       text_len=16),
    # The default model's text encoder: umT5 at width 128 over the procedural benchmark's word vocabulary
    # (train/text_encoder.py), kept at its random init (the DiT's cross-attention learns to read it).
    "synth": UMT5Config(name="synth", vocab_size=128, dim=128, num_heads=4, head_dim=32, ffn_dim=256, num_layers=2,
                        text_len=24),
}
UMT5Config.PRESETS = UMT5_PRESETS


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets of rel = key − query position: [q_len, k_len] int32 (spec §7.2).

  Half the buckets per direction (keys after the query in the upper half); in each, distances below a quarter of
  num_buckets get their own bucket and larger ones share log-spaced buckets up to max_distance. The log is taken
  in float32 and truncated, as the references do, so boundary distances land in the same bucket.
  """
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  half = num_buckets // 2
  exact = half // 2
  n = np.abs(rel)
  log_ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact)) / np.float32(
      math.log(max_distance / exact))
  large = np.minimum(exact + (log_ratio * np.float32(half - exact)).astype(np.int64), half - 1)
  return (np.where(rel > 0, half, 0) + np.where(n < exact, n, large)).astype(np.int32)


class TokenEmbedding(nn.Module):
  """ids [B, T] int → [B, T, D] float32 (no √D scale, spec §7.2)."""

  config: UMT5Config

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    cfg = self.config
    # N(0, 1): Mesh TensorFlow's embedding init, as transformers' UMT5 `_init_weights`.
    table = self.param("embedding", nn.initializers.normal(stddev=1.0), (cfg.vocab_size, cfg.dim),
                       jnp.dtype(cfg.param_dtype))
    # Gather first, cast after: casting the table would touch all of its rows (1 G values for XXL).
    return jnp.take(table, ids, axis=0).astype(jnp.float32)


class RelativePositionBias(nn.Module):
  """A layer's learned bias for T queries over S keys: [N, T, S] float32 from a [num_buckets, N] table."""

  config: UMT5Config

  @nn.compact
  def __call__(self, q_len: int, k_len: int) -> jax.Array:
    cfg = self.config
    table = self.param("embedding", nn.initializers.normal(stddev=cfg.dim ** -0.5), (cfg.num_buckets, cfg.num_heads),
                       jnp.dtype(cfg.param_dtype))
    buckets = relative_position_buckets(q_len, k_len, cfg.num_buckets, cfg.max_distance)
    return table.astype(jnp.float32).T[:, buckets]


class SelfAttention(nn.Module):
  """T5 attention: bias-free projections, logits q·kᵀ with no 1/√E scale, plus position bias and key mask."""

  config: UMT5Config

  def setup(self):
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    normal = nn.initializers.normal
    # Mesh TensorFlow's init (transformers' UMT5 `_init_weights`): the missing 1/√E lives in q's init.
    self.q = Dense(cfg.attn_dim, cfg.dtype, pd, use_bias=False, kernel_init=normal((cfg.dim * cfg.head_dim) ** -0.5))
    self.k = Dense(cfg.attn_dim, cfg.dtype, pd, use_bias=False, kernel_init=normal(cfg.dim ** -0.5))
    self.v = Dense(cfg.attn_dim, cfg.dtype, pd, use_bias=False, kernel_init=normal(cfg.dim ** -0.5))
    self.o = Dense(cfg.dim, cfg.dtype, pd, use_bias=False, out_dtype=jnp.float32,
                   kernel_init=normal(cfg.attn_dim ** -0.5))

  def __call__(self, x: jax.Array, bias: jax.Array, key_mask: jax.Array) -> jax.Array:
    """x [B, T, D], bias [N, T, T] float32, key_mask [B, T] bool (True = a real token) → [B, T, D] float32."""
    cfg = self.config
    b, t, _ = x.shape
    q, k, v = (proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim) for proj in (self.q, self.k, self.v))
    logits = jnp.einsum("BTNE,BSNE->BNTS", q, k, preferred_element_type=jnp.float32) + bias
    # finfo.min rather than −inf, as the references add: a row with every key masked stays finite.
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)
    out = jnp.einsum("BNTS,BSNE->BTNE", probs, v, preferred_element_type=jnp.float32)
    return self.o(out.reshape(b, t, cfg.attn_dim).astype(cfg.dtype))


class FeedForward(nn.Module):
  """Gated GELU: fc2(fc1(x) ⊙ GELU_tanh(gate(x))), bias-free; x [B, T, D] → [B, T, D] float32."""

  config: UMT5Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    normal = nn.initializers.normal
    gate = Dense(cfg.ffn_dim, cfg.dtype, pd, use_bias=False, out_dtype=jnp.float32,
                 kernel_init=normal(cfg.dim ** -0.5), name="gate")(x)
    linear = Dense(cfg.ffn_dim, cfg.dtype, pd, use_bias=False, out_dtype=jnp.float32,
                   kernel_init=normal(cfg.dim ** -0.5), name="fc1")(x)
    return Dense(cfg.dim, cfg.dtype, pd, use_bias=False, out_dtype=jnp.float32,
                 kernel_init=normal(cfg.ffn_dim ** -0.5), name="fc2")(gelu_tanh(gate) * linear)


class Block(nn.Module):
  """One pre-norm encoder layer with its own relative-position table; x [B, T, D] float32 → same."""

  config: UMT5Config

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
    cfg = self.config
    pd = jnp.dtype(cfg.param_dtype)
    t = x.shape[1]
    bias = RelativePositionBias(cfg, name="pos_embedding")(t, t)
    x = x + SelfAttention(cfg, name="attn")(RMSNorm(cfg.dim, cfg.eps, pd, name="norm1")(x), bias, key_mask)
    return x + FeedForward(cfg, name="ffn")(RMSNorm(cfg.dim, cfg.eps, pd, name="norm2")(x))


def init_umt5_params(config: UMT5Config, key: jax.Array) -> Params:
  """Fresh parameters (transformers' UMT5 init). Works under `jax.eval_shape` (no allocation)."""
  cfg = config
  keys = jax.random.split(key, 3)
  x = jnp.zeros((1, 1, cfg.dim))
  mask = jnp.ones((1, 1), bool)
  init_block = lambda k: Block(cfg).init(k, x, mask)["params"]  # noqa: E731
  return {
      "token_embedding": TokenEmbedding(cfg).init(keys[0], jnp.zeros((1, 1), jnp.int32))["params"],
      "blocks": jax.vmap(init_block)(jax.random.split(keys[1], cfg.num_layers)),
      "norm": RMSNorm(cfg.dim, cfg.eps, jnp.dtype(cfg.param_dtype)).init(keys[2], x)["params"],
  }


def umt5_forward(config: UMT5Config, params: Params, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """The encoder's last hidden state.

  Args:
    ids: [B, T] int token ids.
    mask: [B, T] bool (or 0/1), True at real tokens; padded keys get no attention weight.

  Returns:
    [B, T, D] float32 after the final RMS norm. Rows at padded positions are computed like the references do
    (they attend to the real tokens) and are not zeroed here; `encode_prompts` zeroes them.
  """
  cfg = config
  mask = jnp.asarray(mask).astype(bool)
  x = TokenEmbedding(cfg).apply({"params": params["token_embedding"]}, ids)
  block = Block(cfg)
  x, _ = jax.lax.scan(lambda x, p: (block.apply({"params": p}, x, mask), None), x, params["blocks"])
  return RMSNorm(cfg.dim, cfg.eps, jnp.dtype(cfg.param_dtype)).apply({"params": params["norm"]}, x)


@functools.partial(jax.jit, static_argnums=0)
def _encode(config: UMT5Config, params: Params, ids: jax.Array, mask: jax.Array) -> jax.Array:
  # Zero the rows past each prompt (its </s> included in the length) before they reach the DiT, as Wan does.
  return jnp.where(mask[..., None], umt5_forward(config, params, ids, mask), 0.0)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: never compare or hash the params
class TextEncoder:
  """A loaded text encoder: config, params (on device), tokenizer, and the checkpoint's content fingerprint."""

  config: UMT5Config
  params: Params
  tokenizer: Tokenizer
  fingerprint: str  # weights + tokenizer files, hashed by the converter

  @property
  def identity(self) -> str:
    """What decides the embeddings: checkpoint content and config (dtypes included). Keys `PromptCache`."""
    return encoder_identity(self.config, self.fingerprint)


def encoder_identity(config: UMT5Config, fingerprint: str) -> str:
  text = json.dumps({"config": config.to_dict(), "fingerprint": fingerprint}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def default_dtype() -> str:
  """bfloat16 on GPU (Wan runs T5 in bf16 and the weights halve to 11 GB), float32 elsewhere."""
  return "bfloat16" if jax.default_backend() == "gpu" else "float32"


def _converted_config(path: Path, dtype: str | None) -> tuple[UMT5Config, str]:
  fields = dict(param_io.read_config(path, KIND))
  fingerprint = fields.pop("fingerprint", None)
  if fingerprint is None:
    raise ValueError(f"{path}: config.json has no fingerprint; re-convert with `python -m convert.umt5`")
  dtype = dtype or default_dtype()
  return UMT5Config.from_dict(fields).replace(compute_dtype=dtype, param_dtype=dtype), fingerprint


def text_encoder_identity(path: str | os.PathLike, dtype: str | None = None) -> str:
  """The `identity` that `load_text_encoder(path, dtype)` would have, read from config.json alone (no weights)."""
  return encoder_identity(*_converted_config(Path(path), dtype))


def load_text_encoder(path: str | os.PathLike, dtype: str | None = None) -> TextEncoder:
  """Loads a directory written by `python -m convert.umt5` onto the default device.

  dtype: params and compute dtype; default `default_dtype()` (bfloat16 on GPU, float32 elsewhere). The stored
    params are cast while they are restored.
  """
  path = Path(path)
  config, fingerprint = _converted_config(path, dtype)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(functools.partial(init_umt5_params, config), jax.random.key(0))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
  params = param_io.load_params(path, abstract)
  return TextEncoder(config, params, Tokenizer(path / TOKENIZER_DIR, max_length=config.text_len), fingerprint)


def encode_prompts(encoder: TextEncoder, prompts: Sequence[str]) -> jax.Array:
  """prompts (B strings) → [B, text_len, D] float32 on device, rows past each prompt's </s> zero.

  One compilation per (config, B): batches of the same size reuse it.
  """
  if isinstance(prompts, str):
    raise TypeError("encode_prompts takes a list of prompts, got a single string")
  ids, mask = encoder.tokenizer(prompts)
  return _encode(encoder.config, encoder.params, jax.device_put(ids), jax.device_put(mask))
