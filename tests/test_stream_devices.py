"""`python -m liveedit_jax.stream --devices 2` on 8 fake CPU devices: the autoencoders on one device and the DiT on
another, pipelined, write exactly the frames of one device (the overlapped loop and the serial --sync-stages one),
and dispatch chunk k + 1's encode before chunk k's decode; interrupted, they still write the chunk whose decode
was held.

JAX fixes the device count when its backend starts, so each run is a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8, the one-device run included: the flag itself changes XLA:CPU's
programs (without it the same run differs from these in 3 of 115,200 output values by one step of 255, measured
2026-12-04 with multithreaded Eigen off as well, so not its threading), so one device is compared under the same
flag. The runs share a compilation cache: the first compiles the autoencoders' steps for cpu:0, which the others
read. Tiny random models and the 25-frame input of tests/test_stream_cli.py (chunks of 9, 12 and 4 frames).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.test_stream_cli import FRAMES, H, W, cli_args, read_raw, setup  # noqa: F401 (setup: a fixture)

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI, recording the order in which the stream's thread dispatches the stages of each chunk (edit: encode
# and DiT; decode), printed as JSON.
_RECORDED_RUN = textwrap.dedent("""
    import json, sys
    from liveedit_jax import stream
    order = []
    def recorded(name, step):
      def run(*args, **kwargs):
        order.append(name)
        return step(*args, **kwargs)
      return run
    stream.edit_chunk = recorded("edit", stream.edit_chunk)
    stream.decode_edited = recorded("decode", stream.decode_edited)
    stream.main(sys.argv[1:])
    print(json.dumps(order))
""")

# Runs the CLI with Ctrl-C arriving as chunk 2 is encoded: with --devices 2, chunk 1 is then denoised and its decode
# held behind that encode.
_INTERRUPTED_RUN = textwrap.dedent("""
    import sys
    from liveedit_jax import stream
    edit, calls = stream.edit_chunk, []
    def interrupted(*args, **kwargs):
      calls.append(1)
      if len(calls) == 3:
        raise KeyboardInterrupt
      return edit(*args, **kwargs)
    stream.edit_chunk = interrupted
    try:
      stream.main(sys.argv[1:])
    except KeyboardInterrupt:
      sys.exit(130)
""")


def test_two_devices_write_one_devices_frames(setup, tmp_path):  # noqa: F811 (the fixture)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
         "XDG_CACHE_HOME": str(tmp_path / "xdg")}
  runs = {}
  for name, extra in (("one", ["--devices", "1"]), ("two", ["--devices", "2"]),
                      ("two-serial", ["--devices", "2", "--sync-stages"])):
    args = [a for a in cli_args(setup, tmp_path / f"{name}.rgb", *extra) if a != "--no-compile-cache"]
    result = subprocess.run([sys.executable, "-c", _RECORDED_RUN, *args], capture_output=True, text=True,
                            timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    runs[name] = (read_raw(tmp_path / f"{name}.rgb"), json.loads(result.stdout.splitlines()[-1]), result.stderr)
  one = runs["one"][0]
  assert one.shape == (FRAMES, H, W, 3) and one.std() > 5  # every frame, and an image, not a constant
  for name in ("two", "two-serial"):
    np.testing.assert_array_equal(runs[name][0], one, err_msg=name)
  serial = ["edit", "decode"] * 3
  assert runs["one"][1] == serial and runs["two-serial"][1] == serial
  assert runs["two"][1] == ["edit", "edit", "decode", "edit", "decode", "decode"]  # each decode behind an encode
  assert "the autoencoders on cpu:0 and the DiT on cpu:1" in runs["two"][2]
  assert "the DiT on" not in runs["one"][2]
  # Ctrl-C as chunk 2 is encoded: the held chunk 1 is still decoded and written, after chunk 0 (9 + 12 frames).
  args = [a for a in cli_args(setup, tmp_path / "interrupted.rgb", "--devices", "2") if a != "--no-compile-cache"]
  result = subprocess.run([sys.executable, "-c", _INTERRUPTED_RUN, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
  assert result.returncode == 130, result.stderr
  np.testing.assert_array_equal(read_raw(tmp_path / "interrupted.rgb"), one[:21])
