"""Text embeddings cached on disk, so that a stream or a training run encodes each prompt once.

    encoder_dir = "checkpoints/umt5-xxl"
    cache = PromptCache("cache/prompts", text_encoder_identity(encoder_dir))
    context = cache.get_or_encode(lambda: load_text_encoder(encoder_dir), prompts)  # [B, 512, 4096] bfloat16

The loader runs only when a prompt is missing, and the encoder it returns is dropped when the call returns, so the
11 GB encoder need not stay on the GPU beside the DiT. Entries live at `<dir>/<encoder identity>/<sha256 of the
prompt>.npy`. The identity (`TextEncoder.identity`) hashes the converted weights, tokenizer files and config,
dtypes included, so an encoder never reads another's entries. An entry is one prompt's [text_len, D] embedding in
bfloat16, the DiT's compute dtype on GPU (rows past the prompt are zero). It is written to a temp file and renamed
into place, so readers see a whole entry or none, concurrent writers included.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Callable, Sequence

import jax
import ml_dtypes
import numpy as np

from liveedit_jax.umt5 import TextEncoder, encode_prompts

EncoderSource = TextEncoder | Callable[[], TextEncoder]


class PromptCache:
  """Prompt embeddings of one text encoder (by identity), one .npy file per prompt under `directory`.

  batch_size: misses are encoded in batches of exactly this many (the last padded with empty prompts), so a run
    compiles the encoder once whatever the number of misses.
  """

  def __init__(self, directory: str | os.PathLike, encoder_identity: str, batch_size: int = 4):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.directory = Path(directory) / encoder_identity
    self.encoder_identity = encoder_identity
    self.batch_size = batch_size

  def entry_path(self, prompt: str) -> Path:
    return self.directory / f"{hashlib.sha256(prompt.encode('utf-8')).hexdigest()}.npy"

  def get(self, prompt: str) -> np.ndarray | None:
    """The cached [text_len, D] bfloat16 embedding of prompt, or None."""
    path = self.entry_path(prompt)
    if not path.is_file():
      return None
    value = np.load(path)
    # np.save writes ml_dtypes' bfloat16 as 2-byte void ("<V2"); anything else was not written here.
    if value.dtype != np.dtype("V2"):
      raise ValueError(f"{path}: not a prompt-cache entry (dtype {value.dtype}, expected bfloat16); delete it")
    return value.view(ml_dtypes.bfloat16)

  def get_or_encode(self, encoder: EncoderSource, prompts: Sequence[str]) -> np.ndarray:
    """Embeddings [B, text_len, D] bfloat16 (host memory) of prompts, encoding and storing the missing ones.

    encoder: a loaded `TextEncoder`, or a callable returning one, called only if some prompt is missing. Its
      identity must be this cache's.
    """
    if isinstance(prompts, str):
      raise TypeError("get_or_encode takes a list of prompts, got a single string")
    if not prompts:
      raise ValueError("get_or_encode needs at least one prompt")
    found = {prompt: self.get(prompt) for prompt in dict.fromkeys(prompts)}
    missing = [prompt for prompt, value in found.items() if value is None]
    if missing:
      found.update(self._encode(encoder, missing))
    return np.stack([found[prompt] for prompt in prompts])

  def _encode(self, encoder: EncoderSource, prompts: list[str]) -> dict[str, np.ndarray]:
    if not isinstance(encoder, TextEncoder):
      encoder = encoder()
    if encoder.identity != self.encoder_identity:
      raise ValueError(f"the text encoder's identity {encoder.identity} is not this cache's "
                       f"{self.encoder_identity}: its embeddings would be stored under another encoder")
    out = {}
    for start in range(0, len(prompts), self.batch_size):
      chunk = prompts[start:start + self.batch_size]
      batch = [*chunk, *[""] * (self.batch_size - len(chunk))]
      values = np.asarray(jax.device_get(encode_prompts(encoder, batch)))[:len(chunk)].astype(ml_dtypes.bfloat16)
      for prompt, value in zip(chunk, values):
        self._write(prompt, value)
        out[prompt] = value
    return out

  def _write(self, prompt: str, value: np.ndarray) -> None:
    path = self.entry_path(prompt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
      with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
        np.save(f, value)
      os.replace(tmp, path)
    finally:
      tmp.unlink(missing_ok=True)
