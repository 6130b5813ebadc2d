"""PyTorch reference models with fresh random weights, and their checkpoints in every layout we convert.

The reference is diffusers' `WanTransformer3DModel` (installed from PyPI, CPU torch). Wan's original key names are
derived from diffusers' with the rename table of ../shared/reference/wan_selfforcing_spec.md §2.2, written out here
independently of the converter under test.
"""

from __future__ import annotations

import numpy as np
import torch

from liveedit_jax.config import DiTConfig

# diffusers → Wan substring renames, applied in order (spec §2.2; the norm2/norm3 swap goes through a placeholder).
_DIFFUSERS_TO_WAN = [
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.to_out.0", "self_attn.o"), ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."), ("attn2.to_", "cross_attn."),
    ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
    (".norm2.", ".norm3."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
]


def diffusers_to_wan_key(key: str) -> str:
  if key == "scale_shift_table":
    return "head.modulation"
  for old, new in _DIFFUSERS_TO_WAN:
    key = key.replace(old, new)
  return key.replace("scale_shift_table", "modulation")


def make_diffusers_dit(cfg: DiTConfig, seed: int):
  """A diffusers WanTransformer3DModel shaped like cfg, every parameter drawn at random (fp32, eval mode)."""
  from diffusers import WanTransformer3DModel  # noqa: PLC0415

  torch.manual_seed(seed)
  model = WanTransformer3DModel(
      patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
      in_channels=cfg.in_channels, out_channels=cfg.latent_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
      ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
      eps=cfg.eps, rope_max_seq_len=cfg.rope_max_positions)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(("norm_q.weight", "norm_k.weight", "norm2.weight")):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif p.ndim == 1:
        p.copy_(0.1 * torch.randn_like(p))
      elif "scale_shift_table" in name:
        p.copy_(0.2 * torch.randn_like(p))
      else:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn_like(p) / np.sqrt(fan_in))
  return model.eval()


def diffusers_dit_forward(model, x: np.ndarray, t: np.ndarray, context: np.ndarray) -> np.ndarray:
  """Runs the reference on channels-last inputs: x [B, F, H, W, C], t [B] or [B, F]; returns [B, F, H, W, C]."""
  b, f, h, w, _ = x.shape
  pt, ph, pw = model.config.patch_size
  timestep = torch.from_numpy(np.asarray(t, np.float32))
  if timestep.ndim == 2:  # per frame → per token (diffusers' per-token timesteps), tokens in (f, h, w) order
    timestep = timestep.repeat_interleave((h // ph) * (w // pw), dim=1)
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))), timestep,
                torch.from_numpy(context), return_dict=False)[0]
  return out.numpy().transpose(0, 2, 3, 4, 1)


def wan_state_dict(model) -> dict[str, torch.Tensor]:
  """The reference's weights under Wan's original key names."""
  return {diffusers_to_wan_key(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
