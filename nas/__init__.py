"""nas: latency-aware architecture search over the latnas spaces.

`objectives` (V1 latency ratio, V2 MES), `actions` (V1/V2 slimming actions from a space's declared
choices), `evaluators` (supernet accuracy) and `synflow` (the training-free proxy), `greedy` (the
slimming controller), `strategies` (random search, regularized evolution), `verify` (measure the
result, correct the table, search again), and the commands `python -m nas.search`,
`python -m nas.export` and `python -m nas.sweep`.
"""

__version__ = "0.1.0"
