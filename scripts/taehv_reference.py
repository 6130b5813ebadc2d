"""Runs madebyollin/taehv's reference `taehv.py` (PyTorch, CPU, float32) on random weights: writes the golden fixtures
of tests/test_taehv.py, or checks liveedit_jax.taehv against it at the published sizes.

The reference is not a dependency and is not copied here: pass the path of its `taehv.py` (from a checkout of
github.com/madebyollin/taehv; these fixtures come from @1f14a56).

    python scripts/taehv_reference.py fixtures --reference /tmp/taehv_ref/taehv.py --out tests/fixtures
    python scripts/taehv_reference.py parity --reference /tmp/taehv_ref/taehv.py   # published sizes, ~2 min on CPU

Random weights: torch's default conv init shrinks the signal through TAEHV's ~20 ReLU layers until every decoded
pixel clamps to 0, which would hide most errors, so every conv is drawn He-normal (residual branches halved), biases
uniform in ±0.1, and the last conv of each side is rescaled so that latents have unit spread and decoded pixels
sit around 0.5 ± 0.25 (a few percent clamped). Weights and inputs are rounded to float16 values, so the fixture
stores them in float16 losslessly; the reference's outputs are float32.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liveedit_jax.taehv import STAGES, TAEHVConfig  # noqa: E402
from tests.numerics import rel_err  # noqa: E402

# The fixtures (tests/test_taehv.py reads them): the tiny preset (taew2_1's geometry), and a variant with every
# other knob set differently (pixel-shuffle 2, an odd latent width, 8× time both ways, as taeltx files have).
FIXTURES = {
    "tiny": dict(config=TAEHVConfig.preset("tiny"), batch=2, frames=13, height=16, width=24, latents=4),
    "p2": dict(config=TAEHVConfig(name="p2", latent_channels=12, patch_size=2, encoder_width=6,
                                  decoder_widths=(10, 8, 6, 4), encoder_time_downscale=(True, True, True),
                                  decoder_time_upscale=(True, True, True)),
               batch=1, frames=9, height=32, width=32, latents=2),
}


def load_reference(path: str):
  spec = importlib.util.spec_from_file_location("taehv_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _sequentials(ref, cfg: TAEHVConfig) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
  """The reference's encoder and decoder layouts built from its own blocks at `cfg`'s widths (its `TAEHV.__init__`
  hard-codes 64 and (256, 128, 64, 64))."""
  nn, p2, w, n = torch.nn, cfg.patch_size ** 2, cfg.encoder_width, cfg.decoder_widths
  enc = [ref.conv(3 * p2, w), nn.ReLU()]
  for s in range(STAGES):
    enc += [ref.TPool(w, 2 if cfg.encoder_time_downscale[s] else 1), ref.conv(w, w, stride=2, bias=False),
            *(ref.MemBlock(w, w) for _ in range(3))]
  enc.append(ref.conv(w, cfg.latent_channels))
  dec = [ref.Clamp(), ref.conv(cfg.latent_channels, n[0]), nn.ReLU()]
  for s in range(STAGES):
    dec += [*(ref.MemBlock(n[s], n[s]) for _ in range(3)), nn.Upsample(scale_factor=2),
            ref.TGrow(n[s], 2 if cfg.decoder_time_upscale[s] else 1), ref.conv(n[s], n[s + 1], bias=False)]
  dec += [nn.ReLU(), ref.conv(n[3], 3 * p2)]
  return nn.Sequential(*enc), nn.Sequential(*dec)


def build_reference(ref, cfg: TAEHVConfig):
  """The reference TAEHV for `cfg`; at the published widths it is the reference's own module, unmodified."""
  model = ref.TAEHV(checkpoint_path=None, encoder_time_downscale=cfg.encoder_time_downscale,
                    decoder_time_upscale=cfg.decoder_time_upscale, patch_size=cfg.patch_size,
                    latent_channels=cfg.latent_channels)
  enc, dec = _sequentials(ref, cfg)
  if (cfg.encoder_width, cfg.decoder_widths) == (64, (256, 128, 64, 64)):
    # The rebuilt layout must be the reference's own, key for key and shape for shape.
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    rebuilt = {f"{part}.{k}": tuple(v.shape) for part, seq in (("encoder", enc), ("decoder", dec))
               for k, v in seq.state_dict().items()}
    assert own == rebuilt, "the fixture layout differs from the reference's"
  else:
    model.encoder, model.decoder = enc, dec
  return model.eval()


def randomize(ref, model, video: torch.Tensor, latents: torch.Tensor, seed: int) -> None:
  """He-normal convs (see the module docstring), then the last convs rescaled on these inputs; float16 values."""
  gen = torch.Generator().manual_seed(seed)
  f16 = lambda t: t.half().float()  # noqa: E731
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.copy_(f16(torch.randn(module.weight.shape, generator=gen) * (2 / fan_in) ** 0.5))
        if module.bias is not None:
          module.bias.copy_(f16((torch.rand(module.bias.shape, generator=gen) * 2 - 1) * 0.1))
      if isinstance(module, ref.MemBlock):
        module.conv[4].weight.mul_(0.5)
    last = model.encoder[-1]
    z = model.encode_video(video, parallel=True, show_progress_bar=False)
    scale = 1 / z.std()
    last.weight.copy_(f16(last.weight * scale))
    last.bias.copy_(f16(last.bias * scale))
    last = model.decoder[-1]
    y = ref.apply_model_with_memblocks(model.decoder, latents, True, False)
    scale = 0.25 / y.std()
    last.weight.copy_(f16(last.weight * scale))
    last.bias.copy_(f16((last.bias - y.mean()) * scale + 0.5))


def random_inputs(cfg: TAEHVConfig, rng: np.random.Generator, batch: int, frames: int, height: int, width: int,
                  latents: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 video [B, T, H, W, 3] and float16-valued latents [B, F, h, w, z] (spread 1.5: the input clamp bends)."""
  s = cfg.spatial_factor
  video = rng.integers(0, 256, (batch, frames, height, width, 3), dtype=np.uint8)
  z = (rng.standard_normal((batch, latents, height // s, width // s, cfg.latent_channels)) * 1.5)
  return video, z.astype(np.float16).astype(np.float32)


def to_unit(video_u8: np.ndarray) -> np.ndarray:
  """uint8 → the project's [−1, 1] float32, computed the way tests/test_taehv.py computes it."""
  return video_u8.astype(np.float32) / 127.5 - 1


def reference_encode(model, video: np.ndarray, dtype=torch.float32) -> np.ndarray:
  """[−1, 1] video [B, T, H, W, 3] → the reference's encode_video (parallel, in `dtype`) [B, F, h, w, z] float32."""
  x = torch.from_numpy((video + 1) / 2).permute(0, 1, 4, 2, 3)
  with torch.no_grad():
    z = copy.deepcopy(model).to(dtype).encode_video(x.to(dtype), parallel=True, show_progress_bar=False)
  return z.float().permute(0, 1, 3, 4, 2).numpy()


def reference_decode(model, latents: np.ndarray, dtype=torch.float32) -> np.ndarray:
  """latents [B, F, h, w, z] → the reference's decode_video (parallel, in `dtype`), mapped to [−1, 1],
  [B, T, H, W, 3] float32."""
  z = torch.from_numpy(latents).permute(0, 1, 4, 2, 3).to(dtype)
  with torch.no_grad():
    y = copy.deepcopy(model).to(dtype).decode_video(z, parallel=True, show_progress_bar=False)
  return y.float().permute(0, 1, 3, 4, 2).numpy() * 2 - 1


def reference_stream(ref, model, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The reference's StreamingTAEHV, frame by frame: (latents of every complete group, decoded frames of them)."""
  stream = ref.StreamingTAEHV(model)
  x = torch.from_numpy((video + 1) / 2).permute(0, 1, 4, 2, 3)
  latents, frames = [], []
  with torch.no_grad():
    for t in range(x.shape[1]):
      z = stream.encode(x[:, t:t + 1])
      if z is not None:
        latents.append(z)
        frame = stream.decode(z)
        while frame is not None:
          frames.append(frame)
          frame = stream.decode()
  to_ours = lambda ts: torch.cat(ts, 1).permute(0, 1, 3, 4, 2).numpy()  # noqa: E731
  return to_ours(latents), to_ours(frames) * 2 - 1


def write_fixtures(ref, out: Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  # The reference's own taew2_1 module, key → shape, for the converter's table at the published sizes.
  published = {k: list(v.shape) for k, v in ref.TAEHV(checkpoint_path=None).state_dict().items()}
  for name, spec in FIXTURES.items():
    cfg, seed = spec["config"], 20
    rng = np.random.default_rng(seed)
    video_u8, latents = random_inputs(cfg, rng, **{k: spec[k] for k in ("batch", "frames", "height", "width",
                                                                         "latents")})
    video = to_unit(video_u8)
    torch.manual_seed(seed)
    model = build_reference(ref, cfg)
    randomize(ref, model, torch.from_numpy((video + 1) / 2).permute(0, 1, 4, 2, 3),
              torch.from_numpy(latents).permute(0, 1, 4, 2, 3), seed)
    encoded, decoded = reference_encode(model, video), reference_decode(model, latents)
    # The reference's own bfloat16 error on these weights: the floor the bf16 test is held to.
    bf16_error = [rel_err(reference_encode(model, video, torch.bfloat16), encoded),
                  rel_err(reference_decode(model, latents, torch.bfloat16), decoded)]
    arrays = {f"weights/{k}": v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    assert all(np.array_equal(arrays[f"weights/{k}"].astype(np.float32), v.numpy())
               for k, v in model.state_dict().items()), "weights are not float16 values"
    np.savez_compressed(out / f"taehv_{name}.npz", config=np.array(json.dumps(cfg.to_dict())), video_u8=video_u8,
                        encoded=encoded, latents=latents.astype(np.float16), decoded=decoded,
                        reference_bf16_error=np.array(bf16_error),
                        reference_taew2_1_shapes=np.array(json.dumps(published)), **arrays)
    clamped = np.mean(np.abs(decoded) >= 1)
    print(f"{name}: video {video.shape} → latents {encoded.shape} (std {encoded.std():.2f}); latents "
          f"{latents.shape} → {decoded.shape} ({clamped:.1%} clamped); "
          f"reference bf16 error {bf16_error[0]:.2e} / {bf16_error[1]:.2e}; "
          f"{(out / f'taehv_{name}.npz').stat().st_size / 1e3:.0f} kB")



def parity(ref) -> None:
  """Published sizes: converts a .pth and a .safetensors of random weights and compares encode / decode, whole clip
  and streaming, in float32 (both files), bfloat16 and float16 (with the reference's own error in those dtypes)."""
  import functools  # noqa: PLC0415

  import jax  # noqa: PLC0415
  from safetensors.torch import save_file  # noqa: PLC0415

  from convert import taehv as convert_taehv  # noqa: PLC0415
  from liveedit_jax import taehv  # noqa: PLC0415

  cases = {"taew2_1": TAEHVConfig.preset("taew2_1"),
           # taew2_2 / taehv1_5's knobs (pixel-shuffle 2, 48 channels) at the published widths
           "patch2-z48": TAEHVConfig(name="patch2-z48", patch_size=2, latent_channels=48)}
  runs = [("pth", "float32"), ("safetensors", "float32"), ("pth", "bfloat16"), ("pth", "float16")]
  for name, cfg in cases.items():
    seed, h, w = 7, 64, 96
    rng = np.random.default_rng(seed)
    video = to_unit(rng.integers(0, 256, (1, 25, h, w, 3), dtype=np.uint8))
    s = cfg.spatial_factor
    latents = (rng.standard_normal((1, 6, h // s, w // s, cfg.latent_channels)) * 1.5).astype(np.float32)
    torch.manual_seed(seed)
    model = build_reference(ref, cfg)
    randomize(ref, model, torch.from_numpy((video + 1) / 2).permute(0, 1, 4, 2, 3),
              torch.from_numpy(latents).permute(0, 1, 4, 2, 3), seed)
    ref_enc, ref_dec = reference_encode(model, video), reference_decode(model, latents)
    stream_frames = video[:, :24]  # 2 chunks of 12 frames ↔ 3 latents
    ref_stream_latents, ref_stream_frames = reference_stream(ref, model, stream_frames)
    rows = {}
    for dtype in ("bfloat16", "float16"):
      rows[("reference", dtype)] = (rel_err(reference_encode(model, video, getattr(torch, dtype)), ref_enc),
                                    rel_err(reference_decode(model, latents, getattr(torch, dtype)), ref_dec))
    with tempfile.TemporaryDirectory() as tmp:
      tmp = Path(tmp)
      sd = {k: v.contiguous() for k, v in model.state_dict().items()}
      torch.save(sd, tmp / f"{name}.pth")
      save_file(sd, str(tmp / f"{name}.safetensors"))
      for suffix in ("pth", "safetensors"):
        convert_taehv.convert(tmp / f"{name}.{suffix}", tmp / f"out_{suffix}", config=cfg)
      for suffix, dtype in runs:
        config, params = taehv.load_taehv(tmp / f"out_{suffix}", compute_dtype=dtype)
        enc = jax.jit(functools.partial(taehv.taehv_encode, config))(params, video)
        dec = jax.jit(functools.partial(taehv.taehv_decode, config))(params, latents)
        state = taehv.init_taehv_stream(config, 1, h, w)
        encode_step = jax.jit(functools.partial(taehv.taehv_encode_step, config), static_argnames="first")
        decode_step = jax.jit(functools.partial(taehv.taehv_decode_step, config), static_argnames="first")
        z_chunks, y_chunks = [], []
        for c in range(2):
          state, z = encode_step(params, state, stream_frames[:, 12 * c:12 * c + 12], first=c == 0)
          state, y = decode_step(params, state, z, first=c == 0)
          z_chunks.append(z)
          y_chunks.append(y)
        rows[(suffix, dtype)] = (rel_err(enc, ref_enc), rel_err(dec, ref_dec),
                                 rel_err(np.concatenate(z_chunks, 1), ref_stream_latents),
                                 rel_err(np.concatenate(y_chunks, 1), ref_stream_frames))
    n_params = sum(v.numel() for v in model.state_dict().values())
    print(f"{name}: {n_params / 1e6:.2f} M params; whole clip: encode 25 frames of {h}×{w}, decode 6 latents "
          f"({np.mean(np.abs(ref_dec) >= 1):.1%} of the reference's pixels clamped); stream: 2 chunks of 12 frames "
          f"→ 3 latents → 9, 12 frames, against StreamingTAEHV frame by frame")
    print("  ‖out − ref‖/‖ref‖ against the reference in float32:")
    print(f"  {'run':27s} {'encode':>9s} {'decode':>9s} {'stream enc':>11s} {'stream dec':>11s}")
    for (who, dtype), errors in rows.items():
      label = f"{'ours, ' + who if who != 'reference' else 'reference'} {dtype}"
      print(f"  {label:27s} " + " ".join(f"{e:9.2e}" if i < 2 else f"{e:11.2e}" for i, e in enumerate(errors)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("mode", choices=("fixtures", "parity"))
  parser.add_argument("--reference", required=True, help="path of the reference taehv.py")
  parser.add_argument("--out", default="tests/fixtures", help="fixtures: output directory")
  args = parser.parse_args()
  ref = load_reference(args.reference)
  if args.mode == "fixtures":
    write_fixtures(ref, Path(args.out))
  else:
    parity(ref)


if __name__ == "__main__":
  main()
