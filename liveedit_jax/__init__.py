"""liveedit-jax: streaming video editing with a chunk-causal Wan2.1 DiT in JAX/Flax."""

from liveedit_jax.config import DIT_PRESETS, DiTConfig
from liveedit_jax.dit import count_params, dit_forward, init_dit_params, load_dit
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.prompt_cache import PromptCache
from liveedit_jax.tokenizer import Tokenizer
from liveedit_jax.umt5 import (UMT5_PRESETS, TextEncoder, UMT5Config, encode_prompts, load_text_encoder,
                               text_encoder_identity)
from liveedit_jax.vae import (VAE_PRESETS, VAEConfig, VAEStreamState, init_vae_params, init_vae_stream, load_vae,
                              vae_decode, vae_decode_step, vae_encode, vae_encode_step)
from liveedit_jax.stream_step import StreamConfig, StreamState, init_stream, stream_step
from liveedit_jax.prompt_switch import History, empty_history, push_history, switch_prompt
