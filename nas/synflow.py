"""The training-free evaluator: SynFlow saliency a sub-network keeps inside the supernet.

Which proxy, and why. SynFlow (Tanaka et al., "Pruning neural networks without any data by
iteratively conserving synaptic flow", NeurIPS 2020) scores every weight θ by its synaptic
saliency |θ · ∂R/∂θ|, where R is the sum of the outputs of the *linearised* network (all weights
replaced by |θ|, an all-ones input, double precision). It needs no data and no labels, and in the
zero-cost proxy study of Abdelfattah et al. ("Zero-Cost Proxies for Lightweight NAS", ICLR 2021) it
was the proxy that ranked architectures best across NAS-Bench-101/201/ASR and NLP spaces.

SynFlow was designed as a *pruning* criterion: the saliency a mask keeps says how much of the
network's synaptic flow survives. A sub-network of a weight-sharing supernet is exactly such a
mask, a structured one: fewer blocks, prefix slices of channels and expansions. So the score of an
architecture is the saliency its active weights hold in the supernet (every sub-network's weights are
prefix slices of the largest layer at each place, `supernet.elastic.prefix_slice`):

    score(arch) = 100 · Σ_{active weights w} s(w) / Σ_{weights w of the largest network} s(w)

i.e. the percentage of the largest network's synaptic flow the sub-network keeps. The saliency is
computed once: a forward and a backward pass of the linearised network for each of the few probe
architectures that together hold every layer kind at every place at its largest size (random
weights from `seed`, or a trained supernet's weights through `Supernet.extract`); an
architecture's score is then a sum of per-layer slice sums, cached per layer spec, so a greedy
search's thousands of evaluations cost microseconds each. Computing SynFlow on each sub-network
separately would cost a double-precision forward and backward pass per candidate (minutes per
search); the masked-saliency form is the quantity SynFlow pruning itself ranks masks by.

Choices, each documented because the proxy is only as good as its linearisation:
- Normalisation layers (BatchNorm, LayerNorm) and layer scales are identities in the linearised
  network. SynFlow's all-ones input has no statistics to normalise (a LayerNorm of it is zero and
  cuts the flow), and EfficientFormer's layer scales start at 1e-5, which would declare every
  residual branch worthless at initialisation; both are properties of the initialisation, not of
  the architecture.
- Only weights with two or more dimensions (convolutions, linear layers, attention-bias tables)
  are scored. Biases and norm affines are few, and the supernet keeps separate BatchNorms per
  width, which a single pass cannot score consistently.
- Each probe pass is normalised by its own total before passes are averaged, so a weight's
  saliency is its share of the flow of the network it was measured in.

The scores rank candidates; they are not accuracies, and the output says `evaluator: proxy`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from search_spaces import Architecture, LayerSpec, SearchSpace, build_layer, build_model
from search_spaces.enumeration import probe_architectures
from search_spaces.network import Network
from search_spaces.ops import ChannelLayerNorm, LayerScale
from supernet.candidates import place_candidates, twin
from supernet.elastic import ELASTIC_OPS, ElasticLayerNorm, SwitchableBatchNorm2d, prefix_slice

#: resolution of the proxy's networks: saliency shares hardly depend on it, and 64 px keeps the
#: passes fast (architectures are resolution-free; they are scored at this resolution)
PROXY_RESOLUTION = 64
PROXY_CLASSES = 10
_NORMS = (SwitchableBatchNorm2d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, ElasticLayerNorm, ChannelLayerNorm)


def cover_probes(space: SearchSpace, resolution: int, num_classes: int) -> list[Architecture]:
    """Few probe architectures that together hold every (place, kind) at its largest spec.

    Greedy set cover over the space's probe architectures (most newly covered places first).
    """
    places = place_candidates(space, resolution, num_classes)
    wanted = {key: candidates.largest.key() for key, candidates in places.items()}
    offers = []
    for probe in probe_architectures(space, resolution, num_classes):
        offers.append((probe, {(s.where, s.kind) for s in space.layer_specs(probe) if wanted.get((s.where, s.kind)) == s.key()}))
    chosen: list[Architecture] = []
    covered: set[tuple[str, str]] = set()
    while len(covered) < len(wanted):
        probe, places_held = max(offers, key=lambda offer: len(offer[1] - covered))
        if not places_held - covered:
            raise RuntimeError(f"{space.name}: no probe holds the largest layer at {sorted(set(wanted) - covered)[:3]}")
        chosen.append(probe)
        covered |= places_held
    return chosen


def _rescale(_module: nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> torch.Tensor:
    """A norm of the linearised network: its input divided by the input's mean, a constant."""
    x = args[0]
    return x / x.detach().mean(dim=tuple(range(1, x.dim())), keepdim=True)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: the proxy's tensors are a batch of one and weight-sized elementwise
    work, where extra threads only add barrier waits (ruinous on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _linearising_hooks(model: nn.Module) -> Iterator[torch.utils.hooks.RemovableHandle]:
    for module in model.modules():
        if isinstance(module, _NORMS):
            yield module.register_forward_hook(_rescale)
        elif isinstance(module, LayerScale):
            yield module.register_forward_hook(lambda _module, args, _output: args[0])


def synflow_shares(model: nn.Module, resolution: int) -> dict[str, torch.Tensor]:
    """Per weight tensor (≥ 2 dims) of `model`, each element's share of the network's SynFlow.

    `model` is linearised in place (weights replaced by |θ|; during the pass, norms divide by their
    input's mean held constant and layer scales are identities): pass a network built for this.
    """
    handles = list(_linearising_hooks(model))
    try:
        model.float().eval()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.abs_()
        model.zero_grad(set_to_none=True)
        model(torch.ones(1, 3, resolution, resolution)).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        saliency = {name: p.detach().mul_(p.grad).abs_() for name, p in model.named_parameters()
                    if p.dim() >= 2 and p.grad is not None}  # in place: the linearised weights are spent
        flow = sum(float(s.sum()) for s in saliency.values())
        if not 0 < flow < float("inf"):
            raise FloatingPointError(f"the SynFlow pass gave a total saliency of {flow}")
        return {name: value.div_(flow) for name, value in saliency.items()}


class SynFlowEvaluator:
    """Training-free scores: % of the largest network's SynFlow saliency an architecture keeps.

    `make_network(probe)` gives a network whose weights the proxy may overwrite: random ones
    (`from_space`, drawn from `seed`) or a trained supernet's (`from_supernet`). `score(arch)` is
    deterministic, additive over the architecture's layers and cached per layer spec. See the
    module docstring for the method and its choices.
    """

    name = "proxy"

    def __init__(self, space: SearchSpace, make_network: Callable[[Architecture], Network], resolution: int,
                 num_classes: int, weights: str) -> None:
        self.space, self.resolution, self.num_classes, self.weights = space, resolution, num_classes, weights
        self._probes = cover_probes(space, resolution, num_classes)
        with single_thread():
            self._saliency = self._measure(make_network)
        self._spec_cache: dict[tuple[str, str], float] = {}
        self._chunk_cache: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
        self._cache: dict[Architecture, float] = {}
        self.evaluations = 0
        self._full = self._raw(space.largest(resolution, num_classes))

    def _measure(self, make_network: Callable[[Architecture], Network]) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
        """Per (place, kind), the saliency share of each tensor of its largest layer, averaged
        over the probes that hold that layer."""
        places = place_candidates(self.space, self.resolution, self.num_classes)
        largest = {key: candidates.largest.key() for key, candidates in places.items()}
        sums: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        counts: dict[tuple[str, str], int] = {}
        for probe in self._probes:
            model = make_network(probe)
            shares = synflow_shares(model, self.resolution)
            for spec in self.space.layer_specs(probe):
                place = (spec.where, spec.kind)
                if largest.get(place) != spec.key():
                    continue
                prefix = f"{_module_path(model, spec.where)}."
                held = sums.setdefault(place, {})
                for name, value in shares.items():
                    if name.startswith(prefix):
                        name = name[len(prefix):]
                        held[name] = held[name] + value if name in held else value
                counts[place] = counts.get(place, 0) + 1
        return {place: {name: value / counts[place] for name, value in tensors.items()} for place, tensors in sums.items()}

    @classmethod
    def from_space(cls, space: SearchSpace, seed: int = 0, resolution: int = PROXY_RESOLUTION) -> "SynFlowEvaluator":
        """A proxy on randomly initialised weights (torch's default initialisation, drawn from `seed`)."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return cls(space, build_model, resolution, PROXY_CLASSES, f"random-init seed {seed}")
        finally:
            torch.random.set_rng_state(generator_state)

    @classmethod
    def from_supernet(cls, net, source: str = "trained supernet") -> "SynFlowEvaluator":
        """A proxy on a (trained) supernet's shared weights, at its resolution and class count."""
        return cls(net.space, net.extract, net.resolution, net.num_classes, source)

    def spec_saliency(self, spec: LayerSpec) -> float:
        """The saliency held by the weights `spec` uses at its place (a prefix slice of each tensor)."""
        cache_key = (spec.where, spec.key())
        value = self._spec_cache.get(cache_key)
        if value is not None:
            return value
        place = (spec.where, spec.kind)
        with single_thread():
            value = _slice_sums(spec, self._saliency.get(place, {}), self._chunks(place))
        self._spec_cache[cache_key] = value
        return value

    def _chunks(self, place: tuple[str, str]) -> dict[str, tuple[int, ...]]:
        """Which tensor dims of the place's layer are fused equal parts (q, k, v): the supernet's
        elastic layer says so (`tensor_chunks`); built on the meta device, once per place."""
        chunks = self._chunk_cache.get(place)
        if chunks is None:
            largest = place_candidates(self.space, self.resolution, self.num_classes)[place].largest
            with torch.device("meta"):
                elastic = build_layer(largest, ELASTIC_OPS)
            chunks = {f"{module_name}.{tensor}" if module_name else tensor: dims
                      for module_name, module in elastic.named_modules()
                      for tensor, dims in getattr(module, "tensor_chunks", {}).items()}
            self._chunk_cache[place] = chunks
        return chunks

    def _raw(self, arch: Architecture) -> float:
        return sum(self.spec_saliency(spec) for spec in self.space.layer_specs(arch))

    def score(self, arch: Architecture) -> float:
        """100 × the share of the largest network's saliency that `arch` keeps (higher is better)."""
        value = self._cache.get(arch)
        if value is None:
            self.evaluations += 1
            fitted = arch.__class__(arch.space, self.resolution, self.num_classes, arch.stages)
            value = 100.0 * self._raw(fitted) / self._full
            self._cache[arch] = value
        return value

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "proxy": "synflow_masked_saliency", "resolution": self.resolution,
                "probe_passes": len(self._probes), "weights": self.weights}


def _slice_sums(spec: LayerSpec, saliency: dict[str, torch.Tensor], chunks: dict[str, tuple[int, ...]]) -> float:
    """Σ of each saliency tensor over the prefix slice `spec`'s static layer has of it."""
    value = 0.0
    for module_name, module in twin(spec).named_modules():
        for tensor_name, tensor in module.named_parameters(recurse=False):
            name = f"{module_name}.{tensor_name}" if module_name else tensor_name
            if tensor.dim() >= 2 and name in saliency:
                value += float(prefix_slice(saliency[name], tensor.shape, chunks.get(name)).sum())
    return value


def _module_path(model: Network, where: str) -> str:
    """The `named_parameters` prefix of the module at `where` in `model`."""
    target = model.place(where)
    for name, module in model.named_modules():
        if module is target:
            return name
    raise KeyError(where)
