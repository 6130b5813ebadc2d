"""umT5 text-encoder checkpoints → a converted directory (param_io kind "umt5") holding its tokenizer files.

    python -m convert.umt5 --src Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth --dst checkpoints/umt5-xxl
    python -m convert.umt5 --src Wan2.1-T2V-1.3B-Diffusers/text_encoder --dst checkpoints/umt5-xxl

Layouts (key names as in Wan2.1's `wan/modules/t5.py` and transformers' `UMT5EncoderModel`):
  - "wan": Wan's `models_t5_umt5-xxl-enc-bf16.pth` (242 tensors; pass the file, as Wan's folder holds other
    weights too). It stores no config: `--preset` (default umt5-xxl) gives the sizes. The tokenizer defaults to
    `google/umt5-xxl/` beside the file.
  - "transformers": a `UMT5EncoderModel.save_pretrained` directory (safetensors + config.json, which gives the
    sizes), as diffusers' Wan pipelines ship it under `text_encoder/`. The tokenizer defaults to the directory
    itself, else its sibling `tokenizer/` (the diffusers layout).
`--format auto` tells them apart by the embedding's key.

The output holds the params in `--dtype` (default bfloat16, the dtype of Wan's file), config.json with a content
fingerprint (sha256 of the weights and tokenizer files; it keys the prompt cache) and the tokenizer files under
`tokenizer/`. Every missing, unexpected or mis-shaped key is reported by name, and then nothing is written.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from convert.common import (CheckpointError, Rule, TensorRef, apply_rules, error_line, layout_config,
                            linear_rules, read_checkpoint)
from liveedit_jax import cli
from liveedit_jax.config import CLI_DTYPES
from liveedit_jax.param_io import save_params
from liveedit_jax.tokenizer import SPIECE_FILE, TOKENIZER_FILES, TOKENIZER_JSON, Tokenizer
from liveedit_jax.umt5 import KIND, TOKENIZER_DIR, UMT5_PRESETS, UMT5Config, init_umt5_params

# Source key names per layout: the embedding, the final norm, the block prefix, then each tensor of a block.
# Correspondence from spec §7.2: gate.0 ↔ wi_0 (the GELU branch), fc1 ↔ wi_1, fc2 ↔ wo.
LAYOUTS: dict[str, dict[str, str]] = {
    "wan": {
        "embedding": "token_embedding.weight", "norm": "norm.weight", "block": "blocks.{i}.",
        "norm1": "norm1.weight", "q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
        "pos_embedding": "pos_embedding.embedding.weight", "norm2": "norm2.weight",
        "gate": "ffn.gate.0", "fc1": "ffn.fc1", "fc2": "ffn.fc2",
    },
    "transformers": {
        "embedding": "shared.weight", "norm": "encoder.final_layer_norm.weight", "block": "encoder.block.{i}.",
        "norm1": "layer.0.layer_norm.weight", "q": "layer.0.SelfAttention.q", "k": "layer.0.SelfAttention.k",
        "v": "layer.0.SelfAttention.v", "o": "layer.0.SelfAttention.o",
        "pos_embedding": "layer.0.SelfAttention.relative_attention_bias.weight", "norm2": "layer.1.layer_norm.weight",
        "gate": "layer.1.DenseReluDense.wi_0", "fc1": "layer.1.DenseReluDense.wi_1",
        "fc2": "layer.1.DenseReluDense.wo",
    },
}
# transformers ties encoder.embed_tokens to shared; a saved file holds one of the two names, or both.
_TIED_EMBEDDING = "encoder.embed_tokens.weight"


def umt5_rules(config: UMT5Config, layout: str) -> list[Rule]:
  """The conversion table of one layout: source key → target leaf (blocks leaves stacked on [L])."""
  names = LAYOUTS[layout]
  d, a, f = config.dim, config.attn_dim, config.ffn_dim
  rules = [Rule(names["embedding"], (config.vocab_size, d), ("token_embedding", "embedding")),
           Rule(names["norm"], (d,), ("norm", "scale"))]
  linears = {"q": ("attn", d, a), "k": ("attn", d, a), "v": ("attn", d, a), "o": ("attn", a, d),
             "gate": ("ffn", d, f), "fc1": ("ffn", d, f), "fc2": ("ffn", f, d)}
  for i in range(config.num_layers):
    block = names["block"].format(i=i)
    rules += [Rule(block + names["norm1"], (d,), ("blocks", "norm1", "scale"), i),
              Rule(block + names["norm2"], (d,), ("blocks", "norm2", "scale"), i),
              Rule(block + names["pos_embedding"], (config.num_buckets, config.num_heads),
                   ("blocks", "pos_embedding", "embedding"), i)]
    for name, (module, in_dim, out_dim) in linears.items():
      rules += linear_rules(block + names[name], ("blocks", module, name), in_dim, out_dim, i, bias=False)
  return rules


def detect_layout(refs: Mapping[str, TensorRef], origin: str) -> str:
  if LAYOUTS["wan"]["embedding"] in refs:
    return "wan"
  if LAYOUTS["transformers"]["embedding"] in refs or _TIED_EMBEDDING in refs:
    return "transformers"
  raise CheckpointError(f"{origin}: not a umT5 encoder checkpoint: neither Wan's {LAYOUTS['wan']['embedding']} nor "
                        f"transformers' {LAYOUTS['transformers']['embedding']} is present (first keys: "
                        f"{sorted(refs)[:5]}); pass --format if it is one")


def convert_refs(refs: Mapping[str, TensorRef], config: UMT5Config, layout: str, dtype: Any,
                 origin: str) -> dict[str, Any]:
  """Checkpoint tensors of a layout → the params tree (numpy, in dtype), or one CheckpointError listing all."""
  refs = dict(refs)
  if layout == "transformers":
    tied = refs.pop(_TIED_EMBEDDING, None)
    if tied is not None:
      refs.setdefault(LAYOUTS["transformers"]["embedding"], tied)
  abstract = jax.eval_shape(functools.partial(init_umt5_params, config), jax.random.key(0))
  return apply_rules(refs, umt5_rules(config, layout), abstract, dtype, origin)


def fingerprint(params: Any, files: Mapping[str, Path]) -> str:
  """sha256 over every param leaf (path, dtype, shape, bytes) and every extra file (name, bytes)."""
  h = hashlib.sha256()
  leaves = sorted((jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params))
  for path, leaf in leaves:
    h.update(f"{path} {leaf.dtype} {leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).reshape(-1).view(np.uint8))
  for name in sorted(files):
    h.update(name.encode())
    h.update(Path(files[name]).read_bytes())
  return f"sha256:{h.hexdigest()}"


def save_text_encoder(dst: str | Path, config: UMT5Config, params: Any, files: Mapping[str, Path],
                      overwrite: bool = False) -> Path:
  """Writes a umT5 directory `load_text_encoder` reads: the config with the weights' and files' fingerprint (the
  prompt cache's identity of the encoder), the weights, and `files` (the tokenizer's, by relative name)."""
  fields = {**config.to_dict(), "fingerprint": fingerprint(params, files)}
  return save_params(dst, KIND, fields, params, overwrite, files)


def _tokenizer_dir(src: Path, layout: str, tokenizer: Path | None) -> Path:
  base = src if src.is_dir() else src.parent
  if tokenizer is not None:
    candidates = [tokenizer]
  elif layout == "wan":
    candidates = [base / "google" / "umt5-xxl"]
  else:
    candidates = [base, base.parent / "tokenizer"]
  for candidate in candidates:
    if (candidate / SPIECE_FILE).is_file() or (candidate / TOKENIZER_JSON).is_file():
      return candidate
  raise CheckpointError(f"{src}: no tokenizer ({SPIECE_FILE} or {TOKENIZER_JSON}) in "
                        f"{', '.join(str(c) for c in candidates)}; pass --tokenizer DIR")


def convert(src: str | os.PathLike, dst: str | os.PathLike, fmt: str = "auto", tokenizer: str | None = None,
            dtype: str = "bfloat16", preset: str | None = None, overwrite: bool = False) -> Path:
  """Converts src into dst (see the module docstring); returns dst. Raises CheckpointError before writing."""
  src, dst = Path(src), Path(dst)
  if dst.exists() and not overwrite:  # before reading 11 GB
    raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
  refs = read_checkpoint(src)
  layout = detect_layout(refs, str(src)) if fmt == "auto" else fmt
  config = layout_config(src, layout, preset, UMT5Config, "umt5-xxl", UMT5Config.from_transformers, "umT5").replace(
      compute_dtype=dtype, param_dtype=dtype)
  tokenizer_dir = _tokenizer_dir(src, layout, None if tokenizer is None else Path(tokenizer))
  vocab = Tokenizer(tokenizer_dir, max_length=config.text_len).vocab_size
  if vocab > config.vocab_size:
    raise CheckpointError(f"{tokenizer_dir}: the tokenizer has {vocab} tokens, more than the model's "
                          f"{config.vocab_size} embeddings: it belongs to another model")
  params = convert_refs(refs, config, layout, dtype, str(src))
  files = {f"{TOKENIZER_DIR}/{name}": tokenizer_dir / name for name in TOKENIZER_FILES
           if (tokenizer_dir / name).is_file()}
  return save_text_encoder(dst, config, params, files, overwrite)


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m convert.umt5", description=__doc__)
  parser.add_argument("--src", required=True, help="Wan .pth file, or a transformers UMT5EncoderModel directory")
  parser.add_argument("--dst", required=True, help="output directory")
  parser.add_argument("--format", choices=("auto", *LAYOUTS), default="auto")
  parser.add_argument("--tokenizer", help="folder with spiece.model and/or tokenizer.json (default: see above)")
  parser.add_argument("--dtype", choices=CLI_DTYPES, default="bfloat16")
  parser.add_argument("--preset", choices=sorted(UMT5_PRESETS),
                      help="sizes (default: umt5-xxl for the Wan layout, config.json for transformers)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
  args = parser.parse_args(argv)
  try:
    path = convert(args.src, args.dst, args.format, args.tokenizer, args.dtype, args.preset, args.overwrite)
  except (CheckpointError, FileExistsError) as err:
    # SystemExit carries the line (callers of `main` rely on it); other mistakes reach `cli.run` as they are.
    raise SystemExit(error_line(err)) from err
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
