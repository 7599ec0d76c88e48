"""search_spaces: the language every latnas package speaks.

Architectures (`Architecture`, `Stage`, `Block`) and their YAML, the registered search spaces
(EfficientFormer V1/V2, EdgeViT, EdgeNeXt) with their reference variants, the layer specs that
latency tables are keyed by, and the static model builders the supernet extracts into.
"""

from search_spaces.architecture import SCHEMA, Architecture, ArchitectureError, Block, Stage
from search_spaces.counting import cost, count_macs, count_params
from search_spaces.layers import LayerKind, LayerSpec, build_layer, layer_cost
from search_spaces.tracing import LayerCost, OpCount, trace_costs
from search_spaces.network import Network, NetworkStage, build_model
from search_spaces.ops import STATIC_OPS, Ops
from search_spaces.registry import block_types, get_space, list_spaces
from search_spaces.space import BlockType, SearchSpace, StageChoices

__version__ = "0.1.0"

__all__ = [
    "SCHEMA",
    "Architecture",
    "ArchitectureError",
    "Block",
    "BlockType",
    "LayerCost",
    "LayerKind",
    "LayerSpec",
    "Network",
    "NetworkStage",
    "OpCount",
    "Ops",
    "STATIC_OPS",
    "SearchSpace",
    "Stage",
    "StageChoices",
    "block_types",
    "build_layer",
    "build_model",
    "cost",
    "count_macs",
    "count_params",
    "get_space",
    "layer_cost",
    "list_spaces",
    "trace_costs",
]
