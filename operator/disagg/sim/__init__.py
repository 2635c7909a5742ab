"""A vLLM-compatible engine simulator: the stand-in for a GPU worker in tests and the demo.

It speaks vLLM's command line, HTTP surface, metrics and NIXL P/D protocol, and times its work
with the planner's roofline, so a gateway or an autoscaler cannot tell it from a (fast) vLLM.
See docs/simulator.md.
"""
