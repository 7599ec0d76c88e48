"""A toy latency table and parameter count with analytic answers, shared by the search tests."""


class ToyTable:
    """latency = 0.01 ms per block + 0.001 ms per channel of stage width."""

    def predict(self, arch):
        return 0.01 * sum(arch.depths) + 0.001 * sum(arch.widths)


def toy_params(arch):
    expansions = sum(b.expansion or 0 for s in arch.stages for b in s.blocks if not b.is_identity)
    return 100_000 * expansions + 1000 * sum(arch.widths)
