"""The benchmark case the tests of the benchmark tools run on: one so small that they check what the tools
say, not how fast anything is."""
from benchmarks.shapes import Case

TINY = Case("tiny", n=1, c_in=4, h=5, w=5, dtypes={"cpu": ("fp32",)})
