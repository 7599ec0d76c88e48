"""The cross-family space `hybrid` (issue 20): which block types each stage allows, the per-slot
knobs (conv-encoder kernel, LGL sample ratio) reaching the layers, every V2 network being a hybrid
network, and the bad-input rule: a block type a stage does not allow, or a knob value outside its
choices, is refused with the field path and the allowed values (`validate` exits 2, one line).

The contracts every space keeps (YAML round-trip, samples, builders, parameter counts, supernet ==
extract, tables, searches) cover `hybrid` through their `list_spaces()` parametrisation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from search_spaces import Architecture, ArchitectureError, Block, Stage, build_model, count_params, get_space
from search_spaces.__main__ import PROG, main
from search_spaces.layers import build_layer
from tests.cli_support import invoke

SPACE = get_space("hybrid")
ALL_TYPES = {"ffn", "attn_ffn", "meta4d", "conv_encoder", "sdta", "lgl"}


def _small(arch, resolution=64, num_classes=10):
    return dataclasses.replace(arch, resolution=resolution, num_classes=num_classes)


def _mixed() -> Architecture:
    """The smallest network with every type and knob variant its stage allows, one per slot."""
    arch = SPACE.smallest()
    chosen = {
        0: [Block("ffn", 2), Block("conv_encoder", 3, kernel=9), Block("meta4d", 4)],
        1: [Block("sdta", 2, heads=2), Block("lgl", 3, heads=4, sample_ratio=4), Block("identity"),
            Block("lgl", 2, heads=8, sample_ratio=2), Block("conv_encoder", 2, kernel=5)],
        2: [Block("attn_ffn", 4), Block("lgl", 2, heads=4, sample_ratio=1), Block("lgl", 2, heads=8, sample_ratio=2),
            Block("sdta", 3, heads=8), Block("conv_encoder", 4, kernel=7), Block("meta4d", 2), Block("ffn", 3)],
        3: [Block("lgl", 4, heads=8, sample_ratio=1), Block("sdta", 2, heads=4), Block("attn_ffn", 2),
            Block("conv_encoder", 3, kernel=3)],
    }
    for index, blocks in chosen.items():
        arch = arch.replace_stage(index, Stage(arch.stages[index].width, tuple(blocks)))
    return SPACE.validate(arch)


# -- the space -----------------------------------------------------------------------------------
def test_stages_allow_attention_only_where_the_families_put_it():
    types = [set(stage.block_types) for stage in SPACE.stages]
    assert types[0] == {"ffn", "meta4d", "conv_encoder"}  # 1/4: convolutional mixers only
    assert types[1] == ALL_TYPES - {"attn_ffn"}  # 1/8: channel attention (sdta), sampled attention (lgl)
    assert types[2] == types[3] == ALL_TYPES
    assert [stage.sample_ratios for stage in SPACE.stages] == [(), (2, 4), (1, 2), (1,)]
    assert all(stage.kernels == (3, 5, 7, 9) for stage in SPACE.stages)
    assert [stage.block_types[0] for stage in SPACE.stages] == ["ffn"] * 4  # the conv-style type of each stage


def test_the_frame_and_the_choices_are_efficientformer_v2s():
    v2 = get_space("efficientformer_v2")
    for mine, theirs in zip(SPACE.stages, v2.stages, strict=True):
        assert (mine.widths, mine.max_depth, mine.min_depth, mine.expansions) == (
            theirs.widths, theirs.max_depth, theirs.min_depth, theirs.expansions)


@pytest.mark.parametrize("reference", get_space("efficientformer_v2").references())
def test_every_v2_network_is_a_hybrid_network_with_the_same_layers(reference):
    v2 = get_space("efficientformer_v2")
    theirs = v2.reference(reference)
    mine = SPACE.validate(dataclasses.replace(theirs, space="hybrid"))
    assert SPACE.reference(reference) == mine  # V2's references are this space's, under its name
    own = [spec.key() for spec in SPACE.layer_specs(mine)]
    renamed = [spec.key().replace("efficientformer_v2.", "hybrid.") for spec in v2.layer_specs(theirs)]
    assert own == renamed
    assert count_params(mine) == count_params(theirs)
    torch.manual_seed(0)
    v2_model = build_model(_small(theirs)).eval()
    torch.manual_seed(0)
    hybrid_model = build_model(_small(mine)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(v2_model(images), hybrid_model(images))


def test_samples_draw_every_type_and_knob():
    rng = np.random.default_rng(0)
    blocks = [b for _ in range(40) for s in SPACE.sample(rng).stages for b in s.blocks if not b.is_identity]
    assert {b.type for b in blocks} == ALL_TYPES
    assert {b.kernel for b in blocks if b.type == "conv_encoder"} == {3, 5, 7, 9}
    assert {b.sample_ratio for b in blocks if b.type == "lgl"} == {1, 2, 4}
    assert all(b.kernel is None for b in blocks if b.type != "conv_encoder")
    assert all(b.sample_ratio is None for b in blocks if b.type != "lgl")


def test_knobs_round_trip_and_reach_the_built_layers():
    arch = _mixed()
    text = arch.to_yaml()
    assert "{type: conv_encoder, expansion: 3, kernel: 9}" in text
    assert "{type: lgl, expansion: 3, heads: 4, sample_ratio: 4}" in text
    assert Architecture.from_yaml(text) == arch
    specs = {spec.where: spec for spec in SPACE.layer_specs(_small(arch))}
    assert specs["stages.0.blocks.1"].option("kernel") == 9
    assert build_layer(specs["stages.0.blocks.1"]).dwconv.kernel_size == (9, 9)
    assert specs["stages.1.blocks.1"].option("sr") == 4
    lgl = build_layer(specs["stages.1.blocks.1"])
    assert lgl.attention.attention.local_propagation.kernel_size == (4, 4)
    assert isinstance(build_layer(specs["stages.2.blocks.1"]).local, torch.nn.Identity)  # r = 1: plain MHSA
    assert specs["stages.2.blocks.0"].option("strided") is True  # V2's strided attention in stage 3
    assert dict(specs["stages.1.blocks.0"].options) == {"scales": 2, "pos_encoding": True}  # EdgeNeXt's stage 2 SDTA
    assert specs["stages.3.downsample"].option("attention") is True  # V2's attention downsample into stage 4
    model = build_model(_small(arch)).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert count_params(_small(arch)) == sum(p.numel() for p in model.parameters())


def test_the_home_spaces_refuse_the_hybrid_knobs():
    edgenext = get_space("edgenext")
    arch = edgenext.reference("xxs")
    stage = arch.stages[0]
    knobbed = dataclasses.replace(stage.blocks[0], kernel=3)
    with pytest.raises(ArchitectureError) as caught:
        edgenext.validate(arch.replace_stage(0, Stage(stage.width, (knobbed, *stage.blocks[1:]))))
    assert str(caught.value) == "stages[0].blocks[0].kernel: conv_encoder blocks take no kernel"


# -- bad input: a type a stage does not allow, a knob value outside its choices ---------------------
def _document(stage: int, block: dict) -> dict:
    data = _mixed().to_dict()
    data["stages"][stage]["blocks"][0] = block
    return data


BAD_BLOCKS = [
    ("sdta at 1/4", 0, {"type": "sdta", "expansion": 2, "heads": 4}, "stages[0].blocks[0].type",
     "'sdta' is not one of ['ffn', 'meta4d', 'conv_encoder', 'identity']"),
    ("lgl at 1/4", 0, {"type": "lgl", "expansion": 2, "heads": 4, "sample_ratio": 4}, "stages[0].blocks[0].type",
     "'lgl' is not one of ['ffn', 'meta4d', 'conv_encoder', 'identity']"),
    ("attn_ffn at 1/8", 1, {"type": "attn_ffn", "expansion": 2}, "stages[1].blocks[0].type",
     "'attn_ffn' is not one of ['ffn', 'meta4d', 'conv_encoder', 'sdta', 'lgl', 'identity']"),
    ("meta3d, a token block", 3, {"type": "meta3d", "expansion": 4}, "stages[3].blocks[0].type",
     "'meta3d' is not one of ['ffn', 'attn_ffn', 'meta4d', 'conv_encoder', 'sdta', 'lgl', 'identity']"),
    ("kernel outside its choices", 0, {"type": "conv_encoder", "expansion": 2, "kernel": 4}, "stages[0].blocks[0].kernel",
     "4 is not one of [3, 5, 7, 9]"),
    ("kernel missing", 1, {"type": "conv_encoder", "expansion": 2}, "stages[1].blocks[0].kernel",
     "missing; conv_encoder blocks need one of [3, 5, 7, 9]"),
    ("kernel on an ffn", 0, {"type": "ffn", "expansion": 2, "kernel": 3}, "stages[0].blocks[0].kernel",
     "ffn blocks take no kernel"),
    ("sample ratio outside its stage's choices", 3, {"type": "lgl", "expansion": 2, "heads": 4, "sample_ratio": 2},
     "stages[3].blocks[0].sample_ratio", "2 is not one of [1]"),
    ("sample ratio 1 at 1/8", 1, {"type": "lgl", "expansion": 2, "heads": 4, "sample_ratio": 1},
     "stages[1].blocks[0].sample_ratio", "1 is not one of [2, 4]"),
    ("sample ratio missing", 2, {"type": "lgl", "expansion": 2, "heads": 4}, "stages[2].blocks[0].sample_ratio",
     "missing; lgl blocks need one of [1, 2]"),
    ("sample ratio on an sdta", 2, {"type": "sdta", "expansion": 2, "heads": 4, "sample_ratio": 2},
     "stages[2].blocks[0].sample_ratio", "sdta blocks take no sample_ratio"),
    ("heads outside their stage's choices", 2, {"type": "sdta", "expansion": 2, "heads": 2}, "stages[2].blocks[0].heads",
     "2 is not one of [4, 8]"),
    ("expansion outside its choices", 1, {"type": "lgl", "expansion": 5, "heads": 2, "sample_ratio": 2},
     "stages[1].blocks[0].expansion", "5 is not one of [2, 3, 4]"),
    ("kernel not an integer", 0, {"type": "conv_encoder", "expansion": 2, "kernel": "7"}, "stages[0].blocks[0].kernel",
     "expected an integer"),
]


@pytest.mark.parametrize("name, stage, block, path, words", BAD_BLOCKS, ids=[case[0] for case in BAD_BLOCKS])
def test_a_bad_block_names_the_field_and_the_allowed_values(name, stage, block, path, words):
    with pytest.raises(ArchitectureError) as caught:
        SPACE.validate(Architecture.from_dict(_document(stage, block)))
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: {words}") and "\n" not in str(caught.value)


@pytest.mark.parametrize("name, stage, block, path, words", BAD_BLOCKS, ids=[case[0] for case in BAD_BLOCKS])
def test_validate_refuses_a_bad_block_in_one_line_exit_2(tmp_path, capsys, name, stage, block, path, words):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    _mixed().to_yaml(good)
    bad.write_text(yaml.safe_dump(_document(stage, block), sort_keys=False))
    code, out, err = invoke(main, PROG, ["validate", str(good), str(bad)], capsys)
    assert code == 2
    assert f"{good}: ok (hybrid" in out
    assert err.strip().startswith(f"{bad}: {path}: {words}") and len(err.strip().splitlines()) == 1


def test_show_and_sample_describe_the_space(tmp_path, capsys):
    code, out, _ = invoke(main, PROG, ["show", "hybrid"], capsys)
    assert code == 0
    assert "conv_encoder" in out and "[knobs: expansion, kernel]" in out and "[knobs: expansion, heads, sample_ratio]" in out
    assert "stage 2:" in out and "sample ratios [2, 4]" in out and "kernels [3, 5, 7, 9]" in out
    assert "references: l, s0, s1, s2" in out  # V2's, under this space's name
    code, _, err = invoke(main, PROG, ["sample", "hybrid", "--n", "3", "--seed", "1", "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    files = sorted(tmp_path.glob("hybrid_seed1_*.yaml"))
    assert len(files) == 3
    code, out, err = invoke(main, PROG, ["validate", *map(str, files)], capsys)
    assert code == 0 and out.count(": ok (hybrid") == 3, err


def test_an_unknown_reference_names_the_ones_there_are():
    with pytest.raises(KeyError, match="s0, s1, s2"):
        SPACE.reference("s9")
