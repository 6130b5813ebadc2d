"""Per-kernel medians of an Nsight Compute CSV log (`ncu --csv --print-units base --log-file F`): SM cycles, time and
clock of each distinct kernel launch shape. Cycles do not depend on the clock a power-capped GPU happens to run at,
so they compare two versions of a kernel more finely than wall-clock time (docs/benchmarks.md, sixth session).

    python3 scripts/ncu_summary.py out/ncu_cycles.csv
"""

import collections
import csv
import statistics
import sys


def main(path: str) -> None:
  with open(path, newline="") as f:
    rows = [r for r in csv.reader(f) if len(r) > 10]
  if not rows:
    sys.exit(f"{path}: no ncu CSV rows (was ncu run with --csv and did it profile any kernel?)")
  header, rows = rows[0], rows[1:]
  col = {name: header.index(name) for name in ("ID", "Kernel Name", "Grid Size", "Block Size", "Metric Name",
                                               "Metric Value")}
  launches: dict[str, dict[str, float]] = collections.defaultdict(dict)
  shape: dict[str, tuple[str, str, str]] = {}
  for r in rows:
    launches[r[col["ID"]]][r[col["Metric Name"]]] = float(r[col["Metric Value"]].replace(",", ""))
    shape[r[col["ID"]]] = (r[col["Kernel Name"]][:40], r[col["Grid Size"]], r[col["Block Size"]])
  groups = collections.defaultdict(list)
  for launch_id, metrics in launches.items():
    groups[shape[launch_id]].append(metrics)
  print(f"{'kernel':40s} {'grid':>14s} {'block':>12s} {'n':>3s} {'Mcycles':>9s} {'ms':>8s} {'GHz':>5s}")
  for (name, grid, block), ms in groups.items():
    cycles = statistics.median(m["sm__cycles_elapsed.max"] for m in ms) / 1e6
    time_ms = statistics.median(m["gpu__time_duration.sum"] for m in ms) / 1e6
    print(f"{name:40s} {grid:>14s} {block:>12s} {len(ms):3d} {cycles:9.3f} {time_ms:8.3f} {cycles / time_ms:5.2f}")


if __name__ == "__main__":
  main(sys.argv[1])
