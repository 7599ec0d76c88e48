"""nas: latency-aware search over the latnas spaces (issue 7).

`objectives` (V1 latency ratio, V2 MES), `actions` (V1/V2 slimming actions from a space's declared
choices), `evaluators` (supernet accuracy, training-free proxy), `greedy` (the slimming controller)
and `search` (the `python -m nas.search` command).
"""

__version__ = "0.1.0"
