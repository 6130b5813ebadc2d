"""DiT converter: every layout round-trips through the CLI and `load_dit`; bad checkpoints fail clearly."""

import random

import jax
import numpy as np
import pytest
import safetensors.torch
import torch

from convert.common import CheckpointError
from convert.wan_dit import convert_dit, main
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import count_params, dit_forward, init_dit_params, load_dit
from tests.numerics import FP32_RTOL, rel_err
from tests.torch_reference import diffusers_dit_forward, make_diffusers_dit, wan_state_dict

TINY = DiTConfig.preset("tiny")
TINY_T2V = TINY.replace(in_channels=16)


@pytest.fixture(scope="module")
def reference():
  seed = random.SystemRandom().randrange(2**31)
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((1, 3, 4, 6, TINY.in_channels)).astype(np.float32)
  t = rng.uniform(0, 1000, (1, 3)).astype(np.float32)
  ctx = rng.standard_normal((1, TINY.text_len, TINY.text_dim)).astype(np.float32)
  model = make_diffusers_dit(TINY, seed)
  return model, (x, t, ctx), diffusers_dit_forward(model, x, t, ctx)


def _write(layout: str, model, path):
  """Saves the reference in `layout`; returns the --src to pass."""
  if layout == "diffusers":
    model.save_pretrained(path)
    return path
  state = wan_state_dict(model)
  if layout == "wan-safetensors":
    path.mkdir()
    safetensors.torch.save_file(state, path / "diffusion_pytorch_model.safetensors")
    return path
  if layout == "wan-pth":
    torch.save(state, path.with_suffix(".pth"))
    return path.with_suffix(".pth")
  critic = {f"model.{k}": torch.zeros_like(v) for k, v in state.items()}
  fsdp = {f"model._fsdp_wrapped_module.{k}": v for k, v in state.items()}
  torch.save({"generator": fsdp, "critic": critic}, path.with_suffix(".pt"))
  return path.with_suffix(".pt")


@pytest.mark.parametrize("layout", ["diffusers", "wan-safetensors", "wan-pth", "self-forcing"])
def test_round_trip_through_cli_and_load_dit(layout, reference, tmp_path):
  model, (x, t, ctx), expected = reference
  src = _write(layout, model, tmp_path / "src")
  args = ["--src", str(src), "--dst", str(tmp_path / "dst"), "--preset", "tiny"]
  if layout == "self-forcing":
    args += ["--key", "generator"]
  assert main(args) == 0
  cfg, params = load_dit(str(tmp_path / "dst"))
  assert cfg == TINY
  err = rel_err(jax.jit(dit_forward, static_argnums=0)(cfg, params, x, t, ctx), expected)
  assert err <= FP32_RTOL, f"{layout}: relative error {err:.2e}"


def test_widening_to_32_channels_keeps_the_t2v_model(tmp_path):
  """A 16-channel T2V checkpoint widened with zeros ignores the source latent: output equals the T2V model's."""
  seed = random.SystemRandom().randrange(2**31)
  model = make_diffusers_dit(TINY_T2V, seed)
  model.save_pretrained(tmp_path / "t2v")
  cfg, params = convert_dit(tmp_path / "t2v", in_channels=32, preset="tiny")
  assert cfg.in_channels == 32
  assert not np.any(params["patch_embedding"]["kernel"][..., 16:, :])
  rng = np.random.default_rng(seed)
  noisy = rng.standard_normal((1, 3, 4, 4, 16)).astype(np.float32)
  source = rng.standard_normal((1, 3, 4, 4, 16)).astype(np.float32)
  t = rng.uniform(0, 1000, (1,)).astype(np.float32)
  ctx = rng.standard_normal((1, TINY.text_len, TINY.text_dim)).astype(np.float32)
  ours = dit_forward(cfg, params, np.concatenate([noisy, source], -1), t, ctx)
  assert rel_err(ours, diffusers_dit_forward(model, noisy, t, ctx)) <= FP32_RTOL


def test_bfloat16_conversion(reference, tmp_path):
  model, _, _ = reference
  model.save_pretrained(tmp_path / "ref")
  cfg, params = convert_dit(tmp_path / "ref", tmp_path / "dst", preset="tiny", dtype="bfloat16")
  assert cfg.param_dtype == "bfloat16"
  assert {str(a.dtype) for a in jax.tree.leaves(params)} == {"bfloat16"}
  _, loaded = load_dit(str(tmp_path / "dst"))
  assert {str(a.dtype) for a in jax.tree.leaves(loaded)} == {"bfloat16"}


def test_parameter_counts():
  counts = {name: count_params(jax.eval_shape(lambda n=name: init_dit_params(DiTConfig.preset(n),
                                                                               jax.random.key(0))))
            for name in ("wan2.1-t2v-1.3b", "liveedit-1.3b")}
  assert counts["wan2.1-t2v-1.3b"] == 1_418_996_800
  assert counts["liveedit-1.3b"] - counts["wan2.1-t2v-1.3b"] == 98_304


def _bad(model, tmp_path, edit):
  state = wan_state_dict(model)
  edit(state)
  src = tmp_path / "bad.safetensors"
  safetensors.torch.save_file(state, src)
  return src


@pytest.mark.parametrize("case, edit, message", [
    ("missing", lambda s: s.pop("blocks.1.cross_attn.k.weight"),
     "missing key blocks.1.cross_attn.k.weight (expected shape (64, 64))"),
    ("extra", lambda s: s.update({"blocks.0.extra.weight": torch.zeros(3)}),
     "unexpected key blocks.0.extra.weight (shape (3,))"),
    ("shape", lambda s: s.update({"blocks.0.ffn.0.weight": torch.zeros(96, 63)}),
     "wrong shape for blocks.0.ffn.0.weight: expected (96, 64), found (96, 63)"),
])
def test_bad_checkpoints_are_named_and_nothing_is_written(case, edit, message, reference, tmp_path, capsys):
  src = _bad(reference[0], tmp_path, edit)
  dst = tmp_path / "dst"
  assert main(["--src", str(src), "--dst", str(dst), "--preset", "tiny"]) == 1
  assert message in capsys.readouterr().err
  assert not dst.exists() and not list(tmp_path.glob(".dst*"))


def test_all_problems_are_reported_together(reference, tmp_path):
  def edit(s):
    s.pop("head.modulation")
    s["blocks.0.self_attn.q.bias"] = torch.zeros(5)

  with pytest.raises(CheckpointError) as info:
    convert_dit(_bad(reference[0], tmp_path, edit), preset="tiny")
  assert "missing key head.modulation" in str(info.value)
  assert "wrong shape for blocks.0.self_attn.q.bias: expected (64,), found (5,)" in str(info.value)


def test_truncated_files(reference, tmp_path):
  model = reference[0]
  good = _bad(model, tmp_path, lambda s: None)
  data = good.read_bytes()
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated"):
    convert_dit(cut, preset="tiny")
  torch.save(wan_state_dict(model), tmp_path / "full.pth")
  data = (tmp_path / "full.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"cut\.pth.*(truncated|corrupt)"):
    convert_dit(tmp_path / "cut.pth", preset="tiny")


class _Payload:
  """Pickles to a call of os.system: loading it with full unpickling would run a command."""

  def __reduce__(self):
    import os  # noqa: PLC0415

    return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
  src = tmp_path / "evil.pt"
  torch.save({"generator": {"model.patch_embedding.bias": torch.zeros(3)}, "payload": _Payload()}, src)
  with pytest.raises(CheckpointError, match=r"evil\.pt: refused: the pickle holds objects"):
    convert_dit(src)


def test_wrong_key_and_unknown_format(reference, tmp_path):
  model = reference[0]
  src = _write("self-forcing", model, tmp_path / "sf")
  with pytest.raises(CheckpointError, match=r"sf\.pt: has no top-level entry 'generator_ema'; found \['critic', 'generator'\]"):
    convert_dit(src, key="generator_ema")
  notes = tmp_path / "notes.txt"
  notes.write_text("not a checkpoint")
  with pytest.raises(CheckpointError, match=r"notes\.txt: unknown checkpoint type"):
    convert_dit(notes)
