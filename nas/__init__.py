"""nas: latency-aware architecture search over the latnas spaces.

`api` (the one search API: `SearchRequest` -> `run_search` -> `SearchOutcome`), `problem` (what a
strategy is given and returns; the `Evaluator` and `LatencyPredictor` protocols), `objectives`
(V1 latency ratio, V2 MES), `actions` (V1/V2 slimming actions from a space's declared choices),
`evaluators` (supernet accuracy, evaluator specs) and `synflow` (the training-free proxy),
`greedy` (the slimming controller), `strategies` (the `Strategy` protocol: greedy, random search,
regularized evolution), `state` (resumable state files), `verify` (measure the result, correct
the table, search again), and the commands `python -m nas.search`, `python -m nas.export` and
`python -m nas.sweep`, thin adapters over `api`.
"""

__version__ = "0.1.0"
