"""`python -m convert.wan_vae`: both layouts convert to params that reproduce the reference model; a broken
checkpoint fails with every problem named, and nothing is written.

The Wan layout is made from a random diffusers model by renaming its state dict with spec §6.7 (the key
correspondence of diffusers' scripts/convert_wan_to_diffusers.py), then saved with torch.save as Wan2.1_VAE.pth is.
"""

import json
import random
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from convert import wan_vae
from liveedit_jax import vae
from tests.test_vae import TINY, check_whole_clip, flax_params, random_diffusers_vae


def wan_state_dict(model: AutoencoderKLWan, config: vae.VAEConfig) -> dict[str, torch.Tensor]:
  """The model's state dict under Wan2.1's key names (spec §6.7)."""
  # Inside residual blocks first: once conv_in is renamed conv1, ".conv1." is no longer only a residual conv.
  residual = [("norm1", "residual.0"), ("conv1", "residual.2"), ("norm2", "residual.3"), ("conv2", "residual.6"),
              ("conv_shortcut", "shortcut")]
  layout = [(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."), (r"^encoder\.down_blocks\.", "encoder.downsamples."),
            (r"\.mid_block\.resnets\.0\.", ".middle.0."), (r"\.mid_block\.attentions\.0\.", ".middle.1."),
            (r"\.mid_block\.resnets\.1\.", ".middle.2."), (r"^(encoder|decoder)\.norm_out\.", r"\1.head.0."),
            (r"^(encoder|decoder)\.conv_out\.", r"\1.head.2."), (r"^quant_conv\.", "conv1."),
            (r"^post_quant_conv\.", "conv2.")]
  per_stage = config.num_res_blocks + 2  # Wan numbers a decoder stage's res blocks and its upsampler in one list
  out = {}
  for key, value in model.state_dict().items():
    for old, new in residual:
      key = key.replace(f".{old}.", f".{new}.")
    for pattern, repl in layout:
      key = re.sub(pattern, repl, key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda m: f"decoder.upsamples.{per_stage * int(m[1]) + int(m[2])}.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.upsamples.{per_stage * int(m[1]) + per_stage - 1}.", key)
    out[key] = value
  return out


def test_wan_table_matches_spec():
  """At Wan2.1's widths, the converter's Wan table is exactly the renamed diffusers state dict (194 tensors),
  and spot checks against spec Appendix B hold."""
  cfg = vae.VAEConfig.preset("wan2.1-vae")
  with torch.device("meta"):
    model = random_diffusers_vae(cfg, 0)
  renamed = {k: tuple(v.shape) for k, v in wan_state_dict(model, cfg).items()}
  table = {rule.source: rule.source_shape for rule in wan_vae.vae_rules(cfg, "wan")}
  assert len(table) == 194 and table == renamed
  appendix_b = {"encoder.conv1.weight": (96, 3, 3, 3, 3), "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
                "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
                "encoder.middle.1.norm.gamma": (384, 1, 1), "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
                "encoder.head.2.weight": (32, 384, 3, 3, 3), "conv1.weight": (32, 32, 1, 1, 1),
                "conv2.weight": (16, 16, 1, 1, 1), "decoder.conv1.weight": (384, 16, 3, 3, 3),
                "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
                "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
                "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
                "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
                "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3), "decoder.head.0.gamma": (96, 1, 1, 1),
                "decoder.head.2.weight": (3, 96, 3, 3, 3)}
  assert {k: table[k] for k in appendix_b} == appendix_b


def _round_trip(model: AutoencoderKLWan, dst, seed: int) -> None:
  config, params = vae.load_vae(dst)
  assert config.replace(name=TINY.name) == TINY  # a diffusers config.json names it AutoencoderKLWan
  check_whole_clip(model, TINY, params, seed)


def test_round_trip_diffusers(tmp_path, capsys):
  seed = random.randrange(2**31)
  model = random_diffusers_vae(TINY, seed)
  model.save_pretrained(tmp_path / "vae")
  dst = tmp_path / "converted"
  wan_vae.main(["--src", str(tmp_path / "vae"), "--dst", str(dst)])
  assert f"wrote {dst}" in capsys.readouterr().out
  _round_trip(model, dst, seed)

  with pytest.raises(SystemExit, match="exists; pass --overwrite"):
    wan_vae.main(["--src", str(tmp_path / "vae"), "--dst", str(dst), "--dtype", "bfloat16"])
  wan_vae.main(["--src", str(tmp_path / "vae"), "--dst", str(dst), "--dtype", "bfloat16", "--overwrite"])
  config_bf16, params_bf16 = vae.load_vae(dst)
  assert config_bf16.param_dtype == "bfloat16"
  reference = _flat_params(flax_params(model, TINY))
  assert _flat_params(params_bf16).keys() == reference.keys()
  for key, value in _flat_params(params_bf16).items():
    assert value.dtype == jnp.bfloat16, key
    assert np.array_equal(np.asarray(value), np.asarray(reference[key]).astype(jnp.bfloat16)), key


def _flat_params(params) -> dict[str, jax.Array]:
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}


def test_round_trip_wan(tmp_path):
  seed = random.randrange(2**31)
  model = random_diffusers_vae(TINY, seed)
  torch.save(wan_state_dict(model, TINY), tmp_path / "Wan2.1_VAE.pth")
  dst = tmp_path / "converted"
  wan_vae.main(["--src", str(tmp_path / "Wan2.1_VAE.pth"), "--dst", str(dst), "--preset", "tiny"])
  _round_trip(model, dst, seed)


def _expect_failure(tmp_path, args: list[str], *messages: str) -> None:
  """The CLI exits naming every message, and writes nothing under tmp_path/out."""
  with pytest.raises(SystemExit) as err:
    wan_vae.main([*args, "--dst", str(tmp_path / "out" / "vae")])
  for message in messages:
    assert message in str(err.value.code)
  assert not (tmp_path / "out").exists()


def _wan_checkpoint(tmp_path, edit=None) -> str:
  state = wan_state_dict(random_diffusers_vae(TINY, 0), TINY)
  if edit is not None:
    edit(state)
  path = tmp_path / "Wan2.1_VAE.pth"
  torch.save(state, path)
  return str(path)


def test_missing_extra_and_misshaped_keys_are_all_named(tmp_path):
  def edit(state):
    del state["encoder.conv1.bias"]
    state["encoder.extra.weight"] = torch.zeros(2, 2)
    state["decoder.upsamples.3.time_conv.weight"] = torch.zeros(48, 24, 3, 3, 3)

  _expect_failure(tmp_path, ["--src", _wan_checkpoint(tmp_path, edit), "--preset", "tiny"],
                  "cannot convert, 3 problem(s)", "missing key encoder.conv1.bias (expected shape (8,))",
                  "unexpected key encoder.extra.weight (shape (2, 2))",
                  "wrong shape for decoder.upsamples.3.time_conv.weight: expected (48, 24, 3, 1, 1), "
                  "found (48, 24, 3, 3, 3)")


def test_wrong_preset_is_reported_as_shapes(tmp_path):
  _expect_failure(tmp_path, ["--src", _wan_checkpoint(tmp_path)],
                  "wrong shape for encoder.conv1.weight: expected (96, 3, 3, 3, 3), found (8, 3, 3, 3, 3)")


def test_truncated_files(tmp_path):
  pth = _wan_checkpoint(tmp_path)
  with open(pth, "r+b") as f:
    f.truncate(f.seek(0, 2) // 2)
  _expect_failure(tmp_path, ["--src", pth, "--preset", "tiny"], "truncated")

  random_diffusers_vae(TINY, 0).save_pretrained(tmp_path / "vae")
  weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
  with open(weights, "r+b") as f:
    f.truncate(f.seek(0, 2) - 100)
  _expect_failure(tmp_path, ["--src", str(tmp_path / "vae")], "truncated")


class _Payload:
  """Unpickling this calls open(path, "w"): code a checkpoint must never get to run."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return open, (self.path, "w")


def test_pickle_with_code_is_refused(tmp_path):
  marker = tmp_path / "ran"
  state = wan_state_dict(random_diffusers_vae(TINY, 0), TINY)
  state["payload"] = _Payload(marker)
  torch.save(state, tmp_path / "Wan2.1_VAE.pth")
  _expect_failure(tmp_path, ["--src", str(tmp_path / "Wan2.1_VAE.pth"), "--preset", "tiny"], "refused")
  assert not marker.exists()


def test_unsupported_diffusers_config(tmp_path):
  random_diffusers_vae(TINY, 0).save_pretrained(tmp_path / "vae")
  config_file = tmp_path / "vae" / "config.json"
  config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "is_residual": True}))
  _expect_failure(tmp_path, ["--src", str(tmp_path / "vae")], "is_residual=True (supported: False)")


def test_not_a_vae_checkpoint(tmp_path):
  torch.save({"blocks.0.weight": torch.zeros(2)}, tmp_path / "model.pth")
  _expect_failure(tmp_path, ["--src", str(tmp_path / "model.pth")], "not a Wan VAE checkpoint")
