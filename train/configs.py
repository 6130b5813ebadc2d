"""Training run configurations: one frozen dataclass, named presets per stage, overrides from the command line.

    cfg = TrainConfig.preset("tiny", stage=3, steps=10)       # what `python -m train.stage3 --config tiny --steps 10`
                                                               # builds
Every preset's comment gives its command and its expected cost. GPU costs are estimates from the analytic FLOP
count (`train/flops.py`) at an assumed 40 % MFU on H100s, not measurements; `python -m liveedit_jax.bench train`
measures a step.

Hyper-parameters follow Self-Forcing's `configs/self_forcing_dmd.yaml` where LiveEdit does not say otherwise: the
flow-matching shift 5, timesteps of the DMD and critic losses in [20, 980], the 4-step generator at the warped
timesteps, real-score guidance 3 (x0_c + g·(x0_c − x0_u)), 1 generator update per 5 critic updates, AdamW with
betas (0, 0.999) for both DMD nets, global-norm clipping 10, EMA 0.99 from step 200. LiveEdit's learning rate is
1e-5; its MSE weight λ is not in the references, so `mse_weight` = 1 is a starting value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from liveedit_jax.config import DIT_PRESETS, DiTConfig
from liveedit_jax.schedule import warped_timesteps

STAGES = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run reads. Stages 1–2 train `model`; stage 3 trains the generator and the fake score."""

  name: str = "liveedit-1.3b"
  stage: int = 1  # 1 bidirectional flow matching, 2 chunk-causal teacher forcing, 3 DMD
  model: str = "liveedit-1.3b"  # DiT preset (liveedit_jax.config.DIT_PRESETS)
  compute_dtype: str = "bfloat16"  # matmuls; master weights and optimizer state stay float32
  remat: bool = True  # rematerialise each DiT block in the backward pass
  kernels: str = "auto"  # the DiT's (DiTConfig.kernels)

  # Data: shards written by `python -m train.prepare_data`; latent clip size [frames, height, width].
  data_dir: str = ""
  frames: int = 21
  height: int = 60
  width: int = 104
  batch_size: int = 64  # global, over all processes
  data_seed: int = 0
  data_threads: int = 4  # Grain read threads per process

  # Device mesh ("data", "fsdp"); -1 takes the devices the other axis leaves.
  mesh_data: int = 1
  mesh_fsdp: int = -1

  # Run.
  workdir: str = "runs/liveedit-1.3b/stage1"
  steps: int = 3000
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  max_nonfinite: int = 3  # consecutive non-finite steps that stop the run
  peak_tflops: float = 0.0  # per device, for MFU; 0 looks the device kind up (train/flops.py)

  # Initial weights: converted DiT directories (`python -m convert.wan_dit`, or a stage's `export/`). Empty: a
  # random init from `seed` (tests and benchmarks). Stages 1–2: `init` is the model. Stage 3: `init` is the
  # generator (the stage-2 export) and `score_init` the real score (the stage-1 export), which also initialises
  # the fake score.
  init: str = ""
  score_init: str = ""

  # Optimisation (AdamW + global-norm clipping); in stage 3 `lr` is the generator's and `critic_lr` the fake
  # score's.
  lr: float = 1e-5
  critic_lr: float = 1e-5
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.01
  clip_norm: float = 10.0
  ema_decay: float = 0.99
  ema_start: int = 200  # the EMA equals the weights until this step, then averages

  # Flow matching (stages 1–2 and the critic): t = 1000·shift(u), u ~ U[0, 1).
  shift: float = 5.0
  text_dropout: float = 0.1  # probability of replacing a prompt embedding by zeros (the CFG null prompt)
  chunk_frames: int = 3

  # DMD (stage 3).
  timesteps: tuple[float, ...] = warped_timesteps()  # the generator's denoising steps
  gen_every: int = 5  # generator updates once per this many critic updates
  guidance: float = 3.0  # real score: x0_c + g·(x0_c − x0_u), the null prompt for x0_u
  mse_weight: float = 1.0  # λ of LiveEdit's λ·MSE(x̂, target latent)
  t_min: float = 20.0
  t_max: float = 980.0
  # LiveEdit's "pruned noise inputs": the generator's self-rollout runs with the Mask Cache (self-attention
  # placement) at this prune ratio, as it streams (train/rollout.py); 0 runs every token.
  pruned_rollout: float = 0.0

  def __post_init__(self):
    if self.stage not in STAGES:
      raise ValueError(f"{self.name}: stage must be one of {STAGES}, got {self.stage}")
    if self.model not in DIT_PRESETS:
      raise ValueError(f"{self.name}: unknown model {self.model!r}; valid: {sorted(DIT_PRESETS)}")
    if not DIT_PRESETS[self.model].is_editing:
      raise ValueError(f"{self.name}: model {self.model!r} is not an editing model (32 input channels)")
    if self.frames % self.chunk_frames:
      raise ValueError(f"{self.name}: frames ({self.frames}) must be a multiple of chunk_frames "
                       f"({self.chunk_frames})")
    _, ph, pw = DIT_PRESETS[self.model].patch_size
    if self.height % ph or self.width % pw:
      raise ValueError(f"{self.name}: latent size {self.height}×{self.width} is not divisible by the patch "
                       f"{ph}×{pw}")
    if not 0.0 <= self.text_dropout <= 1.0:
      raise ValueError(f"{self.name}: text_dropout must be in [0, 1], got {self.text_dropout}")
    if self.gen_every < 1 or self.steps < 0 or self.log_every < 1 or self.checkpoint_every < 1:
      raise ValueError(f"{self.name}: gen_every, log_every and checkpoint_every must be ≥ 1 and steps ≥ 0")
    if self.mesh_data == 0 or self.mesh_fsdp == 0 or (self.mesh_data < 0 and self.mesh_fsdp < 0):
      raise ValueError(f"{self.name}: mesh_data and mesh_fsdp must be positive, at most one of them -1")
    if not 0.0 <= self.pruned_rollout < 1.0:
      raise ValueError(f"{self.name}: pruned_rollout (a prune ratio) must be in [0, 1), got {self.pruned_rollout}")
    if not 0 <= self.t_min < self.t_max <= 1000:
      raise ValueError(f"{self.name}: need 0 ≤ t_min < t_max ≤ 1000, got [{self.t_min}, {self.t_max}]")

  def dit(self) -> DiTConfig:
    """The model's config with this run's precision, remat and kernel settings."""
    return DiTConfig.preset(self.model, compute_dtype=self.compute_dtype, remat=self.remat,
                            kernels=self.kernels)

  def replace(self, **overrides: Any) -> "TrainConfig":
    return dataclasses.replace(self, **overrides)

  @classmethod
  def preset(cls, name: str, stage: int, **overrides: Any) -> "TrainConfig":
    if name not in TRAIN_PRESETS:
      raise ValueError(f"unknown training preset {name!r}; valid presets: {sorted(TRAIN_PRESETS)}")
    if stage not in TRAIN_PRESETS[name]:
      raise ValueError(f"preset {name!r} has no stage {stage}; valid stages: {sorted(TRAIN_PRESETS[name])}")
    return dataclasses.replace(TRAIN_PRESETS[name][stage], **overrides)


_LIVEEDIT = TrainConfig(data_dir="data/liveedit-latents", batch_size=8, steps=9000)
# Batch 8 splits over 8 fake CPU devices (the mesh tests); the high learning rates make a few dozen steps visible.
_TINY = TrainConfig(
    name="tiny", model="tiny", compute_dtype="float32", remat=False, kernels="xla", data_dir="data/tiny",
    frames=6, height=4, width=4, batch_size=8, data_threads=1, workdir="runs/tiny/stage1", steps=20, log_every=1,
    checkpoint_every=10, lr=3e-3, critic_lr=3e-3, ema_start=0, gen_every=2)

# The default model (train/recipe.py): the synth DiT from scratch on the procedural benchmark, 33-frame clips at
# 128×128 (9 latent frames of 32×32, 3 chunks). Learning rates are a from-scratch model's, not LiveEdit's
# fine-tuning 1e-5; bf16 matmuls, no remat (the model is small).
_SYNTH = TrainConfig(
    name="synth", model="synth", compute_dtype="bfloat16", remat=False, data_dir="runs/synth/data/train",
    frames=9, height=32, width=32, batch_size=32, workdir="runs/synth/stage1", steps=5000, log_every=50,
    checkpoint_every=500, keep_checkpoints=2, lr=3e-4, critic_lr=1e-4, weight_decay=0.0, clip_norm=1.0,
    ema_decay=0.999, ema_start=500, text_dropout=0.1)

TRAIN_PRESETS: dict[str, dict[int, TrainConfig]] = {
    # Costs at 21×60×104 latents (480×832, 81 frames), model FLOPs per sample from train/flops.py, one sample per
    # H100 (batch 64 on 64 GPUs) at 40 % MFU.
    "liveedit-1.3b": {
        # The paper's schedule: Stage 1 9K steps, Stage 2 20K, Stage 3 10K, batch 8, lr 1e-5. Where LiveEdit is
        # silent, Self-Forcing's values fill in (module docstring): warmup-free AdamW, clipping 10, EMA 0.99 from
        # step 200, and for DMD betas (0, 0.999), 1 generator update per 5 critic updates, guidance 3, the warped
        # 4-step schedule; the MSE weight 1 is ours. Costs at 21×60×104 latents (480×832, 81 frames), model FLOPs
        # per sample from train/flops.py, one sample per H100 (batch 8 on 8 GPUs) at 40 % MFU.
        # python -m train.stage1 --config liveedit-1.3b --init checkpoints/liveedit-1.3b
        # Bidirectional fine-tune of Wan2.1-T2V-1.3B with the source latent on 16 extra input channels.
        # 0.85 PFLOP/sample: ≈ 2.1 s/step, 9000 steps ≈ 5.3 h.
        1: _LIVEEDIT,
        # python -m train.stage2 --config liveedit-1.3b --init runs/liveedit-1.3b/stage1/export
        # Chunk-causal teacher forcing over [clean ‖ noisy]: 1.19 PFLOP/sample: ≈ 3.0 s/step, 20000 steps ≈ 17 h.
        2: _LIVEEDIT.replace(stage=2, workdir="runs/liveedit-1.3b/stage2", steps=20000),
        # python -m train.stage3 --config liveedit-1.3b --init runs/liveedit-1.3b/stage2/export_ema \
        #     --score-init runs/liveedit-1.3b/stage1/export
        # DMD with the pruned-noise rollout (the Mask Cache at the streaming prune ratio 0.7 in the generator's
        # self-rollout): every step a rollout and a fake-score update, every 5th step also a generator update with
        # the real score's two guidance branches: 1.97 PFLOP/sample averaged: ≈ 5.0 s/step, 10000 steps ≈ 14 h.
        # Measured (without pruning): 5.5 s/step at 36 % MFU with one clip per H200 (docs/benchmarks.md).
        3: _LIVEEDIT.replace(stage=3, workdir="runs/liveedit-1.3b/stage3", steps=10000, b1=0.0, pruned_rollout=0.7),
    },
    "synth": {
        # python -m train.recipe (all stages in order); each stage alone:
        # python -m train.stage1 --config synth
        1: _SYNTH,
        # python -m train.stage2 --config synth --init runs/synth/stage1/export_ema
        2: _SYNTH.replace(stage=2, workdir="runs/synth/stage2", steps=1500, lr=1e-4),
        # python -m train.stage3 --config synth --init runs/synth/stage2/export_ema \
        #     --score-init runs/synth/stage1/export_ema
        3: _SYNTH.replace(stage=3, workdir="runs/synth/stage3", steps=600, lr=2e-5, critic_lr=4e-5, b1=0.0,
                          ema_decay=0.99, ema_start=100),
    },
    "tiny": {
        # python -m train.prepare_data --config tiny --synthetic 64 --out data/tiny
        # python -m train.stage1 --config tiny        Toy widths for CPU tests: ~15 s to compile on a 2-core CPU,
        #                                             then ~20 ms/step.
        1: _TINY,
        # python -m train.stage2 --config tiny        ~20 s to compile, ~30 ms/step on a 2-core CPU.
        2: _TINY.replace(stage=2, workdir="runs/tiny/stage2"),
        # python -m train.stage3 --config tiny        ~30 s to compile, ~40 ms/step on a 2-core CPU.
        3: _TINY.replace(stage=3, workdir="runs/tiny/stage3", b1=0.0),
    },
}
