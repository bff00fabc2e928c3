"""Certify a candidate run (NPU, CUDA or low-precision CPU) against the CPU fp32 reference.

- `verify.metrics`: pure comparison metrics on tensors, and `compare_tensors`, which bundles them
  into one JSON-serialisable record per tensor.
- `verify.verdict`: the versioned threshold file (`verify/thresholds.yaml`) and the PASS/FAIL
  rules applied to those records, per tensor, per task and overall.

Importing this package is cheap: it imports neither submodule.
"""
