"""Benchmark suite for rcm_fsad_ops (SPEC section 7).

- ``python -m benchmarks``: the side-by-side runner (ours vs torchvision vs the eager reference),
  printing markdown tables and storing JSON + markdown under ``benchmarks/results/``.
- ``benchmarks.runner.run(devices, quick, out_dir, reference=True)``: the same, as a function.
- ``python -m benchmarks.profile_kernels``: per-kernel device time of each implementation
  (``torch.profiler``), to see which kernels the runner's times go to.
- ``pytest benchmarks --benchmark-only``: the pytest-benchmark suite over the same cases.
- ``benchmarks/gpu_check.sh``: the one prepared script for a GPU machine.
"""
