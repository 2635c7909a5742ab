"""The markers around docs/benchmarks.md's "Real vLLM on an H200" section.

Two generators write docs/benchmarks.md: the gateway benchmark (``bench/report.py``) rewrites the
whole file, ``bench/gpu/report.py`` only the section between these markers.  Both import them from
here, so the gateway benchmark keeps the GPU section and the GPU report finds it.
"""

REAL_VLLM_BEGIN = "<!-- real-vllm:begin (bench/gpu/report.py) -->"
REAL_VLLM_END = "<!-- real-vllm:end -->"
