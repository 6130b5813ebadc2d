"""The stream's autoencoder sides: a Wan VAE (`vae.py`) or a TAEHV (`taehv.py`) encodes, either one decodes.

    from liveedit_jax import autoencoders
    encoder = autoencoders.load("checkpoints/wan2.1-vae", compute_dtype="bfloat16")   # the kind read from the dir
    decoder = autoencoders.load("checkpoints/taew2_1", compute_dtype="bfloat16")
    chunking = autoencoders.chunking(encoder.config, decoder.config, latents=3)   # read (9, 12), written (9, 12)
    state = autoencoders.init_state(encoder.config, decoder.config, batch=1, height=480, width=832)
    state, latents = autoencoders.encode_step(encoder.config, encoder.params, state, frames, first=True)
    state, video = autoencoders.decode_step(decoder.config, decoder.params, state, latents, first=True)

A converted directory says which autoencoder it holds in its config.json ("kind": "vae" from
`python -m convert.wan_vae`, "taehv" from `python -m convert.taehv`); `read_config` and `load` dispatch on it,
once, and everything after on the config's type through one table (`KINDS`).

Latents cross between the two unchanged: both speak the Wan DiT's normalised latents ((μ − mean) / std, what
`vae_encode` returns and `vae_decode` takes; TAEHV is trained on exactly those, see `taehv.py`), so a Wan encoder's
latents go to a TAEHV decoder as they are, and the other way round. Nothing here scales or shifts them.

Frame geometry per chunk of c latents (`chunking`): the Wan VAE encodes 1 + 4(c − 1) frames for the first chunk
and 4c after (9, then 12 for c = 3), TAEHV 4c every time (12, 12); both decoders give 1 + 4(c − 1), then 4c (9,
then 12), decoded latent i ending at frame 4i. A TAEHV encoder's latent i looks 3 frames further ahead than Wan's
(frames ≤ 4i + 3), so its stream reads 3 frames more than it writes: `Chunking.lag`. `stream_chunks` splits an
input into the encoder's chunks and pairs each with the source frames its decoded frames are the edit of, so
output frame j is always the edit of input frame j; at the input's end the last chunk is padded by repeating the
last frame, and with a lag one more chunk of padding alone flushes the frames still held.

State: `AutoencoderState(encoder, decoder)` holds the encoding autoencoder's stream buffers and the decoding one's
(each the `encoder` / `decoder` field of its own `VAEStreamState` / `TAEHVStreamState`), a fixed-shape pytree
whatever the pair, so one compile of each step serves a stream of any length.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Literal, Mapping, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from liveedit_jax import param_io, taehv, vae
from liveedit_jax.taehv import TAEHVConfig, TAEHVStreamState
from liveedit_jax.vae import VAEConfig, VAEStreamState

Config = VAEConfig | TAEHVConfig
Cache = dict[str, jax.Array]


def _wan_frames(config: VAEConfig, latents: int, first: bool) -> int:
  """Video frames ↔ `latents` latents of a Wan VAE stream step: its first chunk encodes frame 0 alone."""
  k = config.temporal_factor
  return 1 + k * (latents - 1) if first else k * latents


@dataclasses.dataclass(frozen=True)
class Kind:
  """One autoencoder family: its param_io kind, its names in messages and its functions."""

  name: str  # the param_io kind of its converted directories
  noun: str  # how messages name it ("the VAE", "VAE z_dim 8")
  channels_field: str  # its config's latent channels field
  load: Callable[..., tuple[Any, Any]]  # (path, compute_dtype) → (config, params)
  stream_state: type  # its stream state: encoder and decoder buffers
  init_stream: Callable[..., Any]  # (config, batch, height, width) → zero stream state
  encode_step: Callable[..., Any]  # (config, params, state, frames, *, first) → (state, latents)
  decode_step: Callable[..., Any]  # (config, params, state, latents, *, first) → (state, frames)
  encode: Callable[..., jax.Array]  # whole clip: (config, params, video [B, 1 + 4k, …]) → latents [B, 1 + k, …]
  decode: Callable[..., jax.Array]  # whole clip: (config, params, latents [B, F, …]) → video [B, 1 + 4F − 4, …]
  encoder_frames: Callable[[Any, int, bool], int]  # (config, latents, first) → frames an encode step takes
  decoder_frames: Callable[[Any, int, bool], int]  # (config, latents, first) → frames a decode step gives
  sides: Mapping[str, tuple[str, ...]]  # "encoder", "decoder" → the top-level params each side reads


KINDS: dict[type, Kind] = {
    VAEConfig: Kind("vae", "VAE", "z_dim", vae.load_vae, VAEStreamState, vae.init_vae_stream, vae.vae_encode_step,
                    vae.vae_decode_step, vae.vae_encode, vae.vae_decode, _wan_frames, _wan_frames,
                    {"encoder": ("encoder", "quant_conv"), "decoder": ("post_quant_conv", "decoder")}),
    TAEHVConfig: Kind(taehv.KIND, "TAEHV", "latent_channels", taehv.load_taehv, TAEHVStreamState,
                      taehv.init_taehv_stream, taehv.taehv_encode_step, taehv.taehv_decode_step, taehv.taehv_encode,
                      taehv.taehv_decode, TAEHVConfig.encoder_frames, TAEHVConfig.decoder_frames,
                      {"encoder": ("encoder",), "decoder": ("decoder",)}),
}
_BY_NAME = {kind.name: (config, kind) for config, kind in KINDS.items()}


def kind_of(config: Config) -> Kind:
  return KINDS[type(config)]


def latent_channels(config: Config) -> int:
  return getattr(config, kind_of(config).channels_field)


def read_config(path: str | os.PathLike) -> Config:
  """The config of a converted Wan VAE or TAEHV directory, told apart by its config.json's kind (no weights read);
  any other directory is a one-line error naming the file, the kind found and the kinds expected."""
  name, fields = param_io.read_kind_config(path, tuple(_BY_NAME))
  return _BY_NAME[name][0].from_dict(fields)


@dataclasses.dataclass(frozen=True, eq=False)
class Autoencoder:
  """A loaded autoencoder: its config (VAEConfig or TAEHVConfig) and params on the default device."""

  config: Config
  params: Any


def load(path: str | os.PathLike, compute_dtype: str | None = None,
         side: Literal["both", "encoder", "decoder"] = "both") -> Autoencoder:
  """A converted Wan VAE or TAEHV directory, whichever it holds (`read_config`), with its loader.

  side: "encoder" or "decoder" keeps only the params that side runs (`Kind.sides`): a stream that decodes with
  another directory's decoder does not hold this one's on its device.
  """
  kind = kind_of(read_config(path))
  config, params = kind.load(path, compute_dtype=compute_dtype)
  if side != "both":
    params = {name: params[name] for name in kind.sides[side]}
  return Autoencoder(config, params)


class Chunking(NamedTuple):
  """Video frames per chunk of a stream: `read`, what the encoder takes, and `written`, what the decoder gives,
  each (first chunk, later chunks)."""

  read: tuple[int, int]
  written: tuple[int, int]

  @property
  def lag(self) -> int:
    """Input frames read ahead of the output: 3 with a TAEHV encoder (its look-ahead), 0 with Wan's."""
    return self.read[0] - self.written[0]


def chunking(encoder: Config, decoder: Config, latents: int) -> Chunking:
  """The frame counts of chunks of `latents` latents between `encoder` and `decoder` (checked by `check_pair`)."""
  enc, dec = kind_of(encoder), kind_of(decoder)
  return Chunking(read=(enc.encoder_frames(encoder, latents, True), enc.encoder_frames(encoder, latents, False)),
                  written=(dec.decoder_frames(decoder, latents, True), dec.decoder_frames(decoder, latents, False)))


def check_pair(encoder: Config, decoder: Config, encoder_name: str, decoder_name: str) -> None:
  """A ValueError naming both directories when `decoder` cannot decode `encoder`'s latents in the stream: other
  latent channels, another spatial factor, or another frame count per later chunk (the stream's lag must stay
  constant)."""
  enc, dec = kind_of(encoder), kind_of(decoder)
  for what, got, want in (
      ("latent channels", latent_channels(decoder), latent_channels(encoder)),
      ("spatial factor", decoder.spatial_factor, encoder.spatial_factor),
      ("frames per later latent", dec.decoder_frames(decoder, 1, False), enc.encoder_frames(encoder, 1, False))):
    if got != want:
      raise ValueError(f"{decoder_name}: the {dec.noun} decoder's {what} {got} differs from the {enc.noun} "
                       f"encoder's {want} ({encoder_name})")


def stream_chunks(read: Callable[[int], np.ndarray], chunking: Chunking) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Splits a stream of uint8 frames into the encoder's chunks, until every frame read has its chunk.

  read(n): up to the n next frames [≤ n, H, W, 3] (fewer: the input has ended; it is not called again).
  Yields per chunk (input [chunking.read[·], H, W, 3]: the frames the encoder takes, padded at the input's end by
  repeating the last frame read; source [n ≤ chunking.written[·], H, W, 3]: the input frames whose edits are the
  first n frames the chunk decodes, i.e. those to write). With a lag (a TAEHV encoder) the source trails the
  input by `chunking.lag` frames, and an input ending on a chunk boundary takes one chunk of padding alone to
  write its last frames.
  """
  pending, last, index, ended = None, None, 0, False
  while True:
    size = chunking.read[index > 0]
    frames = last[:0] if ended else read(size)
    ended = ended or len(frames) < size
    pending = frames if pending is None else np.concatenate([pending, frames])
    if not len(pending):
      return
    if len(frames):
      last = frames[-1:]
    written = chunking.written[index > 0]
    source, pending = pending[:written], pending[written:]
    yield np.concatenate([frames, np.repeat(last, size - len(frames), axis=0)]), source
    index += 1


@flax.struct.dataclass
class AutoencoderState:
  """The autoencoders' stream buffers: `encoder` the encoding one's (its stream state's `encoder` field), `decoder`
  the decoding one's (its `decoder` field); each a dict of arrays in its compute dtype, zeros at the start."""

  encoder: Cache
  decoder: Cache


def _zeros(config: Config, field: str, batch: int, height: int, width: int) -> Cache:
  """One side of `config`'s zero stream state, the other side never allocated."""
  shapes = jax.eval_shape(lambda: kind_of(config).init_stream(config, batch, height, width))
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), getattr(shapes, field))


def init_state(encoder: Config, decoder: Config, batch: int, height: int, width: int) -> AutoencoderState:
  """Zero buffers for a stream of `batch` videos of height × width pixels, encoded by `encoder`, decoded by
  `decoder`."""
  return AutoencoderState(encoder=_zeros(encoder, "encoder", batch, height, width),
                          decoder=_zeros(decoder, "decoder", batch, height, width))


def encode_step(config: Config, params: Any, state: AutoencoderState, frames: jax.Array, *,
                first: bool) -> tuple[AutoencoderState, jax.Array]:
  """The encoder's stream step (`vae_encode_step` or `taehv_encode_step`): frames [B, T, H, W, 3] in [−1, 1],
  T = `chunking(...).read[not first]` → normalised latents [B, F, h, w, z]. Only `state.encoder` changes. Jit
  with `config` and `first` static and the state donated."""
  kind = kind_of(config)
  out, latents = kind.encode_step(config, params, kind.stream_state(encoder=state.encoder, decoder={}), frames,
                                  first=first)
  return state.replace(encoder=out.encoder), latents


def decode_step(config: Config, params: Any, state: AutoencoderState, latents: jax.Array, *,
                first: bool) -> tuple[AutoencoderState, jax.Array]:
  """The decoder's stream step (`vae_decode_step` or `taehv_decode_step`): normalised latents [B, F, h, w, z] →
  frames [B, T, H, W, 3] in [−1, 1], T = `chunking(...).written[not first]`. Only `state.decoder` changes."""
  kind = kind_of(config)
  out, frames = kind.decode_step(config, params, kind.stream_state(encoder={}, decoder=state.decoder), latents,
                                 first=first)
  return state.replace(decoder=out.decoder), frames


def encode(config: Config, params: Any, video: jax.Array) -> jax.Array:
  """Whole-clip encode (`vae_encode` or `taehv_encode`): video [B, 1 + 4k, H, W, 3] → latents [B, 1 + k, h, w, z]."""
  return kind_of(config).encode(config, params, video)


def decode(config: Config, params: Any, latents: jax.Array) -> jax.Array:
  """Whole-clip decode (`vae_decode` or `taehv_decode`): latents [B, F, h, w, z] → video [B, 1 + 4(F − 1), H, W,
  3] in [−1, 1]."""
  return kind_of(config).decode(config, params, latents)
