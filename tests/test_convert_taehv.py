"""`python -m convert.taehv`: the reference's state dict, saved as .pth and as .safetensors, converts to params that
reproduce the reference's outputs (tests/fixtures/taehv_tiny.npz); a broken file fails with every problem named,
and nothing is written."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from convert import taehv as convert_taehv
from liveedit_jax import taehv
from tests.test_convert_vae import _Payload
from tests.test_taehv import check_golden, fixture, fixture_params, state_dict


def _torch_state(edit=None) -> dict[str, torch.Tensor]:
  state = {k: torch.from_numpy(v) for k, v in state_dict("tiny").items()}
  if edit is not None:
    edit(state)
  return state


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_round_trip(tmp_path, capsys, suffix):
  src = tmp_path / f"taew2_1.{suffix}"
  if suffix == "pth":
    torch.save(_torch_state(), src)
  else:
    save_file(_torch_state(), str(src))
  dst = tmp_path / "converted"
  convert_taehv.main(["--src", str(src), "--dst", str(dst), "--preset", "tiny"])
  assert f"wrote {dst}" in capsys.readouterr().out
  config, params = taehv.load_taehv(dst)
  assert config == fixture("tiny")[0]
  check_golden("tiny", params)


def test_bfloat16_params(tmp_path):
  src = tmp_path / "taew2_1.pth"
  torch.save(_torch_state(), src)
  dst = tmp_path / "converted"
  convert_taehv.main(["--src", str(src), "--dst", str(dst), "--preset", "tiny"])
  with pytest.raises(SystemExit, match="exists; pass --overwrite"):
    convert_taehv.main(["--src", str(src), "--dst", str(dst), "--preset", "tiny", "--dtype", "bfloat16"])
  convert_taehv.main(["--src", str(src), "--dst", str(dst), "--preset", "tiny", "--dtype", "bfloat16", "--overwrite"])
  config, params = taehv.load_taehv(dst, compute_dtype="bfloat16")
  assert (config.param_dtype, config.compute_dtype) == ("bfloat16", "bfloat16")
  got, want = params["decoder"]["block_1_2"]["conv1"]["kernel"], fixture_params("tiny")["decoder"]["block_1_2"]
  assert got.dtype == np.dtype("bfloat16")
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want["conv1"]["kernel"]).astype(got.dtype))


def test_tgrow_keeps_the_last_frames(tmp_path):
  """A TGrow conv stored with two frames' channels where the config grows by one (the reference's
  `patch_tgrow_layers`): the last frame's rows are used, so the outputs are the fixture's."""
  def edit(state):
    key = "decoder.7.conv.weight"  # tiny's first decoder stage does not grow in time
    state[key] = torch.cat([torch.randn_like(state[key]), state[key]], 0)

  torch.save(_torch_state(edit), tmp_path / "grown.pth")
  convert_taehv.main(["--src", str(tmp_path / "grown.pth"), "--dst", str(tmp_path / "out"), "--preset", "tiny"])
  check_golden("tiny", taehv.load_taehv(tmp_path / "out")[1])


def _expect_failure(tmp_path, args: list[str], *messages: str) -> None:
  """The CLI exits naming every message, and writes nothing under tmp_path/out."""
  with pytest.raises(SystemExit) as err:
    convert_taehv.main([*args, "--dst", str(tmp_path / "out" / "taehv")])
  for message in messages:
    assert message in str(err.value.code)
  assert not (tmp_path / "out").exists()


def test_missing_extra_and_misshaped_keys_are_all_named(tmp_path):
  def edit(state):
    del state["encoder.4.conv.2.bias"]
    state["decoder.23.weight"] = torch.zeros(3, 6, 3, 3)
    state["decoder.14.weight"] = torch.zeros(8, 12, 1, 1)

  torch.save(_torch_state(edit), tmp_path / "broken.pth")
  _expect_failure(tmp_path, ["--src", str(tmp_path / "broken.pth"), "--preset", "tiny"],
                  "cannot convert, 3 problem(s)", "missing key encoder.4.conv.2.bias (expected shape (8,))",
                  "unexpected key decoder.23.weight (shape (3, 6, 3, 3))",
                  "wrong shape for decoder.14.weight: expected (8, 12, 3, 3), found (8, 12, 1, 1)")


def test_wrong_preset_is_reported_as_shapes(tmp_path):
  save_file(_torch_state(), str(tmp_path / "tiny.safetensors"))
  _expect_failure(tmp_path, ["--src", str(tmp_path / "tiny.safetensors")],
                  "wrong shape for encoder.0.weight: expected (64, 3, 3, 3), found (8, 3, 3, 3)")


def test_truncated_and_foreign_files(tmp_path):
  save_file(_torch_state(), str(tmp_path / "tiny.safetensors"))
  with open(tmp_path / "tiny.safetensors", "r+b") as f:
    f.truncate(f.seek(0, 2) - 100)
  _expect_failure(tmp_path, ["--src", str(tmp_path / "tiny.safetensors"), "--preset", "tiny"], "truncated")
  torch.save({"blocks.0.weight": torch.zeros(2)}, tmp_path / "model.pth")
  _expect_failure(tmp_path, ["--src", str(tmp_path / "model.pth")], "not a TAEHV checkpoint")


def test_pickle_with_code_is_refused(tmp_path):
  marker = tmp_path / "ran"
  state = _torch_state()
  state["payload"] = _Payload(marker)
  torch.save(state, tmp_path / "taew2_1.pth")
  _expect_failure(tmp_path, ["--src", str(tmp_path / "taew2_1.pth"), "--preset", "tiny"], "refused")
  assert not marker.exists()
