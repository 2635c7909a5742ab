"""The markers around docs/benchmarks.md's "Precise prefix routing" section.

``bench/report.py`` rewrites the whole file and keeps what lies between these markers;
``bench/precise_bench.py`` rewrites only that section (as ``bench/gpu/sections.py`` does for the
real-vLLM section).
"""

PRECISE_BEGIN = "<!-- precise-routing:begin (bench/precise_bench.py) -->"
PRECISE_END = "<!-- precise-routing:end -->"
