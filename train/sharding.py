"""Every sharding decision of training: the device mesh, the param rule table, batch and state shardings.

The mesh has two axes: "data" (pure data parallelism) and "fsdp" (data parallelism with parameters, optimizer
state and EMA sharded, gathered layer by layer by XLA). Batches are split over both axes; parameters over "fsdp".

Parameters are matched by their path ("blocks/self_attn/q/kernel") against `PARAM_RULES`, first match wins:
  - "fsdp_layers": stacked block params [L, ...]: the largest axis after L that "fsdp" divides is sharded. The
    layer axis stays whole because `run_blocks` scans over it (a sharded scan axis would gather every layer).
  - "fsdp": the largest axis that "fsdp" divides is sharded.
  - "replicate".
A leaf with no divisible axis is replicated. Optimizer states and EMA reuse the rule of the param whose path ends
their own (optax nests params under e.g. "0/mu/").
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH = P(AXES)  # the leading (batch) axis over every device

PARAM_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|/)blocks/", "fsdp_layers"),
    (r".*", "fsdp"),
)


def make_mesh(data: int = 1, fsdp: int = -1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp") mesh over `devices` (default: all); one of the sizes may be -1 (the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1:
    data = n // fsdp
  if fsdp == -1:
    fsdp = n // data
  if data * fsdp != n:
    raise ValueError(f"mesh data={data} × fsdp={fsdp} must use all {n} devices")
  return Mesh(mesh_utils.create_device_mesh((data, fsdp), devices, allow_split_physical_axes=True), AXES)


def path_str(path: tuple) -> str:
  """A tree path as "a/b/c" (dict keys, attribute names and sequence indices alike)."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
  return "/".join(parts)


def leaf_spec(path: str, shape: tuple[int, ...], fsdp_size: int, rules=PARAM_RULES) -> P:
  """The PartitionSpec of one leaf from the first rule matching its path."""
  rule = next((r for pattern, r in rules if re.search(pattern, path)), "replicate")
  if rule == "replicate" or fsdp_size == 1 or not shape:
    return P()
  first = 1 if rule == "fsdp_layers" else 0
  candidates = [a for a in range(first, len(shape)) if shape[a] % fsdp_size == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda a: (shape[a], -a))
  return P(*[("fsdp" if a == axis else None) for a in range(len(shape))])


def tree_shardings(tree: Any, mesh: Mesh, rules=PARAM_RULES) -> Any:
  """NamedShardings for a tree of arrays or ShapeDtypeStructs (params, optimizer state, EMA)."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, leaf_spec(path_str(path), tuple(np.shape(leaf)), fsdp_size, rules)),
      tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded_fraction(tree: Any, shardings: Any) -> float:
  """Fraction of the tree's bytes that are split over more than one device."""
  leaves = jax.tree.leaves(tree)
  specs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  total = sum(math.prod(np.shape(a)) * np.dtype(a.dtype).itemsize for a in leaves)
  split = sum(math.prod(np.shape(a)) * np.dtype(a.dtype).itemsize for a, s in zip(leaves, specs)
              if not s.is_fully_replicated)
  return split / max(total, 1)
