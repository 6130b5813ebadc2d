"""`python -m convert.umt5`: round trips from both layouts, and errors that name every bad key.

The transformers layout is `UMT5EncoderModel.save_pretrained` (transformers 5.23); the Wan layout is the same
weights renamed to Wan's keys by the correspondence of spec §7.2 and saved with torch.save, in bf16 like
`models_t5_umt5-xxl-enc-bf16.pth`.
"""

import shutil

import numpy as np
import pytest
import torch

from convert.common import CheckpointError
from convert.umt5 import convert, main
from liveedit_jax.umt5 import encode_prompts, load_text_encoder, text_encoder_identity
from tests.numerics import FP32_RTOL, rel_err
from tests.test_umt5 import TINY, hf_forward, random_hf_encoder
from tests.test_umt5_tokenizer import tokenizer_dir  # noqa: F401 (fixture)

PROMPTS = ["a cat kato the street", "dog", "rain over 東京 &amp; neon"]


def to_wan_keys(state_dict, num_layers):
  """transformers UMT5EncoderModel keys → Wan's (spec §7.2: gate.0 ↔ wi_0, fc1 ↔ wi_1, fc2 ↔ wo)."""
  out = {"token_embedding.weight": state_dict["shared.weight"],
         "norm.weight": state_dict["encoder.final_layer_norm.weight"]}
  for i in range(num_layers):
    hf, wan = f"encoder.block.{i}.layer.", f"blocks.{i}."
    out[wan + "norm1.weight"] = state_dict[hf + "0.layer_norm.weight"]
    for name in "qkvo":
      out[wan + f"attn.{name}.weight"] = state_dict[hf + f"0.SelfAttention.{name}.weight"]
    out[wan + "pos_embedding.embedding.weight"] = state_dict[hf + "0.SelfAttention.relative_attention_bias.weight"]
    out[wan + "norm2.weight"] = state_dict[hf + "1.layer_norm.weight"]
    out[wan + "ffn.gate.0.weight"] = state_dict[hf + "1.DenseReluDense.wi_0.weight"]
    out[wan + "ffn.fc1.weight"] = state_dict[hf + "1.DenseReluDense.wi_1.weight"]
    out[wan + "ffn.fc2.weight"] = state_dict[hf + "1.DenseReluDense.wo.weight"]
  return out


def write_wan_checkpoint(directory, state_dict, tokenizer_dir=None):
  """Wan's folder: the bf16 .pth and, if tokenizer_dir is given, a copy of it as google/umt5-xxl/ beside it."""
  directory.mkdir(parents=True)
  path = directory / "models_t5_umt5-xxl-enc-bf16.pth"
  torch.save({k: v.to(torch.bfloat16) for k, v in state_dict.items()}, path)
  if tokenizer_dir is not None:
    shutil.copytree(tokenizer_dir, directory / "google" / "umt5-xxl")
  return path


@pytest.fixture(scope="module")
def hf_model():
  return random_hf_encoder(TINY)


@pytest.fixture
def wan_state_dict(hf_model):
  model, _ = hf_model
  return to_wan_keys({k: v.detach().clone() for k, v in model.state_dict().items()}, TINY.num_layers)


def test_transformers_round_trip(hf_model, tokenizer_dir, tmp_path):  # noqa: F811
  model, seed = hf_model
  src = tmp_path / "text_encoder"
  model.save_pretrained(src)
  shutil.copytree(tokenizer_dir, tmp_path / "tokenizer")  # diffusers' layout: the tokenizer beside the weights
  dst = tmp_path / "converted"
  main(["--src", str(src), "--dst", str(dst), "--dtype", "float32"])

  encoder = load_text_encoder(dst, dtype="float32")
  assert encoder.config == TINY  # the sizes in config.json are the tiny preset's
  assert encoder.tokenizer.backend == "tokenizers"
  assert (dst / "tokenizer" / "spiece.model").read_bytes() == (tmp_path / "tokenizer" / "spiece.model").read_bytes()
  assert text_encoder_identity(dst, dtype="float32") == encoder.identity
  state = model.state_dict()
  blocks = encoder.params["blocks"]
  np.testing.assert_array_equal(encoder.params["token_embedding"]["embedding"], state["shared.weight"].numpy())
  np.testing.assert_array_equal(blocks["ffn"]["gate"]["kernel"][1],
                                state["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"].numpy().T)
  np.testing.assert_array_equal(blocks["pos_embedding"]["embedding"][0],
                                state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].numpy())

  out = np.asarray(encode_prompts(encoder, PROMPTS))
  ids, mask = encoder.tokenizer(PROMPTS)
  want = hf_forward(model, ids, mask) * mask[..., None]
  err = rel_err(out, want)
  assert err <= FP32_RTOL, f"seed {seed}: rel err {err:.2e}"


def test_wan_round_trip(wan_state_dict, tokenizer_dir, tmp_path):  # noqa: F811
  src = write_wan_checkpoint(tmp_path / "Wan2.1-T2V-1.3B", wan_state_dict, tokenizer_dir)
  dst = tmp_path / "converted"
  main(["--src", str(src), "--dst", str(dst), "--preset", "tiny"])  # auto format, bfloat16

  encoder = load_text_encoder(dst, dtype="float32")  # bf16 → f32 is exact
  assert encoder.config.name == "tiny"
  blocks = encoder.params["blocks"]

  def stored(key):
    return wan_state_dict[key].to(torch.bfloat16).float().numpy()

  np.testing.assert_array_equal(encoder.params["token_embedding"]["embedding"], stored("token_embedding.weight"))
  np.testing.assert_array_equal(encoder.params["norm"]["scale"], stored("norm.weight"))
  for i in range(TINY.num_layers):
    for name in "qkvo":
      np.testing.assert_array_equal(blocks["attn"][name]["kernel"][i], stored(f"blocks.{i}.attn.{name}.weight").T)
    for name, key in (("gate", "gate.0"), ("fc1", "fc1"), ("fc2", "fc2")):
      np.testing.assert_array_equal(blocks["ffn"][name]["kernel"][i], stored(f"blocks.{i}.ffn.{key}.weight").T)
    np.testing.assert_array_equal(blocks["norm1"]["scale"][i], stored(f"blocks.{i}.norm1.weight"))
    np.testing.assert_array_equal(blocks["norm2"]["scale"][i], stored(f"blocks.{i}.norm2.weight"))
    np.testing.assert_array_equal(blocks["pos_embedding"]["embedding"][i],
                                  stored(f"blocks.{i}.pos_embedding.embedding.weight"))
  assert load_text_encoder(dst, dtype="bfloat16").params["blocks"]["attn"]["q"]["kernel"].dtype == "bfloat16"
  identity = text_encoder_identity(dst)
  main(["--src", str(src), "--dst", str(dst), "--preset", "tiny", "--overwrite"])
  assert text_encoder_identity(dst) == identity  # the fingerprint depends on the content alone


def test_errors_name_every_key(wan_state_dict, tokenizer_dir, tmp_path):  # noqa: F811
  del wan_state_dict["blocks.1.attn.k.weight"]
  wan_state_dict["blocks.0.attn.extra.weight"] = torch.zeros(3, 3)
  wan_state_dict["blocks.0.ffn.fc1.weight"] = torch.zeros(TINY.ffn_dim + 1, TINY.dim)
  src = write_wan_checkpoint(tmp_path / "wan", wan_state_dict, tokenizer_dir)
  dst = tmp_path / "converted"
  with pytest.raises(CheckpointError) as info:
    convert(src, dst, preset="tiny")
  message = str(info.value)
  assert "3 problem(s)" in message
  assert "missing key blocks.1.attn.k.weight (expected shape (21, 40))" in message
  assert "unexpected key blocks.0.attn.extra.weight (shape (3, 3))" in message
  assert "wrong shape for blocks.0.ffn.fc1.weight: expected (53, 40), found (54, 40)" in message
  assert sorted(p.name for p in tmp_path.iterdir()) == ["wan"]  # nothing written, no staging left
  with pytest.raises(SystemExit, match="missing key blocks.1.attn.k.weight"):
    main(["--src", str(src), "--dst", str(dst), "--preset", "tiny"])


def test_input_errors(wan_state_dict, tmp_path):
  src = write_wan_checkpoint(tmp_path / "no_tokenizer", wan_state_dict)
  with pytest.raises(CheckpointError, match="pass --tokenizer DIR"):
    convert(src, tmp_path / "out", preset="tiny")

  other = tmp_path / "other.pth"
  torch.save({"patch_embedding.weight": torch.zeros(2)}, other)
  with pytest.raises(CheckpointError, match="not a umT5 encoder checkpoint"):
    convert(other, tmp_path / "out")

  (tmp_path / "exists").mkdir()
  with pytest.raises(SystemExit, match="exists; pass --overwrite"):
    main(["--src", str(src), "--dst", str(tmp_path / "exists")])
