"""Wan2.1 VAE checkpoints → a converted directory (param_io kind "vae").

    python -m convert.wan_vae --src Wan2.1-T2V-1.3B/Wan2.1_VAE.pth --dst checkpoints/wan2.1-vae
    python -m convert.wan_vae --src Wan2.1-T2V-1.3B-Diffusers/vae --dst checkpoints/wan2.1-vae

Layouts (key names as in Wan2.1's `wan/modules/vae.py` and diffusers' `AutoencoderKLWan`; 194 tensors each):
  - "wan": Wan's `Wan2.1_VAE.pth` (pass the file: Wan's folder holds other weights too). It stores no config:
    `--preset` (default wan2.1-vae) gives the sizes.
  - "diffusers": an `AutoencoderKLWan.save_pretrained` directory (safetensors + config.json, which gives the
    sizes unless `--preset` is passed), as diffusers' Wan pipelines ship it under `vae/`.
`--format auto` tells them apart by the first conv's key.

The output holds the params in `--dtype` (default float32, the dtype of Wan's file; the config keeps compute in
float32, `load_vae(path, compute_dtype=...)` changes it). Every missing, unexpected or mis-shaped key is reported
by name with its expected and found shapes, and then nothing is written.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from convert.common import (CheckpointError, Rule, TensorRef, apply_rules, conv_rules, error_line,
                            layout_config, pointwise_conv_rules, read_checkpoint)
from liveedit_jax import cli, param_io
from liveedit_jax.config import CLI_DTYPES
from liveedit_jax.vae import VAE_PRESETS, VAEConfig, init_vae_params

KIND = "vae"

# Source key names per layout. "{part}" is encoder or decoder; in the decoder, Wan numbers the upsample layers
# flat ({i}) while diffusers groups them per stage ({stage}, residual block {r}).
LAYOUTS: dict[str, dict[str, Any]] = {
    "wan": {
        "conv_in": "{part}.conv1", "down": "encoder.downsamples.{i}",
        "middle": ("{part}.middle.0", "{part}.middle.1", "{part}.middle.2"),
        "head_norm": "{part}.head.0", "head_conv": "{part}.head.2", "quant_conv": "conv1", "post_quant_conv": "conv2",
        "up_res": "decoder.upsamples.{i}", "up_resample": "decoder.upsamples.{i}",
        "res": {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                "shortcut": "shortcut"},
    },
    "diffusers": {
        "conv_in": "{part}.conv_in", "down": "encoder.down_blocks.{i}",
        "middle": ("{part}.mid_block.resnets.0", "{part}.mid_block.attentions.0", "{part}.mid_block.resnets.1"),
        "head_norm": "{part}.norm_out", "head_conv": "{part}.conv_out", "quant_conv": "quant_conv",
        "post_quant_conv": "post_quant_conv",
        "up_res": "decoder.up_blocks.{stage}.resnets.{r}", "up_resample": "decoder.up_blocks.{stage}.upsamplers.0",
        "res": {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                "shortcut": "conv_shortcut"},
    },
}


def _norm_rule(source: str, target: tuple[str, ...], dim: int, spatial_dims: int) -> Rule:
  """Wan's RMS_norm gamma `[C, 1, …]` (one 1 per spatial axis) → {scale [C]}."""
  return Rule(f"{source}.gamma", (dim, *(1,) * spatial_dims), (*target, "scale"), transform=np.ravel)


def _res_rules(source: str, target: tuple[str, ...], in_dim: int, out_dim: int, layout: str) -> list[Rule]:
  names = LAYOUTS[layout]["res"]
  rules = [_norm_rule(f"{source}.{names['norm1']}", (*target, "norm1"), in_dim, 3),
           *conv_rules(f"{source}.{names['conv1']}", (*target, "conv1"), in_dim, out_dim, (3, 3, 3)),
           _norm_rule(f"{source}.{names['norm2']}", (*target, "norm2"), out_dim, 3),
           *conv_rules(f"{source}.{names['conv2']}", (*target, "conv2"), out_dim, out_dim, (3, 3, 3))]
  if in_dim != out_dim:
    rules += pointwise_conv_rules(f"{source}.{names['shortcut']}", (*target, "shortcut"), in_dim, out_dim, 3)
  return rules


def _attention_rules(source: str, target: tuple[str, ...], dim: int) -> list[Rule]:
  return [_norm_rule(f"{source}.norm", (*target, "norm"), dim, 2),
          *pointwise_conv_rules(f"{source}.to_qkv", (*target, "to_qkv"), dim, 3 * dim, 2),
          *pointwise_conv_rules(f"{source}.proj", (*target, "proj"), dim, dim, 2)]


def _resample_rules(source: str, target: tuple[str, ...], dim: int, up: bool, temporal: bool) -> list[Rule]:
  """Spatial conv `resample.1` (3×3; C → C/2 when upsampling) and, for the 3-D modes, `time_conv` (3×1×1;
  C → 2C when upsampling, C → C when downsampling)."""
  rules = conv_rules(f"{source}.resample.1", (*target, "conv"), dim, dim // 2 if up else dim, (3, 3))
  if temporal:
    rules += conv_rules(f"{source}.time_conv", (*target, "time_conv"), dim, 2 * dim if up else dim, (3, 1, 1))
  return rules


def _middle_rules(part: str, width: int, layout: str) -> list[Rule]:
  res0, attn, res1 = (name.format(part=part) for name in LAYOUTS[layout]["middle"])
  return [*_res_rules(res0, (part, "middle_0"), width, width, layout),
          *_attention_rules(attn, (part, "middle_1"), width),
          *_res_rules(res1, (part, "middle_2"), width, width, layout)]


def _head_rules(part: str, width: int, out_dim: int, layout: str) -> list[Rule]:
  names = LAYOUTS[layout]
  return [_norm_rule(names["head_norm"].format(part=part), (part, "head_norm"), width, 3),
          *conv_rules(names["head_conv"].format(part=part), (part, "head_conv"), width, out_dim, (3, 3, 3))]


def vae_rules(config: VAEConfig, layout: str) -> list[Rule]:
  """The conversion table of one layout: source key → target leaf, walking the encoder and decoder in order."""
  names = LAYOUTS[layout]
  z, stages = config.z_dim, len(config.dim_mult)
  enc = config.encoder_widths
  rules = conv_rules(names["conv_in"].format(part="encoder"), ("encoder", "conv1"), 3, enc[0], (3, 3, 3))
  i, in_dim = 0, enc[0]
  for stage, width in enumerate(enc[1:]):
    for _ in range(config.num_res_blocks):
      rules += _res_rules(names["down"].format(i=i), ("encoder", f"downsamples_{i}"), in_dim, width, layout)
      i, in_dim = i + 1, width
    if stage < stages - 1:
      rules += _resample_rules(names["down"].format(i=i), ("encoder", f"downsamples_{i}"), width, up=False,
                               temporal=config.temporal_downsample[stage])
      i += 1
  rules += _middle_rules("encoder", enc[-1], layout) + _head_rules("encoder", enc[-1], 2 * z, layout)
  rules += pointwise_conv_rules(names["quant_conv"], ("quant_conv",), 2 * z, 2 * z, 3)
  rules += pointwise_conv_rules(names["post_quant_conv"], ("post_quant_conv",), z, z, 3)

  dec = config.decoder_widths
  temporal_upsample = tuple(reversed(config.temporal_downsample))
  rules += conv_rules(names["conv_in"].format(part="decoder"), ("decoder", "conv1"), z, dec[0], (3, 3, 3))
  rules += _middle_rules("decoder", dec[0], layout)
  i, in_dim = 0, dec[0]
  for stage, width in enumerate(dec[1:]):
    for r in range(config.num_res_blocks + 1):
      source = names["up_res"].format(i=i, stage=stage, r=r)
      rules += _res_rules(source, ("decoder", f"upsamples_{i}"), in_dim, width, layout)
      i, in_dim = i + 1, width
    if stage < stages - 1:
      source = names["up_resample"].format(i=i, stage=stage)
      rules += _resample_rules(source, ("decoder", f"upsamples_{i}"), width, up=True,
                               temporal=temporal_upsample[stage])
      i, in_dim = i + 1, width // 2
  return rules + _head_rules("decoder", dec[-1], 3, layout)


def detect_layout(refs: Mapping[str, TensorRef], origin: str) -> str:
  for layout in LAYOUTS:
    if f"{LAYOUTS[layout]['conv_in'].format(part='encoder')}.weight" in refs:
      return layout
  raise CheckpointError(f"{origin}: not a Wan VAE checkpoint: neither Wan's encoder.conv1.weight nor diffusers' "
                        f"encoder.conv_in.weight is present (first keys: {sorted(refs)[:5]}); pass --format if "
                        "it is one")


def convert(src: str | os.PathLike, dst: str | os.PathLike, fmt: str = "auto", dtype: str = "float32",
            preset: str | None = None, overwrite: bool = False) -> Path:
  """Converts src into dst (see the module docstring); returns dst. Raises CheckpointError before writing."""
  src, dst = Path(src), Path(dst)
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
  refs = read_checkpoint(src)
  layout = detect_layout(refs, str(src)) if fmt == "auto" else fmt
  config = layout_config(src, layout, preset, VAEConfig, "wan2.1-vae", VAEConfig.from_diffusers,
                         "AutoencoderKLWan").replace(param_dtype=dtype)
  abstract = jax.eval_shape(functools.partial(init_vae_params, config), jax.random.key(0))
  params = apply_rules(refs, vae_rules(config, layout), abstract, dtype, str(src))
  return param_io.save_params(dst, KIND, config.to_dict(), params, overwrite)


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m convert.wan_vae", description=__doc__)
  parser.add_argument("--src", required=True, help="Wan2.1_VAE.pth, or a diffusers AutoencoderKLWan directory")
  parser.add_argument("--dst", required=True, help="output directory")
  parser.add_argument("--format", choices=("auto", *LAYOUTS), default="auto")
  parser.add_argument("--dtype", choices=CLI_DTYPES, default="float32")
  parser.add_argument("--preset", choices=sorted(VAE_PRESETS),
                      help="sizes (default: wan2.1-vae for the Wan layout, config.json for diffusers)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
  args = parser.parse_args(argv)
  try:
    path = convert(args.src, args.dst, args.format, args.dtype, args.preset, args.overwrite)
  except (CheckpointError, FileExistsError) as err:
    # SystemExit carries the line (callers of `main` rely on it); other mistakes reach `cli.run` as they are.
    raise SystemExit(error_line(err)) from err
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
