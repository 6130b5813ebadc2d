"""The model configs' shared checks (`config.PresetConfig`): every kind names a bad dtype field and its preset."""

import argparse
import importlib
import typing

import pytest

from liveedit_jax import stream
from liveedit_jax.config import CLI_DTYPES, DiTConfig
from liveedit_jax.mask_cache import CacheOn
from liveedit_jax.stream_step import Refresh
from liveedit_jax.taehv import TAEHVConfig
from liveedit_jax.umt5 import UMT5Config
from liveedit_jax.vae import VAEConfig


@pytest.mark.parametrize("config_class", [DiTConfig, VAEConfig, TAEHVConfig, UMT5Config], ids=lambda c: c.__name__)
@pytest.mark.parametrize("field", ["compute_dtype", "param_dtype"])
def test_a_bad_dtype_is_named(config_class, field):
  for dtype in ("float32", "bfloat16", "float16"):
    assert getattr(config_class.preset("tiny", **{field: dtype}), field) == dtype
  with pytest.raises(ValueError, match=f"^tiny: {field} must be one of \\('float32', 'bfloat16', 'float16'\\), "
                                       f"got 'float64'$"):
    config_class.preset("tiny", **{field: "float64"})


def test_stream_options_offer_exactly_the_config_literals():
  """The CLI's choices are the configs' Literals, so a new cache placement or refresh shows up in --help."""
  group = stream.add_stream_options(argparse.ArgumentParser().add_argument_group())
  choices = {action.dest: tuple(action.choices) for action in group._group_actions if action.choices}
  assert choices["cache_on"] == typing.get_args(CacheOn) == ("self_attn", "ffn", "none")
  assert choices["refresh"] == typing.get_args(Refresh) == ("clean", "none")


CLIS_WITH_DTYPE = ["convert.umt5", "convert.wan_vae", "convert.taehv", "convert.wan_dit", "train.prepare_data",
                   "liveedit_jax.stream", "liveedit_jax.evaluate", "liveedit_jax.serve", "liveedit_jax.bench.vae",
                   "liveedit_jax.bench.e2e", "liveedit_jax.bench.stream"]


@pytest.mark.parametrize("module", CLIS_WITH_DTYPE)
def test_every_dtype_option_offers_the_same_choices(module, capsys):
  """Each command line's --dtype refuses float16 at parse time, naming the shared choices (`CLI_DTYPES`)."""
  with pytest.raises(SystemExit) as exit_info:
    importlib.import_module(module).main(["--dtype", "float16"])
  assert exit_info.value.code == 2
  choices = ", ".join(f"'{d}'" for d in CLI_DTYPES)
  assert f"argument --dtype: invalid choice: 'float16' (choose from {choices})" in capsys.readouterr().err


def test_a_dit_config_written_before_kernels_was_named_loads():
  """Directories converted before `DiTConfig.kernels` had its name store it as "attention" (the shipped default
  model's config among them); they load with the same value, and a fresh round trip writes the new name."""
  written = DiTConfig.preset("tiny", kernels="xla").to_dict()
  old = {("attention" if k == "kernels" else k): v for k, v in written.items()}
  assert "kernels" not in old and DiTConfig.from_dict(old) == DiTConfig.from_dict(written)
  assert DiTConfig.from_dict(old).kernels == "xla" and "attention" not in written
