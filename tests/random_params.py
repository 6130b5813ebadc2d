"""Random DiT weights for the tests whose outputs must depend on the whole network."""

import jax

from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import Params, init_dit_params


def random_dit_params(config: DiTConfig, seed: int) -> Params:
  """`init_dit_params(config, key(seed))` with a random output head: Wan zero-initialises it, which would make
  every output zero whatever the rest of the network does."""
  p = init_dit_params(config, jax.random.key(seed))
  p["head"]["proj"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(seed + 1), p["head"]["proj"]["kernel"].shape)
  return p
