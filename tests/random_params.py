"""Random weights for the tests whose outputs must depend on the whole network."""

import jax
import numpy as np

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import Params, init_dit_params


def random_dit_params(config: DiTConfig, seed: int) -> Params:
  """`init_dit_params(config, key(seed))` with a random output head: Wan zero-initialises it, which would make
  every output zero whatever the rest of the network does."""
  p = init_dit_params(config, jax.random.key(seed))
  p["head"]["proj"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(seed + 1), p["head"]["proj"]["kernel"].shape)
  return p


def filled_like(abstract, rng: np.random.Generator):
  """Random float32 arrays in the shapes of `abstract` (a param tree of ShapeDtypeStructs, e.g. an init under
  `jax.eval_shape`), without running the (slow on CPU) Flax init: fan-in scaled kernels, which keep activations
  O(1) through a stack, norm scales near 1, the rest small."""

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.standard_normal(leaf.shape).astype(np.float32) / np.sqrt(np.prod(leaf.shape[:-1]))
    if name == "scale":
      return (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    return (0.01 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)
