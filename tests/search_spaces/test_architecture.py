"""The architecture language: exact YAML round-trip and a corpus of bad inputs named by field."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_spaces import Architecture, ArchitectureError, Block, Stage, get_space, list_spaces
from search_spaces.architecture import IDENTITY


@st.composite
def architectures(draw, space_name: str) -> Architecture:
    """Any point of a space, identity slots anywhere (middle and end), valid knobs, random meta."""
    space = get_space(space_name)
    stages = []
    for choices in space.stages:
        heads_ok = [w for w in choices.widths if not choices.heads or space.valid_heads(choices, w)]
        width = draw(st.sampled_from(heads_ok))
        slots = draw(st.integers(min_value=1, max_value=choices.max_depth))
        blocks = []
        for _ in range(slots):
            type_name = draw(st.sampled_from((*choices.block_types, IDENTITY)))
            knobs = {knob: draw(st.sampled_from(space.knob_choices(choices, width, knob)))
                     for knob in space.block_type(type_name).knobs()}  # expansion, heads, kernel, sample ratio
            blocks.append(Block(type_name, **knobs))
        stages.append(Stage(width, tuple(blocks)))
    meta = draw(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=12), max_size=3))
    resolution = draw(st.sampled_from((32, 64, space.default_resolution)))
    num_classes = draw(st.integers(min_value=1, max_value=2000))
    return Architecture(space.name, resolution, num_classes, tuple(stages), meta)


@pytest.mark.parametrize("space_name", list_spaces())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_yaml_round_trip_is_exact(space_name, data):
    arch = data.draw(architectures(space_name))
    text = arch.to_yaml()
    back = Architecture.from_yaml(text)
    assert back == arch
    assert back.meta == arch.meta
    assert back.to_yaml() == text  # byte-identical the second time round
    assert Architecture.from_dict(arch.to_dict()) == arch


def test_trailing_identity_slots_are_implied():
    explicit = Stage(32, (Block("ffn", 4), Block(IDENTITY), Block(IDENTITY)))
    assert explicit == Stage(32, (Block("ffn", 4),))
    assert explicit.depth == 1
    middle = Stage(32, (Block(IDENTITY), Block("ffn", 4)))
    assert len(middle.blocks) == 2 and middle.depth == 1


def test_meta_is_ignored_for_equality_and_hash():
    arch = get_space("efficientformer_v2").reference("s0")
    tagged = arch.with_meta(device="iphone12", latency_ms=0.9)
    assert tagged == arch and hash(tagged) == hash(arch)
    assert tagged.meta["device"] == "iphone12" and not arch.meta


def test_from_yaml_reads_files_and_text(tmp_path):
    arch = get_space("edgenext").reference("xxs")
    path = tmp_path / "a.yaml"
    arch.to_yaml(path)
    assert Architecture.from_yaml(path) == arch
    assert Architecture.from_yaml(str(path)) == arch
    with pytest.raises(ArchitectureError, match="no such file"):
        Architecture.from_yaml(str(tmp_path / "missing.yaml"))


def _s0() -> dict:
    return get_space("efficientformer_v2").reference("s0").to_dict()


def _l1() -> dict:
    return get_space("efficientformer_v1").reference("l1").to_dict()


def _edit(base: dict, edit) -> dict:
    edit(base)
    return base


def _set(path, value):
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


# (name, document or YAML text, expected field path, words the message must contain)
BAD_INPUTS = [
    ("unknown top-level key", lambda: _edit(_s0(), _set(["colour"], "blue")), "colour", "unknown key"),
    ("unknown block key", lambda: _edit(_s0(), _set(["stages", 0, "blocks", 0, "groups"], 3)), "stages[0].blocks[0].groups", "unknown key"),
    ("kernel on a block without one", lambda: _edit(_s0(), _set(["stages", 0, "blocks", 0, "kernel"], 3)), "stages[0].blocks[0].kernel", "take no kernel"),
    ("unknown stage key", lambda: _edit(_s0(), _set(["stages", 1, "depth"], 2)), "stages[1].depth", "unknown key"),
    ("width of the wrong type", lambda: _edit(_s0(), _set(["stages", 0, "width"], "32")), "stages[0].width", "integer"),
    ("width given as a boolean", lambda: _edit(_s0(), _set(["stages", 0, "width"], True)), "stages[0].width", "integer"),
    ("negative width", lambda: _edit(_s0(), _set(["stages", 2, "width"], -96)), "stages[2].width", ">= 1"),
    ("zero width", lambda: _edit(_s0(), _set(["stages", 1, "width"], 0)), "stages[1].width", ">= 1"),
    ("width not in the space", lambda: _edit(_s0(), _set(["stages", 2, "width"], 100)), "stages[2].width", "not one of"),
    ("unknown block type", lambda: _edit(_s0(), _set(["stages", 2, "blocks", 4, "type"], "attn")), "stages[2].blocks[4].type", "not one of"),
    ("attention block in stage 1", lambda: _edit(_s0(), _set(["stages", 0, "blocks", 0], {"type": "attn_ffn", "expansion": 4})), "stages[0].blocks[0].type", "not one of"),
    ("meta3d followed by meta4d", lambda: _edit(_l1(), lambda d: d["stages"][3]["blocks"].append({"type": "meta4d", "expansion": 4})), "stages[3].blocks[4].type", "meta3d"),
    ("expansion missing", lambda: _edit(_s0(), _set(["stages", 0, "blocks", 0], {"type": "ffn"})), "stages[0].blocks[0].expansion", "missing"),
    ("expansion forbidden", lambda: _edit(_s0(), _set(["stages", 0, "blocks", 0], {"type": "identity", "expansion": 4})), "stages[0].blocks[0].expansion", "take no expansion"),
    ("expansion out of range", lambda: _edit(_s0(), _set(["stages", 3, "blocks", 1, "expansion"], 5)), "stages[3].blocks[1].expansion", "not one of"),
    ("expansion not an integer", lambda: _edit(_s0(), _set(["stages", 3, "blocks", 1, "expansion"], 3.5)), "stages[3].blocks[1].expansion", "integer"),
    ("too many blocks", lambda: _edit(_s0(), _set(["stages", 0, "blocks"], [{"type": "ffn", "expansion": 4}] * 6)), "stages[0].blocks", "at most 5"),
    ("empty stage", lambda: _edit(_s0(), _set(["stages", 0, "blocks"], [])), "stages[0].blocks", "at least 1"),
    ("blocks not a list", lambda: _edit(_s0(), _set(["stages", 0, "blocks"], "ffn")), "stages[0].blocks", "list"),
    ("wrong schema string", lambda: _edit(_s0(), _set(["schema"], "latnas/architecture@2")), "schema", "latnas/architecture@1"),
    ("missing space", lambda: _edit(_s0(), lambda d: d.pop("space")), "space", "missing"),
    ("wrong number of stages", lambda: _edit(_s0(), lambda d: d["stages"].pop()), "stages", "4 stages"),
    ("resolution not a multiple of 32", lambda: _edit(_s0(), _set(["resolution"], 100)), "resolution", "multiple of 32"),
    ("heads on a block without heads", lambda: _edit(_s0(), _set(["stages", 0, "blocks", 0, "heads"], 2)), "stages[0].blocks[0].heads", "take no heads"),
    ("malformed YAML", lambda: "schema: latnas/architecture@1\nstages: [\n", "", "malformed YAML"),
    ("empty file", lambda: "\n", "", "empty document"),
    ("non-mapping top level", lambda: "- 1\n- 2\n", "", "top level must be a mapping"),
]


@pytest.mark.parametrize("name, make, path, words", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_the_field(name, make, path, words):
    document = make()
    with pytest.raises(ArchitectureError) as caught:
        arch = Architecture.from_yaml(document) if isinstance(document, str) else Architecture.from_dict(document)
        get_space(arch.space).validate(arch)
    assert caught.value.path == path
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_heads_must_divide_the_width():
    space = get_space("edgevit")
    arch = space.reference("xs")  # stage 3: width 240, 5 heads
    stage = arch.stages[2]
    narrowed = dataclasses.replace(stage, width=232)
    with pytest.raises(ArchitectureError) as caught:
        space.validate(arch.replace_stage(2, narrowed))
    assert caught.value.path == "stages[2].blocks[0].heads"
    assert "divisible" in str(caught.value)


def test_architecture_of_another_space_is_refused():
    arch = get_space("edgevit").reference("xxs")
    with pytest.raises(ArchitectureError) as caught:
        get_space("edgenext").validate(arch)
    assert caught.value.path == "space"
