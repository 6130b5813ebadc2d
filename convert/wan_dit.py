"""Convert a Wan2.1 DiT checkpoint (Wan, diffusers or Self-Forcing / LiveEdit layout) to a liveedit-jax directory.

    python -m convert.wan_dit --src Wan2.1-T2V-1.3B/ --dst checkpoints/liveedit-1.3b --in-channels 32
    python -m convert.wan_dit --src model.pt --key generator_ema --dst checkpoints/generator

Layouts (key names as in Wan2.1's `wan/modules/model.py`, diffusers' `WanTransformer3DModel` and Self-Forcing's
checkpoints):
  wan           `diffusion_pytorch_model.safetensors` (+ `config.json`) or a `.pth` with Wan's key names.
  diffusers     a `WanTransformer3DModel.save_pretrained` directory (`condition_embedder.*`, `attn1/attn2`, ...).
  self-forcing  a training file `{"generator" | "generator_ema" | "critic": {"model.<wan key>": ...}}`; `model.`,
                `module.` and FSDP / checkpoint-wrapper fragments are stripped.
The widths come from the tensors; the head count from `config.json` when present, else `--num-heads`, else
head dim 128 (Wan's). `--in-channels 32` widens a 16-channel patch embedding with zeros for the source latent.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from convert.common import (CheckpointError, Rule, TensorRef, apply_rules, config_json_beside, error_line,
                            linear_rules, read_checkpoint, strip_key_prefixes, top_level_keys)
from liveedit_jax import cli
from liveedit_jax.config import CLI_DTYPES, DIT_PRESETS, DiTConfig
from liveedit_jax.dit import init_dit_params
from liveedit_jax.param_io import save_params

FORMATS = ("auto", "wan", "diffusers", "self-forcing")
TRAINING_KEYS = ("generator", "generator_ema", "critic")

# Names of each parameter in the two key layouts: ours → (wan, diffusers). {n} is the block index.
_BLOCK_LINEARS = {
    ("self_attn", "q"): ("self_attn.q", "attn1.to_q"),
    ("self_attn", "k"): ("self_attn.k", "attn1.to_k"),
    ("self_attn", "v"): ("self_attn.v", "attn1.to_v"),
    ("self_attn", "o"): ("self_attn.o", "attn1.to_out.0"),
    ("cross_attn", "q"): ("cross_attn.q", "attn2.to_q"),
    ("cross_attn", "k"): ("cross_attn.k", "attn2.to_k"),
    ("cross_attn", "v"): ("cross_attn.v", "attn2.to_v"),
    ("cross_attn", "o"): ("cross_attn.o", "attn2.to_out.0"),
}
_BLOCK_NORMS = {  # RMSNorm scales and the cross-attention LayerNorm (Wan's norm3 is diffusers' norm2)
    ("self_attn", "norm_q", "scale"): ("self_attn.norm_q.weight", "attn1.norm_q.weight"),
    ("self_attn", "norm_k", "scale"): ("self_attn.norm_k.weight", "attn1.norm_k.weight"),
    ("cross_attn", "norm_q", "scale"): ("cross_attn.norm_q.weight", "attn2.norm_q.weight"),
    ("cross_attn", "norm_k", "scale"): ("cross_attn.norm_k.weight", "attn2.norm_k.weight"),
    ("norm3", "scale"): ("norm3.weight", "norm2.weight"),
    ("norm3", "bias"): ("norm3.bias", "norm2.bias"),
}
_TOP_LINEARS = {
    ("text_embedding", "fc1"): ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding", "fc2"): ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding", "fc1"): ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding", "fc2"): ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_embedding", "projection"): ("time_projection.1", "condition_embedder.time_proj"),
    ("head", "proj"): ("head.head", "proj_out"),
}


def dit_rules(cfg: DiTConfig, layout: str, source_in_channels: int) -> list[Rule]:
  """The conversion table for `layout` ("wan" or "diffusers") into the parameter tree of `cfg`."""
  col = 0 if layout == "wan" else 1
  d, f = cfg.dim, cfg.ffn_dim
  widths = {("text_embedding", "fc1"): (cfg.text_dim, d), ("text_embedding", "fc2"): (d, d),
            ("time_embedding", "fc1"): (cfg.freq_dim, d), ("time_embedding", "fc2"): (d, d),
            ("time_embedding", "projection"): (d, 6 * d), ("head", "proj"): (d, cfg.patch_dim)}
  pt, ph, pw = cfg.patch_size

  def patch_kernel(w):  # torch Conv3d [D, C, kt, kh, kw] → [kt, kh, kw, C_in, D], zero rows for new channels
    k = np.transpose(w, (2, 3, 4, 1, 0))
    return np.pad(k, [(0, 0)] * 3 + [(0, cfg.in_channels - k.shape[3]), (0, 0)])

  rules = [
      Rule("patch_embedding.weight", (d, source_in_channels, pt, ph, pw), ("patch_embedding", "kernel"),
           transform=patch_kernel),
      Rule("patch_embedding.bias", (d,), ("patch_embedding", "bias")),
      Rule(("head.modulation", "scale_shift_table")[col], (1, 2, d), ("head", "modulation"),
           transform=lambda a: a.reshape(2, d)),
  ]
  for target, names in _TOP_LINEARS.items():
    rules += linear_rules(names[col], target, *widths[target])
  for n in range(cfg.num_layers):
    prefix = f"blocks.{n}."
    rules.append(Rule(prefix + ("modulation", "scale_shift_table")[col], (1, 6, d), ("blocks", "modulation"), n,
                      lambda a: a.reshape(6, d)))
    for target, names in _BLOCK_LINEARS.items():
      rules += linear_rules(prefix + names[col], ("blocks", *target), d, d, n)
    for target, names in _BLOCK_NORMS.items():
      rules.append(Rule(prefix + names[col], (d,), ("blocks", *target), n))
    ffn_names = (("ffn.0", "ffn.2"), ("ffn.net.0.proj", "ffn.net.2"))[col]
    rules += linear_rules(prefix + ffn_names[0], ("blocks", "ffn", "fc1"), d, f, n)
    rules += linear_rules(prefix + ffn_names[1], ("blocks", "ffn", "fc2"), f, d, n)
  return rules


def detect_layout(refs: Mapping[str, TensorRef]) -> str:
  return "diffusers" if any(k.startswith("condition_embedder.") for k in refs) else "wan"


def _shape(refs: Mapping[str, TensorRef], key: str, origin: str) -> tuple[int, ...]:
  if key not in refs:
    raise CheckpointError(f"{origin}: missing key {key}, needed to read the model's widths")
  return refs[key].shape


def infer_config(refs: Mapping[str, TensorRef], layout: str, origin: str, config_json: dict | None,
                 num_heads: int | None, in_channels: int | None, dtype: str,
                 preset: str | None = None) -> tuple[DiTConfig, int]:
  """The DiTConfig the tensors describe, and the source's patch-embedding input channels.

  With `preset`, the tensors must match that preset's widths, and what tensors cannot tell (text_len, head count)
  comes from the preset.
  """
  wan = layout == "wan"
  d, c_src = _shape(refs, "patch_embedding.weight", origin)[:2]
  ffn = _shape(refs, "blocks.0." + ("ffn.0.weight" if wan else "ffn.net.0.proj.weight"), origin)[0]
  text_dim = _shape(refs, "text_embedding.0.weight" if wan else "condition_embedder.text_embedder.linear_1.weight",
                    origin)[1]
  freq_dim = _shape(refs, "time_embedding.0.weight" if wan else "condition_embedder.time_embedder.linear_1.weight",
                    origin)[1]
  out_features = _shape(refs, "head.head.weight" if wan else "proj_out.weight", origin)[0]
  layers = 1 + max((int(m.group(1)) for k in refs if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
  config_json = config_json or {}
  if preset is not None:
    base = DiTConfig.preset(preset)
    config_json = {"num_heads": base.num_heads, "text_len": base.text_len, "eps": base.eps,
                   "patch_size": base.patch_size, **config_json}
    in_channels = in_channels or base.in_channels
  heads = num_heads or config_json.get("num_heads") or config_json.get("num_attention_heads") or d // 128
  patch = tuple(config_json.get("patch_size", (1, 2, 2)))
  latent = out_features // int(np.prod(patch))
  fields = dict(in_channels=in_channels or c_src, latent_channels=latent, dim=d, ffn_dim=ffn, freq_dim=freq_dim,
                num_heads=heads, num_layers=layers, text_dim=text_dim, patch_size=patch, param_dtype=dtype,
                eps=config_json.get("eps", 1e-6), text_len=config_json.get("text_len", 512))
  name = next((n for n, p in DIT_PRESETS.items()
               if all(getattr(p, k) == v for k, v in fields.items() if k != "param_dtype")), "converted")
  if preset is not None and name != preset:
    differ = {k: (getattr(base, k), v) for k, v in fields.items() if k != "param_dtype" and getattr(base, k) != v}
    raise CheckpointError(f"{origin}: does not match preset {preset!r}; (preset, checkpoint) differ in {differ}")
  try:
    cfg = DiTConfig(name=name, **fields)
  except ValueError as err:
    raise CheckpointError(f"{origin}: the tensors describe an invalid model: {err}") from err
  if cfg.in_channels not in (c_src, 2 * c_src) or (cfg.in_channels != c_src and c_src != latent):
    raise CheckpointError(f"{origin}: cannot make {cfg.in_channels} input channels from a patch embedding with "
                          f"{c_src}; widening only goes from {latent} (text-to-video) to {2 * latent} (editing)")
  return cfg, c_src


def convert_dit(src: str | Path, dst: str | Path | None = None, *, fmt: str = "auto", key: str | None = None,
                in_channels: int | None = None, num_heads: int | None = None, preset: str | None = None,
                dtype: str = "float32", overwrite: bool = False) -> tuple[DiTConfig, dict[str, Any]]:
  """Converts `src` and, if `dst` is given, writes it (atomically). Returns (config, params as numpy)."""
  src = Path(src)
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
  top = top_level_keys(src)
  training_keys = [k for k in TRAINING_KEYS if k in top]
  if fmt == "self-forcing" or (fmt == "auto" and training_keys):
    if not training_keys:
      raise CheckpointError(f"{src}: not a Self-Forcing/LiveEdit training file: no top-level "
                            f"{' / '.join(TRAINING_KEYS)} entry (found {sorted(top)})")
    key = key or ("generator_ema" if "generator_ema" in training_keys else training_keys[0])
    refs = read_checkpoint(src, key)
  elif key is not None:
    raise CheckpointError(f"{src}: --key {key} given but the file has no top-level {' / '.join(TRAINING_KEYS)}")
  else:
    refs = read_checkpoint(src)
  refs = strip_key_prefixes(refs)
  layout = detect_layout(refs) if fmt in ("auto", "self-forcing") else fmt
  origin = f"{src}" + (f" [{key}]" if key else "")
  cfg, c_src = infer_config(refs, layout, origin, config_json_beside(src), num_heads, in_channels, dtype,
                             preset)
  abstract = jax.eval_shape(lambda: init_dit_params(cfg, jax.random.key(0)))
  params = apply_rules(refs, dit_rules(cfg, layout, c_src), abstract, dtype, origin)
  if dst is not None:
    save_params(dst, "dit", dataclasses.asdict(cfg), params, overwrite=overwrite)
  return cfg, params


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(prog="python -m convert.wan_dit", description=__doc__)
  parser.add_argument("--src", required=True, help="checkpoint file or model directory")
  parser.add_argument("--dst", required=True, help="output directory (config.json + Orbax params)")
  parser.add_argument("--format", default="auto", choices=FORMATS)
  parser.add_argument("--key", choices=TRAINING_KEYS, help="model inside a Self-Forcing/LiveEdit training file")
  parser.add_argument("--in-channels", type=int, help="32 to widen a text-to-video checkpoint for editing")
  parser.add_argument("--num-heads", type=int, help="head count when no config.json says (default dim/128)")
  parser.add_argument("--preset", choices=sorted(DIT_PRESETS), help="check the tensors against this preset and "
                      "take what they cannot tell (text_len, heads) from it")
  parser.add_argument("--dtype", default="float32", choices=CLI_DTYPES)
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
  args = parser.parse_args(argv)
  try:
    cfg, _ = convert_dit(args.src, args.dst, fmt=args.format, key=args.key, in_channels=args.in_channels,
                         num_heads=args.num_heads, preset=args.preset, dtype=args.dtype, overwrite=args.overwrite)
  except (CheckpointError, FileExistsError) as err:
    print(error_line(err), file=sys.stderr)  # other mistakes reach `cli.run` as they are
    return 1
  print(f"wrote {args.dst}: {cfg.name} ({cfg.num_layers} layers, dim {cfg.dim}, in_channels {cfg.in_channels}, "
        f"{args.dtype})")
  return 0


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage); main's 1 passes through
