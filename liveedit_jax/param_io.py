"""Saving and loading converted parameter trees: `<dir>/config.json` + `<dir>/params` (Orbax), written atomically.

A converted model directory is self-describing: `config.json` holds `{"kind": ..., "config": {...}}`, where kind
names the model family ("dit", "vae", "umt5") so that a loader refuses a directory of the wrong family by name.
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


def save_params(path: str | os.PathLike, kind: str, config: dict[str, Any], params: Any,
                overwrite: bool = False, files: Mapping[str, str | os.PathLike] | None = None) -> Path:
  """Writes config + params to `path` atomically: everything goes to a sibling temp dir, renamed at the end.

  files: extra files to place beside the weights, {name inside `path`: source file} (e.g. a tokenizer).
  """
  path = Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
  try:
    tmp.mkdir()
    (tmp / CONFIG_FILE).write_text(json.dumps({"kind": kind, "config": config}, indent=2, sort_keys=True))
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


def read_config(path: str | os.PathLike, kind: str) -> dict[str, Any]:
  """The `config` dict of a converted directory, checking that it holds a model of `kind`."""
  path = Path(path)
  config_file = path / CONFIG_FILE
  if not config_file.is_file():
    raise FileNotFoundError(f"{path} is not a converted checkpoint: {CONFIG_FILE} is missing")
  meta = json.loads(config_file.read_text())
  if meta.get("kind") != kind:
    raise ValueError(f"{path} holds a {meta.get('kind')!r} checkpoint, expected {kind!r}")
  return meta["config"]


def load_params(path: str | os.PathLike, abstract_params: Any | None = None) -> Any:
  """Restores the params of a converted directory.

  abstract_params: optional tree of `jax.ShapeDtypeStruct` (with shardings) to restore into; its structure and
    shapes are checked against the stored tree and every difference is reported by name.
  """
  path = Path(path).absolute()
  with ocp.StandardCheckpointer() as ckptr:
    if abstract_params is None:
      return ckptr.restore(path / PARAMS_DIR)
    stored = ckptr.metadata(path / PARAMS_DIR)
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    _check_tree(stored, abstract_params, path)
    return ckptr.restore(path / PARAMS_DIR, abstract_params)


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
