"""A live web demo: edit the webcam, a video file or a procedural clip in the browser, the instruction changeable
while it runs.

    python -m liveedit_jax.serve                      # the default model on CPU: open http://127.0.0.1:8000/
    python -m liveedit_jax.serve --dit checkpoints/liveedit-1.3b --vae checkpoints/wan2.1-vae \\
        --decoder checkpoints/taew2_1 --text-encoder checkpoints/umt5-xxl --prompt-cache cache/prompts   # a GPU

The models load and every step compiles before the server listens (the stream CLI's `load_models` and
`compile_steps`, plus the prompt switch under both KV policies), so a stream, and a switch in it, compiles nothing.
The text encoder stays loaded: an instruction typed on the page is embedded when it arrives (through the prompt
cache when given). The model options are the stream CLI's (`python -m liveedit_jax.stream --help`); a chunk's
stages run one after another here (encode, DiT, decode, then its frames are sent), so --devices 2 places them on
two devices without overlapping them, and --sync-stages adds each stage's ms to the chunk's report.

The page (`serve_static/index.html`, one file of HTML and JS served at /) picks the source: the webcam
(getUserMedia), a video file played in a <video> element in the browser (its frames grabbed from the element: the
file never reaches the server), or a procedural clip rendered by the server (`synthetic.make_example("test",
INDEX, ...)`, its instruction the prompt when none is typed). It shows source | edit side by side as the frames
come back, the frame rate, the latency, the frames received and dropped, and sends a new instruction on "apply"
with the KV policy of its check box (keep, or LongLive's recache: `prompt_switch`). A switch takes effect at the
next chunk boundary: the first chunk the stream starts after the instruction was embedded.

Protocol, over one WebSocket at /ws (one JSON object per text message, "type" naming it):
  server → client  {"type": "ready", "width", "height", "fps", "chunk_frames": [first, later], "recache": whether
                   the recache is available (no sink frames), "max_prompt_chars", "max_clip_frames"} on connecting;
                   {"type": "busy", "message"} instead when another client streams (then the socket closes, 1013);
                   per chunk its frames, each a binary message of raw rgb24 source | edit, uint8 [H, 2W, 3], then
                   {"type": "chunk", "index", "inputs": the received frames' numbers (0, 1, ... in arrival order)
                   it edited, "prompt", "fps", "latency_ms", "received", "dropped", "mask": the fraction of tokens
                   it recomputed (null: all, or no mask cache), "ms": [encode, DiT, decode] with --sync-stages};
                   {"type": "started", "prompt", "source"}, {"type": "switch", "prompt", "recache"} (embedded, in
                   effect from the next chunk), {"type": "done", "received", "dropped"} (the stream ended),
                   {"type": "warning" | "error", "message"}.
  client → server  {"type": "start", "source": "camera" | "file" | "synthetic", "prompt", "clip": INDEX, "frames":
                   N (synthetic only)}; for camera and file, frames as binary messages of raw rgb24 at the model's
                   size, uint8 [H, W, 3] (the page scales its video to cover W × H and crops the centre, as
                   `video_io` does); {"type": "prompt", "prompt", "recache": bool}; {"type": "stop"}: the frames
                   held are edited (the last chunk padded), then "done".
Frames travel as raw rgb24 both ways: exact (the test compares the edits bit for bit with the library's offline
path), no codec on either side, and on localhost the bandwidth is no limit (128×128 at 16 fps: 0.8 MB/s in,
1.6 MB/s out; 480×832: 19 and 38 MB/s). A remote --host would want JPEG; that is not built.

Keeping up with a live source (`LatestFrames`): received frames wait in a buffer of one later chunk's frames (12
with Wan's VAE); a frame arriving when it is full drops the oldest, and a chunk that starts takes the newest frames
it needs and drops those older, so the stream always edits the newest frames and falls behind by at most a chunk.
Every dropped frame is counted and shown. A procedural clip is not live: the stream reads it frame by frame as
fast as it edits, dropping nothing.

Safety: the server binds to 127.0.0.1 unless --host says otherwise (then a warning: anyone who reaches the port can
use the model; there is no authentication); one stream at a time (a second client gets the busy message, and a
client connecting while the last one's state is being freed waits for it); a client that disconnects stops its
stream at the next chunk and frees its state; a WebSocket message may be at most one frame's bytes plus 4 KiB
(`max_msg_size`: a longer one closes the socket, 1009), and a frame of the wrong size, a prompt of more than
MAX_PROMPT_CHARS characters, a clip of more than MAX_CLIP_FRAMES frames or a malformed message is refused with a
message; the client never names a file or a path (a file is played by the browser, a clip named by its index);
a WebSocket opened by a page of another origin (another site in the user's browser) is refused.

Why aiohttp: one well-kept dependency (asyncio, maintained by aio-libs since 2014) gives the HTTP server, the
WebSockets with a message size limit, and a test client that runs the server in the test's process
(`aiohttp.test_utils`), with no ASGI server or second package beside it. The device work runs in one thread per
stream; the event loop only moves bytes, so a slow chunk never blocks the socket (and frames keep arriving to be
dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import jax
import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from liveedit_jax import autoencoders, cli, default_model, prompt_switch, stream, synthetic, video_io
from liveedit_jax.config import CLI_DTYPES
from liveedit_jax.placement import Placement, abstract, born_on, plan
from liveedit_jax.prompt_cache import PromptCache
from liveedit_jax.prompt_switch import History
from liveedit_jax.stream_step import StreamConfig, StreamState, init_stream
from liveedit_jax.umt5 import encode_prompts, load_text_encoder, text_encoder_identity
from liveedit_jax.video_io import to_uint8

STATIC = Path(__file__).resolve().parent / "serve_static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_PROMPT_CHARS = 500
MAX_CLIP_FRAMES = 600  # 38 s at 16 fps; rendered whole before streaming (~0.7 GB at 480×832)
TEXT_BYTES = 4096  # what a WebSocket message may hold beyond one frame (a JSON message)
SOURCES = ("camera", "file", "synthetic")
_SLOT = web.AppKey("slot", object)  # the server's `Slot`
_ENGINE = web.AppKey("engine", object)


@dataclasses.dataclass(frozen=True)
class Engine:
  """The loaded models and compiled steps every stream of the server runs (one at a time), and its geometry.

  steps: `stream.compile_steps`'s (None until `build_engine` has compiled them), its `switch` the recache (with
  `recache_ok`) and `keep` the switch that keeps the KV cache; text: the loaded text encoder, with `cache` its
  prompt cache (or None)."""

  models: stream.Models
  placement: Placement
  steps: stream.Steps | None
  keep: Any
  recache_ok: bool
  chunking: autoencoders.Chunking
  options: StreamConfig
  height: int
  width: int
  fps: float
  seed: int
  sync: bool
  text: Any
  cache: PromptCache | None

  @property
  def frame_bytes(self) -> int:
    return self.height * self.width * 3

  def embed(self, prompt: str) -> tuple[jax.Array, list[str]]:
    """The prompt's embedding [1, text_len, text_dim] on the DiT's device, and its words the tokenizer does not
    know."""
    context = (self.cache.get_or_encode(self.text, [prompt]) if self.cache else
               np.asarray(jax.device_get(encode_prompts(self.text, [prompt]))))
    return jax.device_put(context, self.placement.dit), stream.unknown_words(self.text.tokenizer, prompt)

  def new_stream(self, context: jax.Array) -> tuple[StreamState, autoencoders.AutoencoderState, History | None]:
    """A fresh stream under `context`: its DiT state, autoencoder state and, when the recache is available, an
    empty history (pushed every chunk, so that any switch can re-cache)."""
    m, on = self.models, self.placement
    s = m.encoder.config.spatial_factor
    state = born_on(on.dit, lambda: init_stream(m.dit_config, m.dit_params, context, latent_height=self.height // s,
                                                latent_width=self.width // s, options=self.options,
                                                rng=jax.random.key(self.seed)))
    ae_state = born_on(on.autoencoder, lambda: autoencoders.init_state(m.encoder.config, m.decoder.config, 1,
                                                                       self.height, self.width))
    history = born_on(on.dit, lambda: prompt_switch.empty_history(state, m.dit_config)) if self.recache_ok else None
    return state, ae_state, history

  def switch(self, state: StreamState, context: jax.Array, history: History | None) -> StreamState:
    """The state under `context` from the next chunk, its KV cache re-cached from `history`, or kept (None)."""
    steps = self.steps if history is not None else dataclasses.replace(self.steps, switch=self.keep)
    return steps.switch_prompt(self.models.dit_params, state, context, history)


def build_engine(args: argparse.Namespace) -> Engine:
  """Loads the models (the text encoder kept) and compiles every step, the switch of both KV policies included."""
  dit_config, encoder, _ = default_model.check_models(args.models, args.height, args.width)
  decoder = stream.check_decoder(args, encoder)
  options = stream.stream_options(args)
  chunking = autoencoders.chunking(encoder, decoder, options.chunk_frames)
  dtype = args.dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32")
  path = args.models.text_encoder
  text = stream.load_logged(stream._model_name(args, "text_encoder", "text encoder"), path,
                            lambda: load_text_encoder(path), lambda encoder: encoder.params)
  cache = PromptCache(args.prompt_cache, text_encoder_identity(path)) if args.prompt_cache else None
  models = stream.load_models(args, dtype, encoder, decoder)
  engine = Engine(models, args.placement, None, None, not options.sink_frames, chunking, options, args.height,
                  args.width, args.fps, args.seed, args.sync_stages, text, cache)
  context, _ = engine.embed("make it snowy")  # any prompt: the steps depend on the embedding's shape only
  state, ae_state, history = engine.new_stream(context)
  with cli.status("compiling the stream's steps and the prompt switch (keep and re-cache)") as compiling:
    with cli.CompileTimer() as timer:
      steps, count = stream.compile_steps(models, args.placement, state, ae_state, chunking, args.height,
                                          args.width, context, history)
      keep = steps.switch
      if history is not None:  # compile_steps compiled the recache: the keep policy is one more executable
        later = abstract(steps.dit[1].out_info[1], args.placement.dit)
        keep = prompt_switch.switch_step.lower(models.dit_config, models.dit_params, later,
                                               abstract(context, args.placement.dit), None).compile()
        count += 1
    compiling.note(f"{timer.count - timer.cache_hits} of {count} executables compiled, {timer.cache_hits} read "
                   f"from the compilation cache")
  return dataclasses.replace(engine, steps=steps, keep=keep)


class LatestFrames:
  """The received frames not yet in a chunk, at most `capacity` (the latest-frame policy: see the module
  docstring). `put` runs in the event loop, `take` in the stream's thread."""

  def __init__(self, capacity: int, shape: tuple[int, int, int]):
    self.capacity, self.shape, self.received, self.dropped, self.closed = capacity, shape, 0, 0, False
    self._held = collections.deque()  # (number, arrival perf_counter, frame uint8 [H, W, 3]), oldest first
    self._ready = threading.Condition()

  def put(self, frame: np.ndarray) -> None:
    with self._ready:
      self._held.append((self.received, time.perf_counter(), frame))
      self.received += 1
      if len(self._held) > self.capacity:
        self._held.popleft()
        self.dropped += 1
      self._ready.notify()

  def close(self) -> None:
    """No more frames: `take` returns what is held, then nothing."""
    with self._ready:
      self.closed = True
      self._ready.notify()

  def take(self, n: int) -> tuple[np.ndarray, list[int], float | None]:
    """The newest n frames, waiting for them (fewer once closed), the older ones dropped. Returns (frames uint8
    [≤ n, H, W, 3], their numbers, the newest one's arrival or None when none)."""
    with self._ready:
      self._ready.wait_for(lambda: len(self._held) >= n or self.closed)
      while len(self._held) > n:
        self._held.popleft()
        self.dropped += 1
      taken = list(self._held)
      self._held.clear()
    if not taken:
      return np.zeros((0, *self.shape), np.uint8), [], None
    return np.stack([frame for *_, frame in taken]), [number for number, *_ in taken], taken[-1][1]


class Channel:
  """A client's WebSocket, written from the event loop (`json`) or from its stream's thread (`send`)."""

  def __init__(self, ws: web.WebSocketResponse, loop: asyncio.AbstractEventLoop):
    self.ws, self.loop = ws, loop

  async def json(self, message: dict) -> None:
    await self.ws.send_json(message)

  def send(self, item: bytes | dict) -> None:
    """Sends bytes or a dict from another thread than the loop's, waiting until it is sent (so that a slow client
    holds the stream back instead of piling frames up in memory); raises when the socket is closed."""
    coroutine = self.ws.send_bytes(item) if isinstance(item, bytes) else self.ws.send_json(item)
    asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


class Stream(threading.Thread):
  """One stream of a client: edits chunks of `read`'s frames in this thread and sends each back through `send`
  (`Channel.send`) until the source ends or `cancel`."""

  def __init__(self, engine: Engine, context: jax.Array, prompt: str, send: Callable[[bytes | dict], None],
               clip: np.ndarray | None):
    super().__init__(name="liveedit stream", daemon=True)
    self.engine, self.context, self.prompt, self.send, self.clip = engine, context, prompt, send, clip
    self.frames = LatestFrames(max(engine.chunking.read), (engine.height, engine.width, 3))
    self.cancelled = False
    self._switch = None  # (prompt, context, recache): the switch before the next chunk
    self._lock = threading.Lock()
    self._numbers = collections.deque()  # the read frames' numbers, not yet written (a TAEHV encoder lags)
    self._arrival = None  # when the newest frame read arrived

  def queue_switch(self, prompt: str, context: jax.Array, recache: bool) -> None:
    with self._lock:
      self._switch = prompt, context, recache

  def cancel(self) -> None:
    self.cancelled = True
    self.frames.close()

  def read(self, n: int) -> np.ndarray:
    """Up to n next frames [≤ n, H, W, 3] for `autoencoders.stream_chunks`: the clip's, else the newest received."""
    if self.clip is not None:
      start = self.frames.received
      frames, self.frames.received = self.clip[start:start + n], min(start + n, len(self.clip))
      numbers, self._arrival = range(start, self.frames.received), time.perf_counter()
    else:
      frames, numbers, arrival = self.frames.take(n)
      self._arrival = arrival or self._arrival
    self._numbers.extend(numbers)
    return frames

  def run(self) -> None:
    try:
      self._stream()
      if not self.cancelled:
        self.send({"type": "done", "received": self.frames.received, "dropped": self.frames.dropped})
    except Exception as err:  # noqa: BLE001 (the client is told, when it is still there; the server goes on)
      if not self.cancelled:
        traceback.print_exc()
        with contextlib.suppress(Exception):
          self.send({"type": "error", "message": f"the stream failed: {err}"})

  def _stream(self) -> None:
    e = self.engine
    state, ae_state, history = e.new_stream(self.context)
    mask, last = None, time.perf_counter()  # the mask statistics chosen for the next chunk; the last chunk sent
    for index, (frames, source) in enumerate(autoencoders.stream_chunks(self.read, e.chunking)):
      if self.cancelled:
        return
      with self._lock:
        switch, self._switch = self._switch, None
      if switch is not None:
        self.prompt, context, recache = switch
        if index == 0:  # nothing edited yet: the stream starts under the new prompt
          state, ae_state, history = e.new_stream(context)
        else:
          state = e.switch(state, context, history if recache else None)
          mask = None if state.first_chunk else mask  # the next chunk recomputes every token
      ae_state, state, edited, next_mask, ms, history = stream.edit_chunk(
          e.models, e.steps, ae_state, state, frames, later=index > 0, sync=e.sync, history=history)
      ae_state, decoded, decode_ms = stream.decode_edited(e.models, e.steps, ae_state, edited, later=index > 0,
                                                          sync=e.sync)
      chunk_mask, mask = mask, next_mask
      edits = to_uint8(np.asarray(decoded)[0, :len(source)])  # waits for the chunk's device work
      for pair in np.concatenate([source, edits], axis=2):
        self.send(pair.tobytes())
      now = time.perf_counter()
      self.send({"type": "chunk", "index": index, "inputs": [self._numbers.popleft() for _ in source],
                 "prompt": self.prompt, "fps": len(source) / (now - last), "latency_ms": (now - self._arrival) * 1e3,
                 "received": self.frames.received, "dropped": self.frames.dropped,
                 "mask": None if chunk_mask is None else float(np.asarray(chunk_mask)[0]),
                 "ms": ms and list(ms + decode_ms)})
      last = now


@dataclasses.dataclass
class Slot:
  """The one stream the server runs: `client` the connection holding it, None when free."""

  client: Client | None = None


@dataclasses.dataclass(eq=False)
class Client:
  """The streaming client's connection: its stream when started, and whether it is being closed (its slot then
  freed once its stream has ended)."""

  stream: Stream | None = None
  closing: bool = False
  released: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class Refused(ValueError):
  """A client's message that cannot be followed; its text is sent back."""


async def index(request: web.Request) -> web.FileResponse:
  return web.FileResponse(STATIC / "index.html")


def _same_origin(request: web.Request) -> bool:
  """Whether the WebSocket was opened by a page of this server (or by a client that sends no Origin): a page of
  another site open in the user's browser may not drive the local model."""
  origin = request.headers.get("Origin")
  return origin is None or urlsplit(origin).netloc == request.host


def _prompt(message: dict, required: bool) -> str:
  prompt = message.get("prompt", "")
  if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
    raise Refused(f"the instruction must be text of at most {MAX_PROMPT_CHARS} characters")
  if required and not prompt.strip():
    raise Refused("type an instruction first, e.g. 'make the red circle blue'")
  return prompt.strip()


def _clip(engine: Engine, message: dict) -> synthetic.EditExample:
  """The procedural clip a start message names by its index and frame count."""
  clip, frames = message.get("clip", 0), message.get("frames", video_io.SYNTHETIC_FRAMES)
  if not isinstance(frames, int) or isinstance(frames, bool) or not 1 <= frames <= MAX_CLIP_FRAMES:
    raise Refused(f"a clip has 1 to {MAX_CLIP_FRAMES} frames, got {frames!r}")
  try:
    return synthetic.make_example(video_io.SYNTHETIC_SPLIT, clip, frames=frames, height=engine.height,
                                  width=engine.width)
  except ValueError as err:
    raise Refused(f"clip {clip!r}: {err}") from None


async def _start(engine: Engine, client: Client, message: dict, channel: Channel) -> None:
  if client.stream is not None and client.stream.is_alive():
    raise Refused("a stream is running: stop it first")
  source = message.get("source")
  if source not in SOURCES:
    raise Refused(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
  prompt, clip = _prompt(message, required=source != "synthetic"), None
  if source == "synthetic":
    example = await asyncio.to_thread(_clip, engine, message)
    clip, prompt = example.source, prompt or example.instruction
  context, unknown = await asyncio.to_thread(engine.embed, prompt)
  await _warn_unknown(unknown, channel)
  client.stream = Stream(engine, context, prompt, channel.send, clip)
  await channel.json({"type": "started", "prompt": prompt, "source": source})
  client.stream.start()


async def _switch(engine: Engine, client: Client, message: dict, channel: Channel) -> None:
  if client.stream is None or not client.stream.is_alive():
    raise Refused("no stream is running: start one first")
  prompt, recache = _prompt(message, required=True), message.get("recache", False)
  if not isinstance(recache, bool):
    raise Refused(f"recache must be true or false, got {recache!r}")
  if recache and not engine.recache_ok:
    raise Refused(f"the recache needs a stream without sink frames (this server keeps {engine.options.sink_frames}"
                  "): keep the KV cache")
  context, unknown = await asyncio.to_thread(engine.embed, prompt)
  await _warn_unknown(unknown, channel)
  client.stream.queue_switch(prompt, context, recache)
  await channel.json({"type": "switch", "prompt": prompt, "recache": recache})


async def _warn_unknown(words: list[str], channel: Channel) -> None:
  if words:
    await channel.json({"type": "warning", "message": f"the text encoder does not know {', '.join(map(repr, words))}: each "
          "reads as <unk>, so the edit cannot follow them"})


async def _on_message(engine: Engine, client: Client, msg, channel: Channel) -> None:
  """One message of the client, or a Refused naming what is wrong with it."""
  if msg.type == WSMsgType.BINARY:
    if client.stream is None or client.stream.clip is not None or not client.stream.is_alive():
      raise Refused("a frame needs a running camera or file stream: send a start message first")
    if len(msg.data) != engine.frame_bytes:
      raise Refused(f"a frame of {len(msg.data)} bytes: expected raw rgb24 at {engine.width}×{engine.height}, "
                    f"{engine.frame_bytes} bytes")
    client.stream.frames.put(np.frombuffer(msg.data, np.uint8).reshape(engine.height, engine.width, 3))
    return
  try:
    message = json.loads(msg.data)
  except json.JSONDecodeError:
    message = None
  if not isinstance(message, dict):
    raise Refused("a text message must be a JSON object with a type")
  kind = message.get("type")
  if kind == "start":
    await _start(engine, client, message, channel)
  elif kind == "prompt":
    await _switch(engine, client, message, channel)
  elif kind == "stop":
    if client.stream is not None:
      client.stream.frames.close()
  else:
    raise Refused(f"unknown message type {kind!r}: expected start, prompt or stop")


async def websocket(request: web.Request) -> web.WebSocketResponse:
  engine = request.app[_ENGINE]
  if not _same_origin(request):
    raise web.HTTPForbidden(text=f"a WebSocket from {request.headers['Origin']} (another site) is refused")
  ws = web.WebSocketResponse(max_msg_size=engine.frame_bytes + TEXT_BYTES)
  await ws.prepare(request)
  slot = request.app[_SLOT]
  if slot.client is not None and slot.client.closing:  # its stream ends at its next chunk: wait, not refuse
    await slot.client.released.wait()
  if slot.client is not None:
    await ws.send_json({"type": "busy", "message": "another client is streaming (one stream at a time): try again "
                        "when it has stopped"})
    await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"busy")
    return ws
  client = slot.client = Client()
  channel = Channel(ws, asyncio.get_running_loop())
  try:
    await ws.send_json({"type": "ready", "width": engine.width, "height": engine.height, "fps": engine.fps,
                        "chunk_frames": list(engine.chunking.read), "recache": engine.recache_ok,
                        "max_prompt_chars": MAX_PROMPT_CHARS, "max_clip_frames": MAX_CLIP_FRAMES})
    async for msg in ws:
      if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):  # ERROR: a message over max_msg_size, closed 1009
        break
      try:
        await _on_message(engine, client, msg, channel)
      except Refused as err:
        await ws.send_json({"type": "error", "message": str(err)})
  finally:
    client.closing = True
    # Shielded: aiohttp cancels the handler when the connection is lost, and the slot must still be freed.
    await asyncio.shield(_release(slot, client))
  return ws


async def _release(slot: Slot, client: Client) -> None:
  """Stops the client's stream (at its next chunk), waits for its thread to end, and frees the slot."""
  if client.stream is not None:
    client.stream.cancel()
    await asyncio.to_thread(client.stream.join)
  client.stream = None  # its states go with it
  slot.client = None
  client.released.set()


def make_app(engine: Engine) -> web.Application:
  """The server's application: the page at /, the stream at /ws."""
  app = web.Application()
  app[_ENGINE], app[_SLOT] = engine, Slot()
  app.router.add_get("/", index)
  app.router.add_get("/ws", websocket)
  return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  """The options; the models left out resolved to the default model's, the size to its native one (or Wan's)."""
  parser = cli.ArgumentParser(prog="python -m liveedit_jax.serve", description=__doc__)
  server = parser.add_argument_group("server")
  server.add_argument("--host", default="127.0.0.1", help="address to listen on (another than localhost makes "
                      "the model usable by anyone who reaches it)")
  server.add_argument("--port", type=int, default=8000, help="port to listen on")
  server.add_argument("--height", type=int, help="frame height the model runs at, a multiple of 16 (default: the "
                      "default model's native height without --dit, 480 with it)")
  server.add_argument("--width", type=int, help="frame width the model runs at, a multiple of 16 (default: the "
                      "default model's native width without --dit, 832 with it)")
  server.add_argument("--fps", type=float, help="the rate the page grabs and shows frames at (default: the default "
                      "model's native rate without --dit, 16 with it)")
  models = parser.add_argument_group("models (a model left out is the default model's part)")
  models.add_argument("--dit", help="converted DiT directory (python -m convert.wan_dit)")
  stream.add_autoencoder_options(models, "the default model's")
  models.add_argument("--text-encoder", help="converted umT5 directory (python -m convert.umt5)")
  models.add_argument("--prompt-cache", help="directory of cached prompt embeddings")
  models.add_argument("--dtype", choices=CLI_DTYPES,
                      help="compute dtype of the DiT and autoencoders (default: bfloat16 on GPU, float32 elsewhere)")
  options = stream.add_stream_options(parser.add_argument_group("streaming"))
  options.add_argument("--seed", type=int, default=0, help="seed of the denoising noise (each stream starts at it)")
  stream.add_run_options(parser.add_argument_group("running"))
  args = parser.parse_args(argv)
  if not 0 < args.port < 65536:
    parser.error(f"--port must be in 1..65535, got {args.port}")
  if args.fps is not None and args.fps <= 0:
    parser.error(f"--fps must be positive, got {args.fps}")
  try:
    args.placement = plan(args.devices)
  except ValueError as err:
    parser.error(str(err))
  args.models = default_model.resolve(args.dit, args.vae, args.text_encoder)
  native = default_model.native() if "dit" in args.models.defaults else None
  for field, converted in stream.CONVERTED_SIZE.items():
    if getattr(args, field) is None:
      setattr(args, field, getattr(native, field) if native else converted)
  return args


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if not args.no_compile_cache:
    stream.enable_compile_cache(stream.compile_cache_dir())
  if args.host not in LOCAL_HOSTS:
    warnings.warn(f"--host {args.host}: the server is reachable from other machines, and anyone who reaches it "
                  "can stream through the model (there is no authentication)", stacklevel=1)
  engine = build_engine(args)
  cli.say(f"serving the page at http://{args.host}:{args.port}/ ({engine.width}×{engine.height}, {engine.fps:g} "
          f"fps; Ctrl-C stops)")
  web.run_app(make_app(engine), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
  cli.run(main)
