"""Comparison helpers with the tolerances this project states per dtype."""

import numpy as np

# ‖out − ref‖ / ‖ref‖ bounds.
FP32_RTOL = 1e-5
BF16_RTOL = 1e-2


def rel_err(out, ref) -> float:
  """Relative Frobenius error ‖out − ref‖ / ‖ref‖, computed in float64; NaN anywhere gives inf."""
  out = np.asarray(out, np.float64)
  ref = np.asarray(ref, np.float64)
  assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
  if not (np.all(np.isfinite(out)) and np.all(np.isfinite(ref))):
    return float("inf")
  return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))
