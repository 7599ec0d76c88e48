"""A toy latency table and parameter count with analytic answers, shared by the search tests."""


class ToyTable:
    """latency = 0.01 ms per block + 0.001 ms per channel of stage width."""

    def predict(self, arch):
        return 0.01 * sum(arch.depths) + 0.001 * sum(arch.widths)


def toy_params(arch):
    expansions = sum(b.expansion or 0 for s in arch.stages for b in s.blocks if not b.is_identity)
    return 100_000 * expansions + 1000 * sum(arch.widths)


def toy_problem(evaluator, objective, target, max_params=None, table=None, space=None):
    """A `SearchProblem` over the V2 space priced by `table` (default `ToyTable`) and `toy_params`."""
    from nas.problem import SearchProblem
    from search_spaces import get_space

    return SearchProblem(space or get_space("efficientformer_v2"), table or ToyTable(), evaluator, objective, target,
                         max_params, params_of=toy_params)
