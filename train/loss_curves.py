"""Training curves from a recipe's TensorBoard logs, as one PNG (docs/loss_curves.png).

    python -m train.loss_curves runs/synth/tb --out docs/loss_curves.png

Each sub-directory of the logs (stage1, stage2, stage3, stage3_pruned, vae: one per run) becomes one panel of
its loss-like scalars: the tags ending in loss, mse, dmd or psnr. The event files are read directly: a TFRecord
stream (8-byte length, its 4-byte CRC, the payload, its 4-byte CRC) of `Event` protos, parsed with tensorboardX's
own proto classes (a dependency already), rather than through the `tensorboard` package, whose event reader would
add it and its server only for this.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

from tensorboardX.proto import event_pb2

from liveedit_jax import cli

Scalars = dict[str, list[tuple[int, float]]]  # tag → [(step, value)] in file order
CURVES = ("loss", "mse", "dmd", "psnr")  # the tag names (after the last "/") that are plotted


def read_scalars(log_dir: str | Path) -> Scalars:
  """The scalar summaries of every event file under `log_dir` (one run), sorted by step per tag."""
  files = sorted(Path(log_dir).glob("events.out.tfevents.*"))
  if not files:
    raise FileNotFoundError(f"no TensorBoard event files (events.out.tfevents.*) in {log_dir}")
  scalars: Scalars = defaultdict(list)
  for path in files:
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack_from("<Q", data, offset)
      payload = data[offset + 12:offset + 12 + length]
      if len(payload) < length:  # a record cut off by a run killed mid-write: the rest of the file is unusable
        break
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars[value.tag].append((event.step, value.simple_value))
  return {tag: sorted(points) for tag, points in scalars.items()}


def plot(runs: dict[str, Scalars], out: str | Path) -> Path:
  """One panel per run of its CURVES tags against the step (losses on a log axis, PSNR in dB on a right-hand axis);
  writes a PNG at `out`."""
  import matplotlib  # noqa: PLC0415  (only the picture needs it)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False)
  for ax, (name, scalars) in zip(axes[0], runs.items()):
    tags = [tag for tag in scalars if tag.rsplit("/", 1)[-1].endswith(CURVES)]
    losses = [tag for tag in tags if not tag.endswith("psnr")]
    psnrs = [tag for tag in tags if tag.endswith("psnr")]
    for axis, group, color in ((ax, losses, None), (ax.twinx() if losses and psnrs else ax, psnrs, "black")):
      for tag in group:
        steps, values = zip(*scalars[tag])
        axis.plot(steps, values, label=tag.rsplit("/", 1)[-1], linewidth=1, color=color)
      if group:
        axis.legend(fontsize=7, loc="upper right" if axis is ax else "lower right")
    if losses:
      ax.set_yscale("log")
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m train.loss_curves", description=__doc__)
  parser.add_argument("logs", type=Path, help="a directory of runs, each a directory of event files")
  parser.add_argument("--out", type=Path, default=Path("docs/loss_curves.png"), help="the PNG to write")
  args = parser.parse_args(argv)
  if not args.logs.is_dir():
    raise FileNotFoundError(f"{args.logs}: no such directory (expected a recipe's TensorBoard logs)")
  runs = {d.name: read_scalars(d) for d in sorted(args.logs.iterdir()) if d.is_dir()}
  if not runs:
    parser.error(f"{args.logs} holds no run directories")
  print(plot(runs, args.out))


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
