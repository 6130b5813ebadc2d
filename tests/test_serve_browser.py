"""The page of `python -m liveedit_jax.serve` in a real browser: headless Chromium (Debian's, driven by Playwright)
against the real server on a local port. With Chromium's fake camera the webcam's frames reach the server and come
back, the edited half of the view changes as chunks arrive and the counters (chunks, received, fps, latency)
update; a video file picked in the file input plays in the browser, its frames stream and the page reports the
stream done when the file ends; an instruction typed and applied switches the server's stream to it (the stream's
prompt on the server, and the chunks the page shows edited under it); a second page is told the server is busy,
and once the first page is closed the server frees its slot and the second page streams. No JavaScript error is
thrown on any page.

The server is `serve.make_app` on an aiohttp runner in a thread of its own, on 127.0.0.1 and a free port, its
engine test_serve's tiny models (random weights, no mask cache) at 32×48, chunks of 9 then 12 frames, the page
grabbing 24 frames/s; its steps compile once for the module.
With LIVEEDIT_SCREENSHOTS=docs the camera and file tests save docs/serve_camera.png and docs/serve_file.png.
"""

import asyncio
import dataclasses
import functools
import os
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from aiohttp import web
from playwright.sync_api import sync_playwright

from liveedit_jax import param_io, serve
from liveedit_jax.dit import init_dit_params
from liveedit_jax.video_io import VideoWriter
from tests.random_params import filled_like
from tests.test_stream_cli import DIT, VAE, H, W, random_vae_params
from tests.test_stream_prompt_schedule import OTHER, PROMPT

FPS = 24  # the rate the page grabs frames at: chunks come sooner than at the default 16
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it), not a Playwright download
TIMEOUT_MS = 15_000  # for any one thing the page should show; a chunk takes well under a second here
FREE_S = 10  # for the server to free a closed page's slot (its stream ends at its next chunk)


class Server:
  """The running server: its page's URL, and its slot (whose client holds the stream, None when free)."""

  def __init__(self, url: str, slot):
    self.url, self.slot = url, slot

  def stream(self):
    client = self.slot.client
    return client and client.stream

  def wait_free(self) -> None:
    """Waits until no client holds the server (a closed page's stream has ended and its state is freed)."""
    deadline = time.monotonic() + FREE_S
    while self.slot.client is not None:
      assert time.monotonic() < deadline, f"the server still holds a client {FREE_S} s after its page closed"
      time.sleep(0.05)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
  """The engine of test_serve's architectures (test_stream_prompt_schedule's tiny DiT for the default model's umT5,
  test_stream_cli's tiny VAE) with random weights, saved as the converters save them, and without the mask cache:
  its steps compile in about half the time (the masked DiT is most of it). What is tested here is the page;
  test_serve compares the edits with the library's, mask cache included."""
  root, rng = tmp_path_factory.mktemp("serve_browser"), np.random.default_rng(0)
  config = DIT.replace(text_dim=128, text_len=24)
  dit = filled_like(jax.eval_shape(functools.partial(init_dit_params, config), jax.random.key(0)), rng)
  param_io.save_params(root / "dit", "dit", dataclasses.asdict(config), dit)
  param_io.save_params(root / "vae", "vae", VAE.to_dict(), random_vae_params(VAE, rng))
  args = serve.parse_args(["--dit", str(root / "dit"), "--vae", str(root / "vae"), "--height", str(H), "--width",
                           str(W), "--fps", str(FPS), "--cache-on", "none", "--no-compile-cache"])
  return serve.build_engine(args)


@pytest.fixture(scope="module")
def server(engine):
  """The real server (the app `serve.main` runs) on 127.0.0.1 and a free port, its event loop in a thread, as
  under `web.run_app`: the browser's sockets are real TCP connections."""
  app = serve.make_app(engine)
  loop = asyncio.new_event_loop()
  runner = web.AppRunner(app)
  loop.run_until_complete(runner.setup())
  loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
  port = runner.addresses[0][1]
  thread = threading.Thread(target=loop.run_forever, name="serve test loop", daemon=True)
  thread.start()
  yield Server(f"http://127.0.0.1:{port}/", app[serve._SLOT])
  asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=FREE_S)
  loop.call_soon_threadsafe(loop.stop)
  thread.join(timeout=FREE_S)
  loop.close()


@pytest.fixture(scope="module")
def browser():
  # The fake camera: a generated moving picture instead of a device; the fake UI grants the camera without a
  # prompt. --no-sandbox: Chromium's sandbox cannot start as root in a container.
  with sync_playwright() as playwright:
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required"])
    yield chromium
    chromium.close()


class Page:
  """One browser tab on the server's page, in a context of its own (closing it is the user closing the tab); the
  JavaScript errors it throws are collected."""

  def __init__(self, browser, server: Server):
    self.context = browser.new_context(viewport={"width": 760, "height": 560})
    self.page = self.context.new_page()
    self.page.set_default_timeout(TIMEOUT_MS)
    self.errors = []
    self.page.on("pageerror", lambda error: self.errors.append(str(error)))
    self.page.goto(server.url)

  def text(self, id_: str) -> str:
    return self.page.text_content(f"#{id_}")

  def number(self, id_: str) -> float:
    return float(self.text(id_))

  def wait_for(self, condition: str, what: str) -> None:
    """Waits until the JavaScript expression `condition` holds ($ is the page's getElementById), failing with
    `what` and the page's message line."""
    try:
      self.page.wait_for_function(f"() => {condition}")
    except Exception as err:  # noqa: BLE001 (re-raised with what was awaited)
      raise AssertionError(f"{what}: not within {TIMEOUT_MS / 1e3:g} s (page state {self.text('state')!r}, "
                           f"message {self.text('message')!r}, errors {self.errors})") from err

  def wait_chunks(self, n: int) -> None:
    self.wait_for(f"Number($('chunks').textContent) >= {n}", f"{n} chunks shown")

  def view(self) -> tuple[np.ndarray, np.ndarray]:
    """The canvas's pixels (source, edit), uint8 [H, W, 3] each: what the page drew last."""
    rgba = self.page.evaluate("""() => {
      const c = $('view');
      return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    }""")
    rgb = np.array(rgba, np.uint8).reshape(H, 2 * W, 4)[..., :3]
    return rgb[:, :W], rgb[:, W:]

  def screenshot(self, name: str) -> None:
    folder = os.environ.get("LIVEEDIT_SCREENSHOTS")
    if folder:
      Path(folder).mkdir(parents=True, exist_ok=True)
      self.page.screenshot(path=str(Path(folder) / name), full_page=True)

  def close(self) -> None:
    self.context.close()


@pytest.fixture
def pages(browser, server):
  """open() → a new Page; every page opened is closed after the test, and the server freed, so that the next test
  finds it free."""
  opened = []

  def open_():
    opened.append(Page(browser, server))
    return opened[-1]

  yield open_
  errors = [error for page in opened for error in page.errors]
  for page in opened:
    page.close()
  server.wait_free()
  assert errors == [], errors


def start_camera(page: Page, prompt: str = PROMPT) -> None:
  page.page.check("#source-camera")
  page.page.fill("#prompt", prompt)
  page.page.click("#start")
  page.wait_for("$('state').textContent === 'streaming'", "the camera stream started")


def test_camera_streams_and_a_new_instruction_takes_effect(pages, server):
  """The fake camera's frames stream: chunks arrive, the edited half of the canvas changes between chunks, the
  counters count the frames the server received, and the source half shows the camera's picture. Then an
  instruction typed and applied (re-caching the KV cache when the server can) is embedded and switched to: the
  page says so, the server's stream edits under it, and the chunks the page shows next name it. (One test: a
  camera stream started once serves both.)"""
  page = pages()
  start_camera(page)
  page.wait_chunks(2)
  source, first = page.view()
  shown = page.number("chunks")
  page.wait_chunks(shown + 1)
  _, later = page.view()
  assert server.stream() is not None and server.stream().clip is None  # a live source on the server
  assert source.std() > 5, "the source half is flat: the camera's picture did not come back"
  assert later.std() > 1, "the edited half is flat"
  assert np.abs(later.astype(int) - first).mean() > 0.5, "the edited half did not change between chunks"
  assert page.number("received") >= 9 + 12 * shown  # the frames of every chunk shown so far
  assert page.number("fps") > 0 and page.number("latency") > 0
  assert page.text("current-prompt") == PROMPT

  page.page.fill("#prompt", OTHER)
  recache = not page.page.is_disabled("#recache")
  if recache:
    page.page.check("#recache")
  page.page.click("#apply-prompt")
  said = f"'{OTHER}' from the next chunk, the KV cache {'re-cached' if recache else 'kept'}"  # the server's switch
  page.wait_for(f"$('message').textContent === {said!r}", "the switch acknowledged")
  page.wait_for(f"$('current-prompt').textContent === {OTHER!r}", "a chunk edited under the new instruction")
  assert server.stream().prompt == OTHER
  page.screenshot("serve_camera.png")


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
  """A 3 s webm (VP9) of a moving gradient at 64×96 (twice the model's size: the page scales and crops it)."""
  path = str(tmp_path_factory.mktemp("video") / "clip.webm")
  y, x = np.meshgrid(np.arange(2 * H), np.arange(2 * W), indexing="ij")
  with VideoWriter(path, 2 * W, 2 * H, fps=16) as writer:
    writer.write(np.stack([np.stack([(x * 3 + 8 * t) % 256, (y * 4) % 256, np.full_like(x, 40 + 6 * t)], -1)
                           for t in range(48)]).astype(np.uint8))
  return path


def test_video_file_streams_until_it_ends(pages, server, video_file):
  """A file picked in the file input plays in the browser; its frames come back edited, and when it ends the page
  stops the stream and shows the server's count of the frames it received."""
  page = pages()
  page.page.set_input_files("#file-input", video_file)
  page.page.check("#source-file")
  page.page.fill("#prompt", PROMPT)
  page.page.click("#start")
  page.wait_for("$('message').textContent.startsWith('done:')", "the file streamed to its end")
  source, edit = page.view()
  # At least 9 + 1 of the ~70 frames the page grabs while the file plays: the first chunk and part of a later one.
  counts = {id_: page.text(id_) for id_ in ("message", "chunks", "received", "dropped", "unsent")}
  assert page.number("chunks") >= 2 and page.number("received") >= 9 + 1, counts
  assert source.std() > 5 and edit.std() > 1, "the view shows no frames of the file"
  assert page.text("state") == "idle"  # the socket closed after done
  page.screenshot("serve_file.png")


def test_closing_the_page_frees_the_server(pages, server):
  """While one page streams a second is told the server is busy; once the first tab is closed mid-stream the
  server ends its stream and frees the slot, and the second page's start streams."""
  first, second = pages(), pages()
  start_camera(first)
  first.wait_chunks(1)
  second.page.click("#start")
  second.wait_for("$('message').textContent.startsWith('another client is streaming')", "the busy message")
  second.wait_for("!$('start').disabled", "start enabled again after busy")
  first.close()
  server.wait_free()
  start_camera(second)
  second.wait_chunks(1)
  assert server.stream() is not None
