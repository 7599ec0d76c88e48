"""The architecture language: `Architecture`, `Stage` and `Block`, and their exact YAML form.

An architecture is a point of a search space written as data (schema `latnas/architecture@1`):
a space name, an input resolution, a class count and, per stage, a width and one `Block` per
supernet slot. This module checks only the *syntax* of that data (known keys, right types, the
schema string); whether the point belongs to its space is `SearchSpace.validate`'s job.

Canonical form: slots missing at the end of a stage are identity, so trailing identity blocks are
dropped on construction. Two architectures are equal exactly when they describe the same network;
`meta` (provenance written by tools) is carried along but never compared.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from search_spaces.files import FileError, parse_yaml_document, read_input_text
from search_spaces.limits import MAX_ARCHITECTURE_BYTES, NUM_CLASSES, RESOLUTION, IntRange

SCHEMA = "latnas/architecture@1"
IDENTITY = "identity"

_TOP_KEYS = ("schema", "space", "resolution", "num_classes", "stages", "meta")
_REQUIRED_TOP_KEYS = ("schema", "space", "resolution", "num_classes", "stages")
_STAGE_KEYS = ("width", "blocks")
_BLOCK_KEYS = ("type", "expansion", "heads", "kernel", "sample_ratio")


class ArchitectureError(ValueError):
    """An architecture (or the text it was read from) is not acceptable.

    `path` names the offending field (`stages[2].blocks[4].type`), or is empty when the problem is
    the document as a whole; `str(error)` is the one line a command prints.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(value: Any, path: str, minimum: int) -> int:
    if not _is_int(value):
        raise ArchitectureError(path, f"expected an integer, got {_describe(value)}")
    if value < minimum:
        raise ArchitectureError(path, f"must be >= {minimum}, got {value}")
    return value


def _require_in(value: Any, path: str, allowed: IntRange) -> int:
    if not _is_int(value):
        raise ArchitectureError(path, f"expected an integer, got {_describe(value)}")
    if value not in allowed:
        raise ArchitectureError(path, f"must be {allowed.describe()}, got {value}")
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        where = f"{path}." if path else ""
        raise ArchitectureError(
            f"{where}{unknown[0]}", f"unknown key; accepted keys are {', '.join(allowed)}"
        )


@dataclass(frozen=True)
class Block:
    """One supernet slot: a block type plus the knobs that type has.

    `expansion` is the hidden/width ratio of the block's MLP and `heads` its attention head count;
    `kernel` the depthwise kernel size and `sample_ratio` the attention's subsampling ratio, for
    spaces where those are per-slot choices rather than fixed per stage (the `hybrid` space: an
    EdgeNeXt `conv_encoder`'s kernel, an EdgeViT `lgl`'s sample ratio). Each is present exactly
    when the block type has that knob in the block's space (the space checks which).
    """

    type: str
    expansion: int | None = None
    heads: int | None = None
    kernel: int | None = None
    sample_ratio: int | None = None

    @property
    def is_identity(self) -> bool:
        return self.type == IDENTITY

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type}
        if self.expansion is not None:
            data["expansion"] = self.expansion
        if self.heads is not None:
            data["heads"] = self.heads
        if self.kernel is not None:
            data["kernel"] = self.kernel
        if self.sample_ratio is not None:
            data["sample_ratio"] = self.sample_ratio
        return data

    @classmethod
    def from_dict(cls, data: Any, path: str = "block") -> "Block":
        if not isinstance(data, Mapping):
            raise ArchitectureError(path, f"expected a mapping with a 'type', got {_describe(data)}")
        _check_keys(data, _BLOCK_KEYS, path)
        if "type" not in data:
            raise ArchitectureError(f"{path}.type", "missing")
        block_type = data["type"]
        if not isinstance(block_type, str) or not block_type:
            raise ArchitectureError(f"{path}.type", f"expected a block type name, got {_describe(block_type)}")
        knobs = {}
        for knob in ("expansion", "heads", "kernel", "sample_ratio"):
            value = data.get(knob)
            knobs[knob] = None if value is None else _require_int(value, f"{path}.{knob}", 1)
        return cls(block_type, **knobs)


IDENTITY_BLOCK = Block(IDENTITY)


@dataclass(frozen=True)
class Stage:
    """One resolution stage: its channel width and its block slots, in slot order.

    Trailing identity slots are dropped on construction (they are implied), so `blocks` may be
    shorter than the space's maximum depth. `depth` counts the non-identity blocks.
    """

    width: int
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        blocks = tuple(self.blocks)
        while blocks and blocks[-1].is_identity:
            blocks = blocks[:-1]
        object.__setattr__(self, "blocks", blocks)

    @property
    def depth(self) -> int:
        return sum(not block.is_identity for block in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "blocks": [block.to_dict() for block in self.blocks]}

    @classmethod
    def from_dict(cls, data: Any, path: str = "stage") -> "Stage":
        if not isinstance(data, Mapping):
            raise ArchitectureError(path, f"expected a mapping with 'width' and 'blocks', got {_describe(data)}")
        _check_keys(data, _STAGE_KEYS, path)
        for key in _STAGE_KEYS:
            if key not in data:
                raise ArchitectureError(f"{path}.{key}", "missing")
        width = _require_int(data["width"], f"{path}.width", 1)
        raw_blocks = data["blocks"]
        if not isinstance(raw_blocks, list):
            raise ArchitectureError(f"{path}.blocks", f"expected a list of blocks, got {_describe(raw_blocks)}")
        blocks = tuple(Block.from_dict(item, f"{path}.blocks[{i}]") for i, item in enumerate(raw_blocks))
        return cls(width, blocks)


@dataclass(frozen=True)
class Architecture:
    """A concrete network of a search space (schema `latnas/architecture@1`).

    Frozen and hashable; `meta` is provenance carried along, excluded from equality and hashing.
    `from_yaml`/`to_yaml` and `from_dict`/`to_dict` round-trip exactly.
    """

    space: str
    resolution: int
    num_classes: int
    stages: tuple[Stage, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "meta", copy.deepcopy(dict(self.meta)))

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(stage.depth for stage in self.stages)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(stage.width for stage in self.stages)

    def with_meta(self, **entries: Any) -> "Architecture":
        """A copy whose `meta` holds `entries` on top of the current ones."""
        return Architecture(self.space, self.resolution, self.num_classes, self.stages, {**self.meta, **entries})

    def replace_stage(self, index: int, stage: Stage) -> "Architecture":
        stages = list(self.stages)
        stages[index] = stage
        return Architecture(self.space, self.resolution, self.num_classes, tuple(stages), self.meta)

    # -- dict / YAML -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "space": self.space,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "stages": [stage.to_dict() for stage in self.stages],
        }
        if self.meta:
            data["meta"] = copy.deepcopy(dict(self.meta))
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Architecture":
        if not isinstance(data, Mapping):
            raise ArchitectureError("", f"the top level must be a mapping (schema: {SCHEMA}), got {_describe(data)}")
        _check_keys(data, _TOP_KEYS, "")
        for key in _REQUIRED_TOP_KEYS:
            if key not in data:
                raise ArchitectureError(key, "missing")
        if data["schema"] != SCHEMA:
            raise ArchitectureError("schema", f"expected '{SCHEMA}', got {_describe(data['schema'])}")
        space = data["space"]
        if not isinstance(space, str) or not space:
            raise ArchitectureError("space", f"expected a space name, got {_describe(space)}")
        resolution = _require_in(data["resolution"], "resolution", RESOLUTION)
        num_classes = _require_in(data["num_classes"], "num_classes", NUM_CLASSES)
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list) or not raw_stages:
            raise ArchitectureError("stages", f"expected a non-empty list of stages, got {_describe(raw_stages)}")
        stages = tuple(Stage.from_dict(item, f"stages[{i}]") for i, item in enumerate(raw_stages))
        meta = data.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise ArchitectureError("meta", f"expected a mapping, got {_describe(meta)}")
        return cls(space, resolution, num_classes, stages, meta)

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        """The YAML text; also written atomically to `path` when one is given."""
        text = yaml.dump(self.to_dict(), Dumper=_ArchitectureDumper, sort_keys=False, width=100)
        if path is not None:
            from search_spaces.files import write_text_atomic

            write_text_atomic(Path(path), text)
        return text

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str]) -> "Architecture":
        """Read from a file path or from YAML text (text is anything with a newline or a '{')."""
        if isinstance(source, os.PathLike) or ("\n" not in source and not source.lstrip().startswith("{")):
            path = Path(source)
            try:
                text = read_input_text(path, "", MAX_ARCHITECTURE_BYTES)
            except FileError as error:  # callers name the file; the message says what is wrong with it
                raise ArchitectureError("", str(error).removeprefix(f"{path}: ")) from None
        else:
            text = source
        if not text.strip():
            raise ArchitectureError("", f"empty document; expected a YAML mapping (schema: {SCHEMA})")
        try:
            data = parse_yaml_document(text, "document")
        except FileError as error:
            raise ArchitectureError("", str(error).removeprefix("document: ")) from None
        return cls.from_dict(data)


class _ArchitectureDumper(yaml.SafeDumper):
    """Block lists as one flow mapping per line: readable and diffable."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flow = set(data) <= set(_BLOCK_KEYS) and "type" in data
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_ArchitectureDumper.add_representer(dict, _represent_dict)
