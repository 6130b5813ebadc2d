"""umT5 encoder: presets, relative buckets, parity with transformers, `encode_prompts` and the prompt cache.

Reference: transformers 5.23 `UMT5EncoderModel` (transformers/models/umt5/modeling_umt5.py), fp32 eager attention
on CPU, fresh random weights each run (the seed is in every failure message).
"""

import dataclasses
import functools
import random

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from transformers.models.umt5.modeling_umt5 import UMT5Attention

from convert.common import TensorRef
from convert.umt5 import convert_refs
from liveedit_jax.dit import count_params
from liveedit_jax.prompt_cache import PromptCache
from liveedit_jax.tokenizer import Tokenizer
from liveedit_jax.umt5 import (UMT5Config, TextEncoder, _encode, encode_prompts, init_umt5_params,
                               relative_position_buckets, umt5_forward)
from tests.numerics import BF16_RTOL, FP32_RTOL, rel_err
from tests.test_umt5_tokenizer import tokenizer_dir  # noqa: F401 (fixture)

TINY = UMT5Config.preset("tiny")


def random_hf_encoder(config):
  """A transformers UMT5EncoderModel of config's sizes with random weights, norm scales included. → (model, seed)"""
  seed = random.SystemRandom().randrange(2 ** 31)
  torch.manual_seed(seed)
  hf_config = transformers.UMT5Config(
      vocab_size=config.vocab_size, d_model=config.dim, d_kv=config.head_dim, num_heads=config.num_heads,
      d_ff=config.ffn_dim, num_layers=config.num_layers, relative_attention_num_buckets=config.num_buckets,
      relative_attention_max_distance=config.max_distance, layer_norm_epsilon=config.eps,
      feed_forward_proj="gated-gelu", dropout_rate=0.0, attn_implementation="eager")
  model = transformers.UMT5EncoderModel(hf_config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.copy_(1 + 0.5 * torch.randn_like(p))  # the init is all ones, which would hide a misplaced scale
      elif "relative_attention_bias" in name:
        p.copy_(torch.randn_like(p))  # large enough that a wrong bucket shows
  return model, seed


def params_from_torch(model, config):
  refs = {k: TensorRef(tuple(v.shape), lambda v=v: v.detach().numpy()) for k, v in model.state_dict().items()}
  return convert_refs(refs, config, "transformers", np.float32, "test")


def hf_forward(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
                attention_mask=torch.from_numpy(np.asarray(mask, np.int64)))
  return out.last_hidden_state.numpy()


def padded_batch(config, lengths, seq_len, seed):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, config.vocab_size, (len(lengths), seq_len)).astype(np.int32)
  mask = np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]
  return np.where(mask, ids, 0).astype(np.int32), mask


def random_params(config, seed):
  """Random numpy params of config's shapes: kernels with std 1/√fan_in, norm scales around 1, tables N(0, 1).

  Faster than `init_umt5_params`, whose compilation takes seconds on a small CPU.
  """
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(functools.partial(init_umt5_params, config), jax.random.key(0))

  def leaf(path, a):
    name = path[-1].key
    std = a.shape[-2] ** -0.5 if name == "kernel" else 1.0
    return (name == "scale") + std * rng.standard_normal(a.shape, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def tiny_encoder(tokenizer_dir, seed, fingerprint, config=TINY):
  return TextEncoder(config, random_params(config, seed), Tokenizer(tokenizer_dir, config.text_len), fingerprint)


_forward = jax.jit(umt5_forward, static_argnums=0)


def test_presets():
  assert UMT5Config.preset("tiny", num_layers=3).num_layers == 3
  with pytest.raises(ValueError, match=r"unknown umT5 preset 'xl'; valid presets: \['synth', 'tiny', 'umt5-xxl'\]"):
    UMT5Config.preset("xl")
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    UMT5Config.preset("tiny", compute_dtype="int8")
  with pytest.raises(ValueError, match="unknown fields"):
    UMT5Config.from_dict({**TINY.to_dict(), "d_model": 3})


def test_umt5_xxl_shapes_and_param_count():
  config = UMT5Config.preset("umt5-xxl")
  params = jax.eval_shape(functools.partial(init_umt5_params, config), jax.random.key(0))
  assert count_params(params) == 5_680_910_336  # spec §7.1
  assert params["token_embedding"]["embedding"].shape == (256384, 4096)
  assert params["blocks"]["pos_embedding"]["embedding"].shape == (24, 32, 64)
  assert params["blocks"]["ffn"]["gate"]["kernel"].shape == (24, 4096, 10240)


def test_relative_position_buckets_match_transformers():
  n = 700  # beyond text_len and max_distance
  ours = relative_position_buckets(n, n, 32, 128)
  attn = UMT5Attention(transformers.UMT5Config(num_heads=2, d_model=8, d_kv=4), has_relative_attention_bias=True)
  rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
  np.testing.assert_array_equal(ours, attn._relative_position_bucket(rel).numpy())
  row = relative_position_buckets(1, 400, 32, 128)[0]  # query at 0: rel = key position
  spec = {0: 0, 1: 17, 8: 24, 100: 31, 399: 31}  # spec §7.2 examples
  assert {r: int(row[r]) for r in spec} == spec
  col = relative_position_buckets(400, 1, 32, 128)[:, 0]  # key at 0: rel = −query position
  spec = {1: 1, 8: 8, 64: 14, 100: 15, 399: 15}
  assert {r: int(col[r]) for r in spec} == spec


def test_parity_with_transformers():
  model, seed = random_hf_encoder(TINY)
  params = params_from_torch(model, TINY)
  ids, mask = padded_batch(TINY, [150, 97, 4], 150, seed)  # 150 > max_distance: every bucket is used
  err = rel_err(_forward(TINY, params, ids, mask), hf_forward(model, ids, mask))
  assert err <= FP32_RTOL, f"seed {seed}: rel err {err:.2e}"


def test_bfloat16_compute_close_to_float32():
  model, seed = random_hf_encoder(TINY)
  params = params_from_torch(model, TINY)
  ids, mask = padded_batch(TINY, [40, 23], 40, seed)
  bf16 = TINY.replace(compute_dtype="bfloat16", param_dtype="bfloat16")
  out = _forward(bf16, jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params), ids, mask)
  assert out.dtype == jnp.float32
  err = rel_err(out, hf_forward(model, ids, mask))
  assert err <= BF16_RTOL, f"seed {seed}: rel err {err:.2e}"


def test_padding_does_not_change_real_rows():
  params = random_params(TINY, 1)
  ids, mask = padded_batch(TINY, [9], 30, 1)
  padded = _forward(TINY, params, ids, mask)[0, :9]
  alone = _forward(TINY, params, ids[:, :9], mask[:, :9])[0]
  assert rel_err(padded, alone) <= FP32_RTOL


def test_encode_prompts(tokenizer_dir):  # noqa: F811
  encoder = tiny_encoder(tokenizer_dir, 0, "test")
  prompts = ["a cat kato the street", "dog", "katorimu senda lovi pe " * 5]
  with pytest.warns(UserWarning, match=r"prompt 2 has \d+ tokens"):
    out = encode_prompts(encoder, prompts)
  assert out.shape == (3, TINY.text_len, TINY.dim) and out.dtype == jnp.float32
  with pytest.warns(UserWarning, match="prompt 2"):
    ids, mask = encoder.tokenizer(prompts)
  lengths = mask.sum(1)
  assert list(lengths) == [len(encoder.tokenizer.ids(p)) for p in prompts[:2]] + [TINY.text_len]
  want = np.where(mask[..., None], _forward(TINY, encoder.params, ids, mask), 0.0)
  assert rel_err(out, want) <= FP32_RTOL
  assert not np.any(np.asarray(out)[~mask]) and np.all(np.any(np.asarray(out)[mask] != 0, axis=-1))
  compiled = _encode._cache_size()
  encode_prompts(encoder, ["rain", "neon lights", "the dog"])
  assert _encode._cache_size() == compiled  # a batch of the same size reuses the compilation
  with pytest.raises(TypeError, match="list of prompts"):
    encode_prompts(encoder, "a single string")


def test_prompt_cache_encodes_each_prompt_once(tokenizer_dir, tmp_path):  # noqa: F811
  encoder = tiny_encoder(tokenizer_dir, 0, "a")
  loads = []

  def loader():
    loads.append(1)
    return encoder

  cache = PromptCache(tmp_path, encoder.identity, batch_size=2)
  prompts = ["a cat", "dog", "a cat", "pe lo vi"]
  first = cache.get_or_encode(loader, prompts)
  assert len(loads) == 1
  assert first.shape == (4, TINY.text_len, TINY.dim) and first.dtype == ml_dtypes.bfloat16
  direct = np.asarray(encode_prompts(encoder, prompts))
  assert rel_err(first.astype(np.float32), direct) <= 2 ** -8  # bf16 storage: half an ulp per element at most
  assert not np.any(first.astype(np.float32)[direct == 0])

  again = cache.get_or_encode(lambda: pytest.fail("the encoder was loaded on a full hit"), ["dog", "a cat"])
  np.testing.assert_array_equal(again.view(np.uint16), first[[1, 0]].view(np.uint16))
  cache.get_or_encode(loader, ["dog", "neon rain"])
  assert len(loads) == 2
  entries = sorted(p.name for p in (tmp_path / encoder.identity).iterdir())
  assert len(entries) == 4 and all(name.endswith(".npy") and not name.startswith(".") for name in entries)


def test_prompt_cache_keyed_by_encoder_identity(tokenizer_dir, tmp_path):  # noqa: F811
  enc_a = tiny_encoder(tokenizer_dir, 0, "weights-a")
  enc_b = tiny_encoder(tokenizer_dir, 1, "weights-b")
  bf16 = dataclasses.replace(enc_a, config=TINY.replace(compute_dtype="bfloat16"))
  assert len({enc_a.identity, enc_b.identity, bf16.identity}) == 3
  value_a = PromptCache(tmp_path, enc_a.identity).get_or_encode(enc_a, ["dog"])
  value_b = PromptCache(tmp_path, enc_b.identity).get_or_encode(enc_b, ["dog"])
  assert rel_err(value_a.astype(np.float32), value_b.astype(np.float32)) > 0.1
  assert {p.name for p in tmp_path.iterdir()} == {enc_a.identity, enc_b.identity}
  with pytest.raises(ValueError, match="identity"):
    PromptCache(tmp_path, enc_a.identity).get_or_encode(enc_b, ["rain"])
