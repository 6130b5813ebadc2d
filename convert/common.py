"""What every PyTorch → Flax converter shares: safe readers, table-driven mapping, one complete error report.

Reading:
  - `.safetensors` (and sharded `*.safetensors.index.json`) are read without torch, tensor by tensor.
  - `.pth` / `.pt` / `.bin` pickles are read only with `torch.load(weights_only=True, mmap=True)`: a pickle that
    holds code or arbitrary objects is refused, and tensors are memory-mapped rather than loaded at once.
  - A directory is searched for the above.

Mapping: a converter lists `Rule`s (source key, expected source shape, target path, optional layer index of a
stacked leaf, transform). `apply_rules` first checks everything it can without reading data (unknown source keys,
target leaves no rule fills, shape mismatches) and raises one `CheckpointError` listing every problem by name.
Only then does it read each tensor once and write it, cast, into a preallocated output leaf, so a conversion
holds one copy of the model in the target dtype plus one source tensor at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from liveedit_jax import cli

Transform = Callable[[np.ndarray], np.ndarray]

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class CheckpointError(ValueError):
  """A checkpoint that cannot be converted; the message names the file and every offending key."""


@dataclasses.dataclass
class TensorRef:
  """A tensor in a checkpoint file, not yet read."""

  shape: tuple[int, ...]
  load: Callable[[], np.ndarray]


def _torch_to_numpy(t) -> np.ndarray:
  import torch  # noqa: PLC0415 (only needed for pickles)

  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def _read_safetensors(path: Path) -> dict[str, TensorRef]:
  from safetensors import SafetensorError, safe_open  # noqa: PLC0415

  try:
    handle = safe_open(str(path), framework="flax")
    keys = list(handle.keys())
    refs = {}
    for key in keys:
      shape = tuple(handle.get_slice(key).get_shape())
      refs[key] = TensorRef(shape, lambda k=key: np.asarray(handle.get_tensor(k)))
  except (SafetensorError, OSError, ValueError) as err:
    raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err
  size = path.stat().st_size
  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_len))
  end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
  if 8 + header_len + end > size:
    raise CheckpointError(f"{path}: truncated: the header describes {8 + header_len + end} bytes, "
                          f"the file has {size}")
  return refs


def _read_pickle(path: Path) -> dict[str, Any]:
  import torch  # noqa: PLC0415

  if not zipfile.is_zipfile(path):
    raise CheckpointError(f"{path}: not a torch zip checkpoint (truncated, or a legacy pickle, which is not "
                          "read for safety)")
  try:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except pickle.UnpicklingError as err:
    raise CheckpointError(f"{path}: refused: the pickle holds objects other than tensors and plain containers "
                          f"(it could run code), and only torch.load(weights_only=True) is used here. {err}") from err
  except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
    raise CheckpointError(f"{path}: unreadable torch checkpoint (truncated or corrupt?): {err}") from err


def error_line(err: BaseException) -> str:
  """The one stderr line a converter's `main` ends with on `err` ("error: ...", as `cli.run` prints one).

  A CheckpointError lists its problems one per line, and torch's refusal of a pickle spans several: on the command
  line they are joined by "; ", so the report stays one line that a log or a `2>&1 | tail -1` keeps whole. Under
  --debug (in sys.argv, as `python -m` passes it) or LIVEEDIT_DEBUG=1 it re-raises `err`, so that `cli.run` prints
  the traceback.
  """
  if cli.debug_requested():
    raise err
  lines = [line.strip() for line in str(err).splitlines() if line.strip()]
  return "error: " + "; ".join(lines).replace(":; ", ": ")


def _flatten_tensors(tree: Any, prefix: str = "") -> dict[str, Any]:
  import torch  # noqa: PLC0415

  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten_tensors(v, f"{prefix}{k}."))
  elif isinstance(tree, torch.Tensor):
    out[prefix[:-1]] = tree
  return out


def read_checkpoint(path: str | os.PathLike, top_key: str | None = None) -> dict[str, TensorRef]:
  """Every tensor of a checkpoint file or directory, by name, unread.

  top_key: for training files holding several models (`{"generator": ..., "critic": ...}`), the entry to read.
  """
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  if path.is_dir():
    return read_checkpoint(find_weights_file(path), top_key)
  if path.name.endswith(".safetensors.index.json"):
    weight_map = json.loads(path.read_text())["weight_map"]
    refs = {}
    for shard in sorted(set(weight_map.values())):
      refs.update(_read_safetensors(path.parent / shard))
    return refs
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  if path.suffix in PICKLE_SUFFIXES:
    tree = _read_pickle(path)
    if top_key is not None:
      if not isinstance(tree, Mapping) or top_key not in tree:
        found = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise CheckpointError(f"{path}: has no top-level entry {top_key!r}; found {found}")
      tree = tree[top_key]
    tensors = _flatten_tensors(tree)
    if not tensors:
      raise CheckpointError(f"{path}: holds no tensors")
    return {k: TensorRef(tuple(t.shape), lambda t=t: _torch_to_numpy(t)) for k, t in tensors.items()}
  raise CheckpointError(f"{path}: unknown checkpoint type (expected .safetensors, .safetensors.index.json, "
                        f"{', '.join(PICKLE_SUFFIXES)} or a directory)")


def top_level_keys(path: str | os.PathLike) -> set[str]:
  """Top-level entry names of a pickle checkpoint whose root is a dict (empty for other files)."""
  path = Path(path)
  if not path.exists():  # as read_checkpoint says; the pickle reader would call it "not a torch zip checkpoint"
    raise CheckpointError(f"{path}: no such file or directory")
  if path.is_dir():
    path = find_weights_file(path)
  if path.suffix not in PICKLE_SUFFIXES:
    return set()
  tree = _read_pickle(path)
  return {k for k in tree if isinstance(k, str)} if isinstance(tree, Mapping) else set()


def config_json_beside(src: str | os.PathLike) -> dict[str, Any] | None:
  """The `config.json` in a source directory or beside a source file, parsed; None when there is none."""
  src = Path(src)
  path = (src if src.is_dir() else src.parent) / "config.json"
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise CheckpointError(f"{path}: not valid JSON: {err}") from err


def layout_config(src: str | os.PathLike, layout: str, preset: str | None, config_cls, wan_preset: str,
                  from_config_json: Callable[[dict[str, Any]], Any], model: str):
  """A converter's config: --preset when given; Wan's layout (no config file) is always `wan_preset`; a Hugging Face
  layout (`layout` names it in the error) reads the config.json beside src through `from_config_json`."""
  if preset is not None:
    return config_cls.preset(preset)
  if layout == "wan":
    return config_cls.preset(wan_preset)
  fields = config_json_beside(src)
  if fields is None:
    raise CheckpointError(f"{src}: the {layout} layout needs its config.json beside it; or pass --preset")
  try:
    return from_config_json(fields)
  except (KeyError, ValueError) as err:
    raise CheckpointError(f"{src}: config.json is not a usable {model} config: {err!r}") from err


def find_weights_file(directory: Path) -> Path:
  """The weights file of a model directory: a safetensors index, a single safetensors file or one pickle."""
  for pattern in ("*.safetensors.index.json", "*.safetensors", *(f"*{s}" for s in PICKLE_SUFFIXES)):
    found = sorted(directory.glob(pattern))
    if len(found) == 1:
      return found[0]
    if len(found) > 1 and pattern != "*.safetensors":
      raise CheckpointError(f"{directory}: several candidate weight files {[f.name for f in found]}; pass one")
    if len(found) > 1:
      raise CheckpointError(f"{directory}: several .safetensors files but no .safetensors.index.json")
  raise CheckpointError(f"{directory}: no weights file (*.safetensors, *.safetensors.index.json, *.pth, *.pt)")


def strip_key_prefixes(refs: Mapping[str, TensorRef], prefixes: Iterable[str] = ("model.", "module."),
                       fragments: Iterable[str] = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.",
                                                   "_orig_mod.")) -> dict[str, TensorRef]:
  """Removes wrapper fragments anywhere in a key and one leading wrapper prefix (Self-Forcing saves `model.*`)."""
  out = {}
  for key, ref in refs.items():
    for frag in fragments:
      key = key.replace(frag, "")
    for prefix in prefixes:
      if key.startswith(prefix):
        key = key[len(prefix):]
        break
    if key in out:
      raise CheckpointError(f"two tensors map to {key!r} after removing wrapper prefixes")
    out[key] = ref
  return out


@dataclasses.dataclass(frozen=True)
class Rule:
  """Source tensor `source` (expected `source_shape`) → `transform` → target leaf `target` (layer `layer`)."""

  source: str
  source_shape: tuple[int, ...]
  target: tuple[str, ...]
  layer: int | None = None
  transform: Transform = staticmethod(lambda a: a)


def linear_rules(source: str, target: tuple[str, ...], in_dim: int, out_dim: int, layer: int | None = None,
                 bias: bool = True) -> list[Rule]:
  """torch Linear `[out, in]` (+ bias) → Dense {kernel [in, out], bias}."""
  rules = [Rule(f"{source}.weight", (out_dim, in_dim), (*target, "kernel"), layer, np.transpose)]
  if bias:
    rules.append(Rule(f"{source}.bias", (out_dim,), (*target, "bias"), layer))
  return rules


def _channels_last_kernel(a: np.ndarray) -> np.ndarray:
  return np.transpose(a, (*range(2, a.ndim), 1, 0))


def conv_rules(source: str, target: tuple[str, ...], in_dim: int, out_dim: int, kernel_size: tuple[int, ...],
               layer: int | None = None, bias: bool = True) -> list[Rule]:
  """torch ConvNd `[out, in, *kernel_size]` (+ bias) → channels-last conv {kernel [*kernel_size, in, out], bias}."""
  rules = [Rule(f"{source}.weight", (out_dim, in_dim, *kernel_size), (*target, "kernel"), layer,
                _channels_last_kernel)]
  if bias:
    rules.append(Rule(f"{source}.bias", (out_dim,), (*target, "bias"), layer))
  return rules


def pointwise_conv_rules(source: str, target: tuple[str, ...], in_dim: int, out_dim: int, ndim: int,
                         layer: int | None = None, bias: bool = True) -> list[Rule]:
  """torch ConvNd with a 1×…×1 kernel `[out, in, 1, …]` (ndim ones) (+ bias) → Dense {kernel [in, out], bias}."""
  rules = [Rule(f"{source}.weight", (out_dim, in_dim, *(1,) * ndim), (*target, "kernel"), layer,
                lambda a: a.reshape(out_dim, in_dim).T)]
  if bias:
    rules.append(Rule(f"{source}.bias", (out_dim,), (*target, "bias"), layer))
  return rules


def _flat_abstract(abstract: Any) -> dict[tuple[str, ...], Any]:
  return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}


def apply_rules(refs: Mapping[str, TensorRef], rules: list[Rule], abstract: Any, dtype: Any, origin: str) -> Any:
  """Validates `rules` against the checkpoint and the abstract target tree, then builds the params (numpy).

  abstract: the target tree of `jax.ShapeDtypeStruct` (stacked leaves carry the layer axis first).
  Raises CheckpointError listing every missing, unexpected and mis-shaped key before reading any data.
  """
  targets = _flat_abstract(abstract)
  problems, covered, used = [], {}, set()
  for rule in rules:
    if rule.target not in targets:
      raise KeyError(f"converter bug: rule target {'/'.join(rule.target)} is not a parameter")
    covered.setdefault(rule.target, set()).add(rule.layer)
    if rule.source not in refs:
      problems.append(f"missing key {rule.source} (expected shape {rule.source_shape})")
      continue
    used.add(rule.source)
    found = refs[rule.source].shape
    if found != rule.source_shape:
      problems.append(f"wrong shape for {rule.source}: expected {rule.source_shape}, found {found}")
  for key in sorted(set(refs) - used):
    problems.append(f"unexpected key {key} (shape {refs[key].shape})")
  for target, leaf in targets.items():
    layers = covered.get(target, set())
    if not layers:
      raise KeyError(f"converter bug: no rule fills {'/'.join(target)}")
    if None not in layers and layers != set(range(leaf.shape[0])):
      raise KeyError(f"converter bug: {'/'.join(target)} layers {sorted(set(range(leaf.shape[0])) - layers)} unfilled")
  if problems:
    raise CheckpointError(f"{origin}: cannot convert, {len(problems)} problem(s):\n  " + "\n  ".join(problems))

  dtype = jnp.dtype(dtype)
  out = {t: np.empty(leaf.shape, dtype) for t, leaf in targets.items()}
  for rule in rules:
    leaf = targets[rule.target]
    want = leaf.shape if rule.layer is None else leaf.shape[1:]
    value = rule.transform(refs[rule.source].load())
    if tuple(value.shape) != tuple(want):
      raise CheckpointError(f"{origin}: {rule.source} → {'/'.join(rule.target)}: got shape {value.shape}, "
                            f"expected {want}")
    if rule.layer is None:
      out[rule.target][...] = value.astype(dtype)
    else:
      out[rule.target][rule.layer] = value.astype(dtype)
  tree: dict[str, Any] = {}
  for target, value in out.items():
    node = tree
    for name in target[:-1]:
      node = node.setdefault(name, {})
    node[target[-1]] = value
  return tree
