"""The registry of search spaces and block types.

Each block family module (`search_spaces/families/*.py`) registers its block types, layer kinds
and spaces when it is imported; `get_space` imports the family that provides a space on first use,
so nothing is hard-coded outside the family modules but this table of where they live.
"""

from __future__ import annotations

import importlib

from search_spaces.space import BlockType, SearchSpace

# space name -> module that registers it, in the order `list_spaces` shows them
_SPACE_MODULES = {
    "efficientformer_v1": "search_spaces.families.efficientformer_v1",
    "efficientformer_v2": "search_spaces.families.efficientformer_v2",
    "edgevit": "search_spaces.families.edgevit",
    "edgenext": "search_spaces.families.edgenext",
    "hybrid": "search_spaces.families.hybrid",
}

_SPACES: dict[str, SearchSpace] = {}
_BLOCK_TYPES: dict[str, BlockType] = {}


def register_space(space: SearchSpace) -> SearchSpace:
    if space.name in _SPACES and _SPACES[space.name] is not space:
        raise ValueError(f"search space {space.name!r} is registered twice")
    _SPACES[space.name] = space
    return space


def register_block_type(block_type: BlockType) -> BlockType:
    if block_type.name in _BLOCK_TYPES and _BLOCK_TYPES[block_type.name] != block_type:
        raise ValueError(f"block type {block_type.name!r} is registered twice")
    _BLOCK_TYPES[block_type.name] = block_type
    return block_type


def load_all_families() -> None:
    for module in dict.fromkeys(_SPACE_MODULES.values()):
        importlib.import_module(module)


def list_spaces() -> list[str]:
    """Names of all registered search spaces."""
    load_all_families()
    ordered = [name for name in _SPACE_MODULES if name in _SPACES]
    return ordered + sorted(set(_SPACES) - set(ordered))


def get_space(name: str) -> SearchSpace:
    """The registered space `name`; `KeyError` listing the known names otherwise."""
    if name not in _SPACES:
        if name in _SPACE_MODULES:
            importlib.import_module(_SPACE_MODULES[name])
        else:
            load_all_families()
    try:
        return _SPACES[name]
    except KeyError:
        raise KeyError(f"unknown search space {name!r}; known spaces: {', '.join(list_spaces())}") from None


def block_types() -> dict[str, BlockType]:
    """All registered block types, by name."""
    load_all_families()
    return dict(_BLOCK_TYPES)
