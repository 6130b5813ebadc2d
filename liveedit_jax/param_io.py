"""Saving and loading converted parameter trees: `<dir>/config.json` + `<dir>/params` (Orbax), written atomically.

A converted model directory is self-describing: `config.json` holds `{"kind": ..., "config": {...}}`, where kind
names the model family ("dit", "vae", "umt5") so that a loader refuses a directory of the wrong family by name.
The params are an Orbax checkpoint (`params/`), or one `params.safetensors` file whose keys are the tree paths
joined by "/" (the small models shipped inside the package: one file, no pickles, readable by any framework).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
SAFETENSORS_FILE = "params.safetensors"


def _flat_keys(params: Any) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def save_params(path: str | os.PathLike, kind: str, config: dict[str, Any], params: Any,
                overwrite: bool = False, files: Mapping[str, str | os.PathLike] | None = None,
                safetensors: bool = False) -> Path:
  """Writes config + params to `path` atomically: everything goes to a sibling temp dir, renamed at the end.

  files: extra files to place beside the weights, {name inside `path`: source file} (e.g. a tokenizer).
  safetensors: one `params.safetensors` (keys "a/b/c") instead of an Orbax checkpoint.
  """
  path = Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
  try:
    tmp.mkdir()
    (tmp / CONFIG_FILE).write_text(json.dumps({"kind": kind, "config": config}, indent=2, sort_keys=True))
    if safetensors:
      from safetensors.numpy import save_file  # noqa: PLC0415

      save_file({k: np.ascontiguousarray(v) for k, v in _flat_keys(jax.device_get(params)).items()},
                str(tmp / SAFETENSORS_FILE))
    else:
      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / PARAMS_DIR, params)
        ckptr.wait_until_finished()
    for name, src in (files or {}).items():
      (tmp / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(src, tmp / name)
    if path.exists():
      shutil.rmtree(path)
    os.rename(tmp, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return path


# What writes each kind of directory, for the message when one is missing.
_WRITERS = {"dit": "python -m convert.wan_dit (or a training run's export/)", "vae": "python -m convert.wan_vae",
            "umt5": "python -m convert.umt5", "taehv": "python -m convert.taehv"}


def read_config(path: str | os.PathLike, kind: str) -> dict[str, Any]:
  """The `config` dict of a converted directory, checking that it holds a model of `kind`."""
  return read_kind_config(path, (kind,))[1]


def read_kind_config(path: str | os.PathLike, kinds: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
  """(kind, config dict) of a converted directory, checking that it holds a model of one of `kinds` (e.g. ("vae",
  "taehv"): either autoencoder); every problem is one line naming the directory or its config file."""
  path = Path(path)
  expected = " or ".join(kinds)
  writer = " or ".join(_WRITERS.get(kind, "a converter") for kind in kinds)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such directory (expected a converted {expected} model, written by {writer})")
  if not path.is_dir():
    raise NotADirectoryError(f"{path} is a file; expected a converted {expected} model directory (written by "
                             f"{writer}), not a checkpoint file")
  config_file = path / CONFIG_FILE
  if not config_file.is_file():
    raise FileNotFoundError(f"{path} is not a converted model directory: it has no {CONFIG_FILE} (convert the "
                            f"checkpoint with {writer})")
  try:
    meta = json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_file}: not valid JSON ({e})") from None
  if not isinstance(meta, dict) or "config" not in meta:
    raise ValueError(f"{config_file}: not a converted model's config (no \"kind\" and \"config\" entries)")
  if meta.get("kind") not in kinds:
    raise ValueError(f"{config_file}: \"kind\" is {meta.get('kind')!r}, expected "
                     f"{' or '.join(map(repr, kinds))} (a model written by {writer})")
  return meta["kind"], meta["config"]


def load_params(path: str | os.PathLike, abstract_params: Any | None = None) -> Any:
  """Restores the params of a converted directory.

  abstract_params: optional tree of `jax.ShapeDtypeStruct` (with shardings) to restore into; its structure and
    shapes are checked against the stored tree and every difference is reported by name.
  """
  path = Path(path).absolute()
  if (path / SAFETENSORS_FILE).is_file():
    return _load_safetensors(path / SAFETENSORS_FILE, abstract_params)
  if not (path / PARAMS_DIR).is_dir():
    raise FileNotFoundError(f"{path}: no {PARAMS_DIR}/ or {SAFETENSORS_FILE} holds its weights; convert the "
                            f"checkpoint again")
  with ocp.StandardCheckpointer() as ckptr:
    if abstract_params is None:
      return ckptr.restore(path / PARAMS_DIR)
    stored = ckptr.metadata(path / PARAMS_DIR)
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    _check_tree(stored, abstract_params, path)
    return ckptr.restore(path / PARAMS_DIR, abstract_params)


def _load_safetensors(file: Path, abstract_params: Any | None) -> Any:
  """A `params.safetensors` file as the tree of `abstract_params` (cast to its dtypes, placed on its shardings),
  or as a nested dict of numpy arrays without one."""
  from safetensors import SafetensorError  # noqa: PLC0415
  from safetensors.numpy import load_file  # noqa: PLC0415

  try:
    flat = load_file(str(file))
  except (SafetensorError, OSError, ValueError) as e:
    raise ValueError(f"{file} is not a readable safetensors file ({e}); restore it from the project's git "
                     f"checkout or reinstall the package") from None
  if abstract_params is None:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
      *parents, leaf = key.split("/")
      node = tree
      for name in parents:
        node = node.setdefault(name, {})
      node[leaf] = value
    return tree
  expected = _flat_keys(abstract_params)
  problems = [f"missing {k} (expected shape {tuple(v.shape)})" for k, v in expected.items() if k not in flat]
  problems += [f"unexpected {k}" for k in flat if k not in expected]
  problems += [f"{k}: expected shape {tuple(v.shape)}, found {flat[k].shape}" for k, v in expected.items()
               if k in flat and tuple(flat[k].shape) != tuple(v.shape)]
  if problems:
    raise ValueError(f"{file}: stored parameters do not match the config:\n  " + "\n  ".join(problems))
  leaves_with_paths = jax.tree_util.tree_leaves_with_path(abstract_params)
  treedef = jax.tree_util.tree_structure(abstract_params)
  keys = list(expected)
  leaves = []
  for key, (_, leaf) in zip(keys, leaves_with_paths):
    value = flat[key].astype(leaf.dtype)
    sharding = getattr(leaf, "sharding", None)
    leaves.append(jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _check_tree(stored: Any, expected: Any, path: Path) -> None:
  flat_stored = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(stored)}
  flat_expected = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  problems = [f"missing {k} (expected shape {tuple(v.shape)})" for k, v in flat_expected.items()
              if k not in flat_stored]
  problems += [f"unexpected {k}" for k in flat_stored if k not in flat_expected]
  problems += [f"{k}: expected shape {tuple(v.shape)}, found {tuple(flat_stored[k].shape)}"
               for k, v in flat_expected.items() if k in flat_stored
               and tuple(flat_stored[k].shape) != tuple(v.shape)]
  if problems:
    raise ValueError(f"{path}: stored parameters do not match the config:\n  " + "\n  ".join(problems))


def cast_tree(params: Any, dtype: Any) -> Any:
  """Casts every floating leaf to dtype (numpy or jax arrays)."""
  return jax.tree.map(lambda a: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a, params)
