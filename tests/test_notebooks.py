"""Every notebook's code cells run top to bottom (small sizes, short streams), so the notebooks cannot rot.

cache_placement.ipynb runs the trained default model (liveedit_jax/models/synth) on one 33-frame test clip with
the self-attention and FFN caches at 0.7; its checks are what that model measures, with margins, and fail for
random weights (background PSNR) or a broken cache (agreement with the no-cache stream, output similarity).
"""

import json
from pathlib import Path

import numpy as np
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# Model and size overrides the notebooks read: unset, so the test runs the shipped default model at its size.
OVERRIDES = ("LIVEEDIT_DIT", "LIVEEDIT_VAE", "LIVEEDIT_TEXT_ENCODER", "LIVEEDIT_SOURCE", "LIVEEDIT_DEFAULT_MODEL",
             "LIVEEDIT_NOTEBOOK_HEIGHT", "LIVEEDIT_NOTEBOOK_WIDTH")


def check_cache_placement(ns: dict) -> None:
  summaries, sa, ffn = ns["summaries"], ns["SA_MAIN"], ns["FFN_MAIN"]
  assert (sa, ffn) == ("SA 0.7", "FFN 0.7")
  none = summaries["no cache"]
  # The trained model edits: ~25 dB background on test clip 0 (random weights give noise, far below 20 dB).
  assert 22.0 < none["background_psnr"] < 30.0
  for label, summary in summaries.items():
    assert np.isfinite(summary["flicker"]) and np.isfinite(summary["edit_psnr"]), label
    assert (summary["mask_iou"] is None) == (label == "no cache"), label
    assert label == "no cache" or 0.0 <= summary["mask_iou"] <= 1.0
    assert ns["dit_ms"][label] > 0.0
  # Table 3: the self-attention cache keeps the background (measured +0.1 dB), the FFN cache loses more (0.25 dB
  # below no cache, 0.36 below the self-attention cache) and flickers more (0.0142 vs 0.0129).
  drop = {label: none["background_psnr"] - s["background_psnr"] for label, s in summaries.items()}
  assert abs(drop[sa]) < 0.5
  assert drop[ffn] > drop[sa] + 0.1
  assert summaries[ffn]["flicker"] > 1.03 * summaries[sa]["flicker"]
  # Fig. 7: the self-attention cache's frames stay close to the no-cache stream's (measured 44.8 dB PSNR), the
  # FFN cache's less so (36.1 dB). A cache that dropped or misplaced the static tokens' outputs would fall far.
  agree = ns["vs_no_cache"]
  assert agree[sa] > 38.0 and agree[sa] > agree[ffn] + 4.0
  # Fig. 8: between consecutive steps a static token's self-attention output keeps its direction (0.95), its
  # FFN output much less (0.70); every similarity is a mean of cosines, so in [-1, 1].
  step_sim = ns["step_sim"]
  steps = len(ns["StreamConfig"]().timesteps)
  for key, sim in step_sim.items():
    assert sim.shape[1:] == (ns["config"].num_layers, steps - 1) and np.all(np.abs(sim) <= 1.0 + 1e-5), key
  sa_static, ffn_static = step_sim["self_attn", "static"].mean(), step_sim["ffn", "static"].mean()
  assert sa_static > 0.9 and sa_static > ffn_static + 0.15
  assert ns["chunk_sim"]["self_attn", "static"].mean() > ns["chunk_sim"]["ffn", "static"].mean() + 0.1
  # Fig. 5: IoUs are IoUs; the true edit is a small object, its tokens overlapping across chunks.
  for label, stats in ns["mask_stats"].items():
    for key in ("consecutive", "vs_truth", "truth_consecutive", "best_possible", "random"):
      assert 0.0 <= stats[key] <= 1.0, (label, key)
    assert stats["truth_consecutive"] > 0.0
  assert all(outcome in ("holds", "no", "even") for _, _, outcome in ns["claims"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
  monkeypatch.setenv("LIVEEDIT_NOTEBOOK_CHUNKS", "3")
  # cache_placement: one clip and one self-attention ratio keep its run near two minutes on a 2-core CPU.
  monkeypatch.setenv("LIVEEDIT_NOTEBOOK_CLIPS", "1")
  monkeypatch.setenv("LIVEEDIT_NOTEBOOK_PRUNES", "0.7")
  for var in OVERRIDES:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  namespace = run_cells(path)
  if path.name == "cache_placement.ipynb":
    check_cache_placement(namespace)


def run_cells(path: Path) -> dict:
  """Runs a notebook's code cells in order in one namespace, as Jupyter would; returns it. A cell that raises
  fails the run (the notebooks do not guard their plots)."""
  namespace: dict = {}
  for cell in json.loads(path.read_text())["cells"]:
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)  # noqa: S102
  return namespace


def test_a_failing_plot_cell_fails_the_run(tmp_path, monkeypatch):
  monkeypatch.setenv("MPLBACKEND", "Agg")
  cells = [{"cell_type": "code", "source": ["import matplotlib.pyplot as plt\n", "x = [1, 2, 3]\n"]},
           {"cell_type": "markdown", "source": ["a plot of mismatched lengths"]},
           {"cell_type": "code", "source": ["fig, ax = plt.subplots()\n", "ax.plot(x, [1, 2])\n"]}]
  notebook = tmp_path / "broken.ipynb"
  notebook.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
  with pytest.raises(ValueError, match="same first dimension"):
    run_cells(notebook)
  cells[2]["source"][1] = "ax.plot(x, [1, 2, 4])\n"
  notebook.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
  assert run_cells(notebook)["x"] == [1, 2, 3]
