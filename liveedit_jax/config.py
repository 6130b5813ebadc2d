"""Model configurations: frozen dataclasses with named presets.

    cfg = DiTConfig.preset("liveedit-1.3b")                  # the editing model
    cfg = DiTConfig.preset("tiny", compute_dtype="bfloat16")  # overrides by keyword

Presets follow Wan2.1's `config.json` files (Wan-AI/Wan2.1-T2V-1.3B and -14B). The class defaults
are the 1.3B values, not Wan's class defaults (which are neither checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Literal, Mapping, get_args

import jax.numpy as jnp

# The kernels a DiT runs: its attention calls and the fused norms of liveedit_jax.fused (`DiTConfig.kernels`).
KernelFamily = Literal["auto", "xla", "cudnn", "pallas"]
Dtype = Literal["float32", "bfloat16", "float16"]
# The `--dtype` choices of every command line (compute or storage): float16 stays a config-only option, since no
# checkpoint or kernel of this project is tested in it.
CLI_DTYPES = ("bfloat16", "float32")
_KERNEL_FAMILIES = get_args(KernelFamily)
_DTYPES = get_args(Dtype)


class PresetConfig:
  """What every frozen model config shares: presets by name, overrides, and dict round trips.

  A subclass is a frozen dataclass that sets `LABEL` (for messages) and, after its preset table, `PRESETS`.
  """

  __slots__ = ()
  LABEL: ClassVar[str] = "model"
  PRESETS: ClassVar[Mapping[str, Any]] = {}
  RENAMED: ClassVar[Mapping[str, str]] = {}  # old field name → new, for directories written before a rename

  def replace(self, **overrides: Any):
    return dataclasses.replace(self, **overrides)

  @classmethod
  def preset(cls, name: str, **overrides: Any):
    if name not in cls.PRESETS:
      raise ValueError(f"unknown {cls.LABEL} preset {name!r}; valid presets: {sorted(cls.PRESETS)}")
    return dataclasses.replace(cls.PRESETS[name], **overrides)

  def check_dtypes(self) -> None:
    """Raises unless `compute_dtype` and `param_dtype` (every model config has both) are `Dtype`s; subclasses call it
    from `__post_init__`."""
    for field in ("compute_dtype", "param_dtype"):
      if getattr(self, field) not in _DTYPES:
        raise ValueError(f"{self.name}: {field} must be one of {_DTYPES}, got {getattr(self, field)!r}")

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (the `config` of a converted directory)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any]):
    """The inverse of `to_dict` (JSON lists back to tuples; fields under an old name in `RENAMED` renamed); unknown
    fields are named."""
    fields = {cls.RENAMED.get(k, k): v for k, v in fields.items()}
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
      raise ValueError(f"{cls.LABEL} config has unknown fields {unknown}; known fields: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(known[k].default, tuple) else v for k, v in fields.items()})


@dataclasses.dataclass(frozen=True, slots=True)
class DiTConfig(PresetConfig):
  """Wan2.1 DiT hyper-parameters.

  `in_channels` is 16 for text-to-video and 32 for editing (noisy latent first, source latent second);
  `latent_channels` is what the model predicts (16, the VAE's z).
  """

  LABEL: ClassVar[str] = "DiT"
  # "attention" until it also named the fused norms: the shipped default model's config.json still says so
  RENAMED: ClassVar[Mapping[str, str]] = {"attention": "kernels"}

  name: str = "wan2.1-t2v-1.3b"
  in_channels: int = 16
  latent_channels: int = 16
  dim: int = 1536
  ffn_dim: int = 8960
  freq_dim: int = 256
  num_heads: int = 12
  num_layers: int = 30
  text_len: int = 512
  text_dim: int = 4096
  patch_size: tuple[int, int, int] = (1, 2, 2)
  eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_max_positions: int = 1024  # per axis: frames, rows and columns (Wan precomputes 1024)
  num_train_timesteps: int = 1000
  compute_dtype: str = "float32"  # matmul dtype; norms, modulation and residuals stay float32
  param_dtype: str = "float32"
  remat: bool = False  # rematerialise each block in the backward pass
  # The attention calls' and the fused norms' implementations. "auto": cuDNN attention on GPU, XLA elsewhere, XLA
  # norms ("cudnn" and "xla" likewise); "pallas": the measured fastest of liveedit_kernels/ for both
  kernels: KernelFamily = "auto"

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(f"{self.name}: dim {self.dim} is not divisible by num_heads {self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"{self.name}: head_dim {self.head_dim} must be even for RoPE")
    if self.in_channels not in (self.latent_channels, 2 * self.latent_channels):
      raise ValueError(
          f"{self.name}: in_channels must be latent_channels ({self.latent_channels}) for text-to-video or "
          f"2*latent_channels ({2 * self.latent_channels}) for editing, got {self.in_channels}")
    self.check_dtypes()
    if self.kernels not in _KERNEL_FAMILIES:
      raise ValueError(f"{self.name}: kernels must be one of {_KERNEL_FAMILIES}, got {self.kernels!r}")

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def is_editing(self) -> bool:
    return self.in_channels == 2 * self.latent_channels

  @property
  def patch_dim(self) -> int:
    """Output width of the head: latent channels × patch volume."""
    pt, ph, pw = self.patch_size
    return self.latent_channels * pt * ph * pw

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.compute_dtype)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "DiTConfig":
    return cls.from_dict(json.loads(text))


DIT_PRESETS: dict[str, DiTConfig] = {
    "wan2.1-t2v-1.3b": DiTConfig(),
    "liveedit-1.3b": DiTConfig(name="liveedit-1.3b", in_channels=32),
    "wan2.1-t2v-14b": DiTConfig(name="wan2.1-t2v-14b", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Every component at toy widths, for tests: 2 heads of 32 (RoPE split 12/10/10), short text.
    "tiny": DiTConfig(
        name="tiny", in_channels=32, dim=64, ffn_dim=96, freq_dim=32, num_heads=2, num_layers=2,
        text_len=16, text_dim=40),
    # The shipped default editor of the procedural benchmark (train/recipe.py): 128×128 frames through the synth
    # VAE (4× space, 4× time) give 32×32 latents, whose 1×4×4 patches make 8×8 tokens a frame; 8.5 M parameters,
    # about 0.25 s a 12-frame chunk on a 2-core CPU. Text from the synth umT5 (width 128, 24 tokens).
    "synth": DiTConfig(
        name="synth", in_channels=32, dim=256, ffn_dim=1024, num_heads=4, num_layers=8, text_len=24, text_dim=128,
        patch_size=(1, 4, 4)),
}
DiTConfig.PRESETS = DIT_PRESETS
