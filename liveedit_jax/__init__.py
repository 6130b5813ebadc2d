"""liveedit-jax: streaming video editing with a chunk-causal Wan2.1 DiT in JAX/Flax."""

from liveedit_jax.config import DIT_PRESETS, DiTConfig
from liveedit_jax.dit import count_params, dit_forward, init_dit_params, load_dit
