"""The table of docs/results.md, as markdown rows, from the JSON that scripts/results_grid.sh writes (runs/eval)."""

import json
from pathlib import Path

from liveedit_jax.evaluate import TABLE_COLUMNS

ROWS = (  # (the row's name, its JSON under runs/eval)
    ("source (do nothing)", "source"),
    ("Stage 2, 100 NFE (50 Euler steps, CFG 3), chunk-causal, offline", "s2_sampler"),
    ("Stage 3, 4 NFE, no mask cache", "s3_none"),
    ("Stage 3, self-attention cache 0.7", "s3_sa07"),
    ("Stage 3, FFN cache 0.7", "s3_ffn07"),
    ("Stage 3 pruned rollout, no mask cache", "s3p_none"),
    ("Stage 3 pruned rollout, self-attention cache 0.5", "s3p_sa05"),
    ("**Stage 3 pruned rollout, self-attention cache 0.7 (the default)**", "s3p_sa07"),
    ("Stage 3 pruned rollout, self-attention cache 0.9", "s3p_sa09"),
    ("Stage 3 pruned rollout, FFN cache 0.7", "s3p_ffn07"),
)
COLUMNS = (*TABLE_COLUMNS, ("fps", "CPU fps", 1))  # evaluate's own table, and the speed


def main(directory: Path = Path("runs/eval")) -> None:
  print("| editor | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
  print("|---|" + "---|" * len(COLUMNS))
  for name, key in ROWS:
    path = directory / f"{key}.json"
    if not path.exists():
      continue
    summary = json.loads(path.read_text())["summary"]
    cells = ["–" if summary.get(k) is None else f"{summary[k]:.{digits}f}" for k, _, digits in COLUMNS]
    print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
