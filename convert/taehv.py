"""TAEHV weight files (madebyollin/taehv) → a converted directory (param_io kind "taehv").

    python -m convert.taehv --src taew2_1.pth --dst checkpoints/taew2_1
    python -m convert.taehv --src safetensors/taew2_1.safetensors --dst checkpoints/taew2_1

The files are the reference `TAEHV` module's state dict: two `nn.Sequential`s whose keys are layer indices
(`encoder.4.conv.0.weight`, `decoder.7.conv.weight`). They store no config: `--preset` (default taew2_1) gives the
sizes. `.pth` files are read with `torch.load(weights_only=True)` only, which refuses a pickle that would run code.

As the reference's `patch_tgrow_layers` does, a TGrow conv stored with more output frames than the config's stride
keeps its last frames' channels (so a file can feed a decoder with fewer temporal upsamples). The params are
written in `--dtype` (default float32); compute stays float32 until `load_taehv(path, compute_dtype=...)`. Every
missing, unexpected or mis-shaped key is reported by name with its expected and found shapes, and then nothing is
written.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Mapping

import jax

from convert.common import (CheckpointError, Rule, TensorRef, apply_rules, conv_rules, error_line,
                            pointwise_conv_rules, read_checkpoint, strip_key_prefixes)
from liveedit_jax import cli, param_io
from liveedit_jax.config import CLI_DTYPES
from liveedit_jax.taehv import BLOCKS_PER_STAGE, KIND, STAGES, TAEHV_PRESETS, TAEHVConfig, init_taehv_params


def _encoder_index(stage: int) -> int:
  """Sequential index of an encoder stage's TPool: conv, ReLU, then per stage TPool, strided conv, MemBlocks."""
  return 2 + stage * (2 + BLOCKS_PER_STAGE)


def _decoder_index(stage: int) -> int:
  """Sequential index of a decoder stage's first MemBlock: Clamp, conv, ReLU, then per stage MemBlocks,
  Upsample, TGrow, conv."""
  return 3 + stage * (3 + BLOCKS_PER_STAGE)


def _memblock_rules(source: str, target: tuple[str, ...], width: int) -> list[Rule]:
  """A MemBlock's `conv` Sequential (3×3 convs at 0, 2, 4; ReLUs between); its skip is the identity, since every
  published MemBlock keeps its width."""
  return [*conv_rules(f"{source}.conv.0", (*target, "conv1"), 2 * width, width, (3, 3)),
          *conv_rules(f"{source}.conv.2", (*target, "conv2"), width, width, (3, 3)),
          *conv_rules(f"{source}.conv.4", (*target, "conv3"), width, width, (3, 3))]


def _grow_key(config: TAEHVConfig, stage: int) -> str:
  return f"decoder.{_decoder_index(stage) + BLOCKS_PER_STAGE + 1}.conv.weight"


def taehv_rules(config: TAEHVConfig) -> list[Rule]:
  """The conversion table: reference state-dict key → target leaf, walking both Sequentials in order."""
  cfg, n = config, BLOCKS_PER_STAGE
  p2, w = cfg.patch_size ** 2, cfg.encoder_width
  rules = conv_rules("encoder.0", ("encoder", "conv_in"), 3 * p2, w, (3, 3))
  for s in range(STAGES):
    i = _encoder_index(s)
    stride = 2 if cfg.encoder_time_downscale[s] else 1
    rules += pointwise_conv_rules(f"encoder.{i}.conv", ("encoder", f"pool_{s}"), stride * w, w, 2, bias=False)
    rules += conv_rules(f"encoder.{i + 1}", ("encoder", f"down_{s}"), w, w, (3, 3), bias=False)
    for j in range(n):
      rules += _memblock_rules(f"encoder.{i + 2 + j}", ("encoder", f"block_{s}_{j}"), w)
  rules += conv_rules(f"encoder.{_encoder_index(STAGES)}", ("encoder", "conv_out"), w, cfg.latent_channels, (3, 3))

  widths = cfg.decoder_widths
  rules += conv_rules("decoder.1", ("decoder", "conv_in"), cfg.latent_channels, widths[0], (3, 3))
  for s in range(STAGES):
    i = _decoder_index(s)
    for j in range(n):
      rules += _memblock_rules(f"decoder.{i + j}", ("decoder", f"block_{s}_{j}"), widths[s])
    stride = 2 if cfg.decoder_time_upscale[s] else 1
    rules += pointwise_conv_rules(f"decoder.{i + n + 1}.conv", ("decoder", f"grow_{s}"), widths[s],
                                  stride * widths[s], 2, bias=False)
    rules += conv_rules(f"decoder.{i + n + 2}", ("decoder", f"conv_{s}"), widths[s], widths[s + 1], (3, 3),
                        bias=False)
  return rules + conv_rules(f"decoder.{_decoder_index(STAGES) + 1}", ("decoder", "conv_out"), widths[-1], 3 * p2,
                            (3, 3))


def patch_tgrow_layers(refs: Mapping[str, TensorRef], config: TAEHVConfig) -> dict[str, TensorRef]:
  """TGrow weights [k·C, C, 1, 1] with k above the config's stride keep their last stride·C rows (the last frames),
  as the reference's `patch_tgrow_layers`; anything else is left for `apply_rules` to check."""
  out = dict(refs)
  for s in range(STAGES):
    key, width = _grow_key(config, s), config.decoder_widths[s]
    rows = (2 if config.decoder_time_upscale[s] else 1) * width
    ref = refs.get(key)
    if ref is not None and len(ref.shape) == 4 and ref.shape[0] > rows and ref.shape[0] % width == 0 \
        and ref.shape[1:] == (width, 1, 1):
      out[key] = TensorRef((rows, *ref.shape[1:]), lambda ref=ref, rows=rows: ref.load()[-rows:])
  return out


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "float32", preset: str = "taew2_1",
            overwrite: bool = False, config: TAEHVConfig | None = None) -> Path:
  """Converts src into dst (see the module docstring); returns dst. Raises CheckpointError before writing.

  config: sizes that are no preset (they replace `preset`).
  """
  src, dst = Path(src), Path(dst)
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
  config = (config or TAEHVConfig.preset(preset)).replace(param_dtype=dtype)
  refs = patch_tgrow_layers(strip_key_prefixes(read_checkpoint(src)), config)
  if not any(k.startswith(("encoder.", "decoder.")) for k in refs):
    raise CheckpointError(f"{src}: not a TAEHV checkpoint: no encoder.* or decoder.* keys (first keys: "
                          f"{sorted(refs)[:5]})")
  abstract = jax.eval_shape(functools.partial(init_taehv_params, config), jax.random.key(0))
  params = apply_rules(refs, taehv_rules(config), abstract, dtype, str(src))
  return param_io.save_params(dst, KIND, config.to_dict(), params, overwrite)


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m convert.taehv", description=__doc__)
  parser.add_argument("--src", required=True, help="taew2_1.pth or taew2_1.safetensors")
  parser.add_argument("--dst", required=True, help="output directory")
  parser.add_argument("--dtype", choices=CLI_DTYPES, default="float32")
  parser.add_argument("--preset", choices=sorted(TAEHV_PRESETS), default="taew2_1", help="sizes")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
  args = parser.parse_args(argv)
  try:
    path = convert(args.src, args.dst, args.dtype, args.preset, args.overwrite)
  except (CheckpointError, FileExistsError) as err:
    # SystemExit carries the line (callers of `main` rely on it); other mistakes reach `cli.run` as they are.
    raise SystemExit(error_line(err)) from err
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
