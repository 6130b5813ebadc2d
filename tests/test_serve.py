"""`python -m liveedit_jax.serve`: frames sent over the WebSocket come back as the library's offline edits of the
same frames and prompt, bit for bit (raw rgb24 both ways); a prompt change takes effect at the next chunk and
equals `switch_prompt` (keep and recache); a procedural clip named by its index streams its source; the
latest-frame policy drops the oldest frames when the client sends faster than the model runs, counts them, and
edits the newest; one client at a time, a disconnect frees the slot; wrong frames, bad messages and other origins
are refused with a message; the page is served with its controls.

The server runs in the test's process (`aiohttp.test_utils`) on the tiny random models of
`test_stream_prompt_schedule` (a tiny DiT for the default model's small umT5, test_stream_cli's tiny VAE) at
32×48, chunks of 9 then 12 frames; its steps compile once for the module. The page's JavaScript in a
browser is tested in test_serve_browser (headless Chromium through Playwright).
"""

import asyncio
import json
import threading

import aiohttp
import jax
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from liveedit_jax import default_model, prompt_switch, serve, stream, synthetic
from liveedit_jax.dit import load_dit
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.stream_step import StreamConfig, init_stream, stream_step
from liveedit_jax.umt5 import encode_prompts, load_text_encoder
from liveedit_jax.vae import load_vae
from liveedit_jax.video_io import to_float, to_uint8
from tests.test_stream_cli import H, W, setup  # noqa: F401 (setup: a fixture)
from tests.test_stream_prompt_schedule import OTHER, PROMPT, dit_dir  # noqa: F401 (dit_dir: a fixture)

SEED = 3
TIMEOUT = 60  # s for any one message


@pytest.fixture(scope="module")
def engine(setup, dit_dir):  # noqa: F811 (the imported fixtures)
  args = serve.parse_args(["--dit", dit_dir, "--vae", setup["vae"], "--height", str(H), "--width", str(W),
                           "--seed", str(SEED), "--no-compile-cache"])
  return serve.build_engine(args)


@pytest.fixture(scope="module")
def offline(setup, dit_dir):  # noqa: F811
  """offline(chunks, prompts, recache) → the edits uint8 [T, H, W, 3] of chunks of frames (uint8 [n, H, W, 3], 9
  then ≤ 12, each padded by repeating its last frame) through the library's jitted steps, chunk i under
  prompts[i]: a new prompt is `switch_prompt`'s before its chunk, the KV cache re-cached from the pushed history
  when `recache`."""
  dit_config, dit_params = load_dit(dit_dir, compute_dtype="float32")
  vae_config, vae_params = load_vae(setup["vae"], compute_dtype="float32")
  text = load_text_encoder(default_model.paths()["text_encoder"])
  embed = lambda prompt: encode_prompts(text, [prompt])  # noqa: E731

  def run(chunks, prompts, recache=False):
    options = StreamConfig(mask_cache=MaskCacheConfig(prune_ratio=0.7, cache_on="self_attn"))
    state = init_stream(dit_config, dit_params, embed(prompts[0]), latent_height=H // 8, latent_width=W // 8,
                        options=options, rng=jax.random.key(SEED))
    ae_state = stream.autoencoders.init_state(vae_config, vae_config, 1, H, W)
    history = prompt_switch.empty_history(state, dit_config)
    out = []
    for i, frames in enumerate(chunks):
      if i and prompts[i] != prompts[i - 1]:
        state = prompt_switch.switch_prompt(dit_config, dit_params, state, embed(prompts[i]),
                                            history=history if recache else None)
      padded = np.concatenate([frames, np.repeat(frames[-1:], (9 if i == 0 else 12) - len(frames), 0)])
      ae_state, latents = stream.encode_chunk(vae_config, vae_params, ae_state, to_float(padded)[None],
                                              first=i == 0)
      edited, state = stream_step(dit_config, dit_params, state, latents)
      history = prompt_switch.push_history(history, edited, latents)
      ae_state, decoded = stream.decode_chunk(vae_config, vae_params, ae_state, edited, first=i == 0)
      out.append(to_uint8(np.asarray(decoded[0, :len(frames)])))
    return np.concatenate(out)

  return run


def frames_of(seed: int, n: int) -> np.ndarray:
  """Fresh random frames uint8 [n, H, W, 3]: smooth gradients plus noise, so that the edit is an image."""
  rng = np.random.default_rng(seed)
  y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  base = np.stack([x * 5, y * 7, (x + y) * 3], -1)[None] + rng.integers(0, 256, (n, 1, 1, 3))
  return np.clip(base % 256 + rng.integers(-20, 21, (n, H, W, 3)), 0, 255).astype(np.uint8)


def serve_with(engine, script):
  """Runs `script(client)` against a fresh server of `engine` in an event loop of its own; returns its result."""

  async def main():
    async with TestClient(TestServer(serve.make_app(engine))) as client:
      return await script(client)

  return asyncio.run(main())


async def connect(client):
  ws = await client.ws_connect("/ws")
  ready = await ws.receive_json(timeout=TIMEOUT)
  assert ready["type"] == "ready", ready
  return ws, ready


async def receive(ws, until: str):
  """The messages up to one of type `until`: (source | edit frames uint8 [n, H, 2W, 3] received, the JSON messages
  in order, the last one of type `until`)."""
  frames, messages = [], []
  while True:
    msg = await ws.receive(timeout=TIMEOUT)
    if msg.type == aiohttp.WSMsgType.BINARY:
      frames.append(np.frombuffer(msg.data, np.uint8).reshape(H, 2 * W, 3))
      continue
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    messages.append(json.loads(msg.data))
    if messages[-1]["type"] == until:
      return np.array(frames).reshape(-1, H, 2 * W, 3), messages


async def send_frames(ws, frames):
  for frame in frames:
    await ws.send_bytes(frame.tobytes())


async def start(ws, prompt=PROMPT, source="camera", **extra):
  await ws.send_json({"type": "start", "source": source, "prompt": prompt, **extra})
  return await receive(ws, "started")


def test_page_is_served(engine):
  """GET / returns the page with every control a browser test drives."""

  async def script(client):
    response = await client.get("/")
    return response.status, response.headers["Content-Type"], await response.text()

  status, kind, page = serve_with(engine, script)
  assert status == 200 and kind.startswith("text/html")
  for id_ in ("source-camera", "source-file", "source-synthetic", "file-input", "clip-index", "clip-frames",
              "prompt", "recache", "apply-prompt", "start", "stop", "view", "fps", "latency", "dropped", "received"):
    assert f'id="{id_}"' in page, id_
  assert "getUserMedia" in page and "/ws" in page


def test_frames_come_back_edited(engine, offline):
  """25 frames sent a chunk at a time (9, 12, then 4 and stop: the last chunk padded) come back as source | edit,
  the edits those of the library's offline path bit for bit, nothing dropped; each chunk names its frames."""
  sent = frames_of(0, 25)

  async def script(client):
    ws, ready = await connect(client)
    await start(ws)
    chunks = []
    for part in (slice(0, 9), slice(9, 21)):
      await send_frames(ws, sent[part])
      chunks.append(await receive(ws, "chunk"))
    await send_frames(ws, sent[21:])
    await ws.send_json({"type": "stop"})
    chunks.append(await receive(ws, "done"))
    await ws.close()
    return ready, chunks

  ready, chunks = serve_with(engine, script)
  assert (ready["width"], ready["height"], ready["chunk_frames"], ready["recache"]) == (W, H, [9, 12], True)
  pairs = np.concatenate([frames for frames, _ in chunks])
  expected = offline([sent[:9], sent[9:21], sent[21:]], [PROMPT] * 3)
  np.testing.assert_array_equal(pairs[:, :, :W], sent)
  np.testing.assert_array_equal(pairs[:, :, W:], expected)
  assert expected.std() > 5  # an image, not a constant
  reports = [m for _, messages in chunks for m in messages if m["type"] == "chunk"]
  assert [r["inputs"] for r in reports] == [list(range(9)), list(range(9, 21)), list(range(21, 25))]
  assert [r["mask"] for r in reports][0] is None and 0 < reports[1]["mask"] < 1  # the first chunk runs in full
  assert all(r["prompt"] == PROMPT and r["dropped"] == 0 and r["fps"] > 0 and r["latency_ms"] > 0 for r in reports)
  assert chunks[-1][1][-1] == {"type": "done", "received": 25, "dropped": 0}


@pytest.mark.parametrize("recache", [False, True], ids=["keep", "recache"])
def test_prompt_change_takes_effect_at_the_next_chunk(engine, offline, recache):
  """A new instruction sent after chunk 0 applies from chunk 1: the edits equal `switch_prompt`'s path (the KV
  cache kept or re-cached), and differ from those without the change."""
  sent = frames_of(1, 21)

  async def script(client):
    ws, _ = await connect(client)
    await start(ws)
    await send_frames(ws, sent[:9])
    first, _ = await receive(ws, "chunk")
    await ws.send_json({"type": "prompt", "prompt": OTHER, "recache": recache})
    _, acks = await receive(ws, "switch")
    await send_frames(ws, sent[9:])
    second, messages = await receive(ws, "chunk")
    await ws.close()
    return np.concatenate([first, second]), acks[-1], messages[-1]

  pairs, ack, report = serve_with(engine, script)
  assert ack == {"type": "switch", "prompt": OTHER, "recache": recache}
  assert report["prompt"] == OTHER and report["mask"] is None  # with the mask cache, the chunk ran in full
  expected = offline([sent[:9], sent[9:]], [PROMPT, OTHER], recache=recache)
  np.testing.assert_array_equal(pairs[:, :, W:], expected)
  unchanged = offline([sent[:9], sent[9:]], [PROMPT, PROMPT])
  np.testing.assert_array_equal(expected[:9], unchanged[:9])
  assert np.abs(expected[9:].astype(int) - unchanged[9:]).mean() > 1


def test_procedural_clip(engine, offline):
  """A clip named by its index and length streams the benchmark's test example, its instruction the prompt when
  none is given, every frame edited as offline."""
  example = synthetic.make_example("test", 2, frames=21, height=H, width=W)

  async def script(client):
    ws, _ = await connect(client)
    _, started = await start(ws, prompt="", source="synthetic", clip=2, frames=21)
    pairs, messages = await receive(ws, "done")
    await ws.close()
    return started[-1], pairs, messages

  started, pairs, messages = serve_with(engine, script)
  assert started == {"type": "started", "prompt": example.instruction, "source": "synthetic"}
  np.testing.assert_array_equal(pairs[:, :, :W], example.source)
  np.testing.assert_array_equal(pairs[:, :, W:], offline([example.source[:9], example.source[9:]],
                                                         [example.instruction] * 2))
  assert messages[-1] == {"type": "done", "received": 21, "dropped": 0}


def test_latest_frames_buffer():
  """The buffer holds the newest `capacity` frames; a chunk takes the newest it needs and drops the older ones;
  closed, it gives what it holds, then nothing."""
  frames = serve.LatestFrames(capacity=12, shape=(1, 1, 3))
  for i in range(20):
    frames.put(np.full((1, 1, 3), i, np.uint8))
  assert (frames.received, frames.dropped) == (20, 8)
  taken, numbers, _ = frames.take(9)
  assert numbers == list(range(11, 20)) and taken[:, 0, 0, 0].tolist() == numbers and frames.dropped == 11
  frames.put(np.zeros((1, 1, 3), np.uint8))
  frames.close()
  assert frames.take(12)[1] == [20] and frames.take(12)[0].shape == (0, 1, 1, 3)


def test_latest_frame_policy_drops_when_behind(engine, offline):
  """60 frames sent at once, far faster than the model edits them: the server drops frames, counts them (every
  frame received is either edited or dropped), edits the newest ones (the last frame sent is in the last chunk)
  and each chunk's frames in order, as offline."""
  sent = frames_of(2, 60)

  async def script(client):
    ws, _ = await connect(client)
    await start(ws)
    await send_frames(ws, sent)
    await ws.send_json({"type": "stop"})
    pairs, messages = await receive(ws, "done")
    await ws.close()
    return pairs, messages

  pairs, messages = serve_with(engine, script)
  reports = [m for m in messages if m["type"] == "chunk"]
  inputs = [r["inputs"] for r in reports]
  used = sum(inputs, [])
  assert used == sorted(set(used)) and used[-1] == 59
  assert messages[-1] == {"type": "done", "received": 60, "dropped": 60 - len(used)}
  assert reports[-1]["dropped"] == 60 - len(used) > 0
  np.testing.assert_array_equal(pairs[:, :, :W], sent[used])
  np.testing.assert_array_equal(pairs[:, :, W:], offline([sent[i] for i in inputs], [PROMPT] * len(inputs)))


def test_one_client_at_a_time_and_disconnect_frees_it(engine):
  """A second client is told the server is busy and closed (1013); after the first disconnects mid-stream (its
  stream waiting for frames) its stream ends, and a new client streams."""

  async def script(client):
    first, _ = await connect(client)
    await start(first)
    await send_frames(first, frames_of(3, 4))
    second = await client.ws_connect("/ws")
    busy = await second.receive_json(timeout=TIMEOUT)
    closed = await second.receive(timeout=TIMEOUT)
    await first.close()
    third, _ = await connect(client)
    alive = [t for t in threading.enumerate() if t.name == "liveedit stream"]
    await start(third)
    await send_frames(third, frames_of(4, 9))
    pairs, _ = await receive(third, "chunk")
    await third.close()
    return busy, (closed.type, second.close_code), alive, pairs

  busy, closed, alive, pairs = serve_with(engine, script)
  assert busy == {"type": "busy", "message": "another client is streaming (one stream at a time): try again when it "
                  "has stopped"}
  assert closed == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.TRY_AGAIN_LATER)
  assert alive == []  # the first client's stream ended before the third connected
  assert pairs.shape == (9, H, 2 * W, 3)


def test_refusals(engine):
  """Each bad message gets an error naming the problem, and the stream goes on; a message over one frame's bytes
  (+ 4 KiB) closes the socket (1009)."""

  async def script(client):
    ws, _ = await connect(client)
    errors = []

    async def error():
      _, messages = await receive(ws, "error")
      errors.append(messages[-1]["message"])

    await ws.send_bytes(bytes(H * W * 3))
    await error()
    for message in ({"type": "start", "source": "camera", "prompt": " "},
                    {"type": "start", "source": "/etc/passwd", "prompt": PROMPT},
                    {"type": "start", "source": "camera", "prompt": "x" * 501},
                    {"type": "start", "source": "synthetic", "clip": 0, "frames": 601},
                    {"type": "start", "source": "synthetic", "clip": -1},
                    {"type": "prompt", "prompt": OTHER},
                    {"type": "play"}):
      await ws.send_json(message)
      await error()
    await ws.send_str("[1, 2]")
    await error()
    await start(ws)
    await ws.send_bytes(bytes(100))
    await error()
    await ws.send_json({"type": "start", "source": "camera", "prompt": PROMPT})
    await error()
    await send_frames(ws, frames_of(5, 9))  # the stream goes on
    pairs, _ = await receive(ws, "chunk")
    await ws.send_bytes(bytes(H * W * 3 + 4097))
    closed = await ws.receive(timeout=TIMEOUT)
    return errors, pairs.shape, (closed.type, ws.close_code)

  errors, shape, closed = serve_with(engine, script)
  assert errors == [
      "a frame needs a running camera or file stream: send a start message first",
      "type an instruction first, e.g. 'make the red circle blue'",
      "unknown source '/etc/passwd': expected one of camera, file, synthetic",
      "the instruction must be text of at most 500 characters",
      "a clip has 1 to 600 frames, got 601",
      "clip -1: example index -1 of split 'test': expected an int in [0, 100000000)",
      "no stream is running: start one first",
      "unknown message type 'play': expected start, prompt or stop",
      "a text message must be a JSON object with a type",
      f"a frame of 100 bytes: expected raw rgb24 at {W}×{H}, {H * W * 3} bytes",
      "a stream is running: stop it first"]
  assert shape == (9, H, 2 * W, 3)
  assert closed == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.MESSAGE_TOO_BIG)


def test_other_origin_refused(engine):
  """A WebSocket opened by a page of another site (its Origin not this server) is refused (403)."""

  async def script(client):
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
      await client.ws_connect("/ws", headers={"Origin": "http://example.com"})
    ws, _ = await connect(client)  # the refused one held nothing
    await ws.close()
    return err.value.status

  assert serve_with(engine, script) == 403
