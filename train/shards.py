"""The training data format: shards of precomputed (source latent, target latent, prompt embedding) examples.

    <dir>/index.json            {"version": 1, "count": N, "dtype": "bfloat16", "source": [F, H, W, 16],
                                 "context": [L, D], "shards": [{"dir": "shard-00000", "count": n}, ...]}
    <dir>/shard-00000/source.npy    [n, F, H, W, 16]  normalised VAE latents of the source clips
    <dir>/shard-00000/target.npy    [n, F, H, W, 16]  of the edited clips
    <dir>/shard-00000/context.npy   [n, L, D]         umT5 prompt embeddings (rows past the prompt zero)

Arrays are stored in `dtype` (bfloat16 as its uint16 bits, which .npy cannot name) and memory-mapped on read, so a
random access reads one example. `ShardWriter` writes into a temp directory renamed into place at `close`: readers
see a whole dataset or none. No Grain here: `train/data.py` builds the input pipeline on `LatentShards`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import ml_dtypes
import numpy as np

INDEX = "index.json"
FIELDS = ("source", "target", "context")
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
  x = np.asarray(x, np.float32).astype(_DTYPES[dtype])
  return x.view(np.uint16) if dtype == "bfloat16" else x


def _decode(x: np.ndarray, dtype: str) -> np.ndarray:
  return (x.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else x).astype(np.float32)


class ShardWriter:
  """Appends examples and writes them as shards of `shard_size`; `close` publishes the directory atomically."""

  def __init__(self, directory: str | os.PathLike, latent_shape: tuple[int, ...], context_shape: tuple[int, int],
               shard_size: int = 256, dtype: str = "bfloat16"):
    if dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    self.directory = Path(directory).absolute()
    if self.directory.exists():
      raise FileExistsError(f"{self.directory} exists; remove it or choose another --out")
    self.directory.parent.mkdir(parents=True, exist_ok=True)
    self._tmp = self.directory.parent / f".{self.directory.name}.partial-{uuid.uuid4().hex[:8]}"
    self._tmp.mkdir()
    self.shapes = {"source": tuple(latent_shape), "target": tuple(latent_shape), "context": tuple(context_shape)}
    self.shard_size, self.dtype = shard_size, dtype
    self._pending: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
    self._shards: list[dict] = []

  def add(self, source: np.ndarray, target: np.ndarray, context: np.ndarray) -> None:
    """One example: source and target latents [F, H, W, 16], context [L, D]."""
    for name, x in zip(FIELDS, (source, target, context)):
      if tuple(np.shape(x)) != self.shapes[name]:
        raise ValueError(f"{name} has shape {tuple(np.shape(x))}, expected {self.shapes[name]}")
      self._pending[name].append(_encode(x, self.dtype))
    if len(self._pending["source"]) == self.shard_size:
      self._flush()

  def _flush(self) -> None:
    count = len(self._pending["source"])
    if not count:
      return
    name = f"shard-{len(self._shards):05d}"
    (self._tmp / name).mkdir()
    for field in FIELDS:
      np.save(self._tmp / name / f"{field}.npy", np.stack(self._pending[field]))
      self._pending[field] = []
    self._shards.append({"dir": name, "count": count})

  def close(self) -> Path:
    self._flush()
    index = {"version": 1, "count": sum(s["count"] for s in self._shards), "dtype": self.dtype,
             "source": list(self.shapes["source"]), "context": list(self.shapes["context"]), "shards": self._shards}
    (self._tmp / INDEX).write_text(json.dumps(index, indent=2))
    os.rename(self._tmp, self.directory)
    return self.directory

  def abort(self) -> None:
    shutil.rmtree(self._tmp, ignore_errors=True)


class LatentShards:
  """Random access to a shard directory: `shards[i]` → {"source", "target", "context"} float32 arrays."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = Path(directory)
    index_file = self.directory / INDEX
    if not index_file.is_file():
      raise FileNotFoundError(f"{self.directory} has no {INDEX}; build it with `python -m train.prepare_data`")
    text = index_file.read_text()
    self.index = json.loads(text)
    self._digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    self.dtype = self.index["dtype"]
    self._arrays = [{f: np.load(self.directory / s["dir"] / f"{f}.npy", mmap_mode="r") for f in FIELDS}
                    for s in self.index["shards"]]
    self._starts = np.cumsum([0] + [s["count"] for s in self.index["shards"]]).tolist()

  @property
  def latent_shape(self) -> tuple[int, ...]:
    return tuple(self.index["source"])

  @property
  def context_shape(self) -> tuple[int, int]:
    return tuple(self.index["context"])

  def __len__(self) -> int:
    return self.index["count"]

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    if not 0 <= i < len(self):
      raise IndexError(f"example {i} out of range [0, {len(self)})")
    shard = bisect.bisect_right(self._starts, i) - 1
    row = i - self._starts[shard]
    return {f: _decode(np.asarray(self._arrays[shard][f][row]), self.dtype) for f in FIELDS}

  def __repr__(self) -> str:
    # Grain keeps the source's repr in its iterator state and refuses to restore into another: name the content
    # (the index), not the path, so that a run resumes on the same data moved elsewhere.
    return f"LatentShards(count={len(self)}, index_sha256={self._digest})"
