"""train.loss_curves reads back what tensorboardX wrote, and draws it."""

import zlib

import numpy as np
import pytest
from tensorboardX import SummaryWriter

from train import loss_curves


def test_reads_the_scalars_a_run_wrote_and_plots_them(tmp_path, request):
  rng = np.random.default_rng(zlib.crc32(request.node.name.encode()))
  written = {"train/loss": rng.uniform(0.1, 1.0, 7), "autoencoder/psnr": rng.uniform(15, 30, 7)}
  steps = np.sort(rng.choice(1000, 7, replace=False))
  for run in ("stage1", "vae"):
    with SummaryWriter(str(tmp_path / "tb" / run)) as writer:
      for i, step in enumerate(steps):
        for tag, values in written.items():
          writer.add_scalar(tag, values[i], int(step))
  scalars = loss_curves.read_scalars(tmp_path / "tb" / "stage1")
  assert set(scalars) == set(written)
  for tag, values in written.items():
    assert [s for s, _ in scalars[tag]] == steps.tolist()
    np.testing.assert_allclose([v for _, v in scalars[tag]], values, rtol=1e-6)  # float32 summaries
  out = tmp_path / "curves.png"
  loss_curves.main([str(tmp_path / "tb"), "--out", str(out)])
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
    loss_curves.read_scalars(tmp_path)
