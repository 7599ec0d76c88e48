"""LatencyTable: save/load round-trip, checksum and schema refusal, predict, missing keys."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lut import Calibration, LatencyRecord, LatencyTable, MissingKeysError, TableError, TableMetadata, load_table
from lut.build import enumerate_specs
from search_spaces import get_space

SPACE = "efficientformer_v2"
RESOLUTION = 64


def record(ms: float) -> LatencyRecord:
    return LatencyRecord(p50_ms=ms, p10_ms=ms * 0.9, p90_ms=ms * 1.2, mean_ms=ms * 1.01, std_ms=ms * 0.05, runs=30)


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    space = get_space(SPACE)
    specs = enumerate_specs(space, RESOLUTION, 10, [(24,), (40,), (80,), (160, 168)])
    records = {key: record(0.01 * (index + 1)) for index, key in enumerate(specs)}
    metadata = TableMetadata("test", SPACE, RESOLUTION, 10, 1, 1, "fp32", runtime={"x": "1"}, build={"specs": len(specs)})
    return LatencyTable(metadata, records)


def small_arch(width4: int = 160):
    space = get_space(SPACE)
    arch = space.smallest(RESOLUTION, 10)
    return arch.replace_stage(3, arch.stages[3].__class__(width4, arch.stages[3].blocks))


def test_save_load_round_trip(table, tmp_path):
    path = table.save(tmp_path / "t.json")
    again = load_table(path)
    assert again.records == table.records
    assert again.metadata == table.metadata
    assert again.calibration == table.calibration
    assert again.sha256 == table.sha256 == json.loads(path.read_text())["sha256"]


def test_predict_is_the_sum_of_the_layer_records(table):
    arch = small_arch()
    specs = get_space(SPACE).layer_specs(arch)
    expected = sum(table.records[s.key()].p50_ms for s in specs)
    assert table.predict(arch) == pytest.approx(expected)
    assert table.predict_naive(arch) == pytest.approx(expected)
    assert table.lookup(specs[0]) == table.records[specs[0].key()]


def test_calibration_is_applied_per_kind(table):
    arch = small_arch()
    sums = table.sums_by_kind(arch)
    calibrated = table.with_calibration(Calibration("test", {"ffn": 2.0}, 0.5, 3))
    assert calibrated.predict(arch) == pytest.approx(sum(sums.values()) + sums["ffn"] + 0.5)
    assert table.predict(arch) == pytest.approx(sum(sums.values()))  # the original is unchanged


def test_missing_keys_are_listed(table):
    space = get_space(SPACE)
    arch = space.largest(RESOLUTION, 10)
    wanted = {s.key() for s in space.layer_specs(arch)} - set(table.records)
    with pytest.raises(KeyError) as caught:
        table.predict(arch)
    assert isinstance(caught.value, MissingKeysError)
    assert set(caught.value.keys) == wanted
    message = str(caught.value)
    assert f"{len(wanted)} layer key(s)" in message and sorted(wanted)[0] in message or len(wanted) > 20


def test_lookup_of_an_unknown_spec_names_its_key(table):
    spec = get_space(SPACE).layer_specs(get_space(SPACE).largest(RESOLUTION, 10))[-1]
    with pytest.raises(MissingKeysError, match=spec.key().replace(".", r"\.")):
        table.lookup(spec)


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: text.replace('"p50_ms": 0.01,', '"p50_ms": 0.02,', 1), "sha256 mismatch"),
        (lambda text: text.replace("latnas/lut@1", "latnas/lut@0"), "schema is 'latnas/lut@0'"),
        (lambda text: "[1, 2]", "not a latnas/lut@1 table"),
        (lambda text: "", "not valid JSON"),
    ],
)
def test_damaged_files_are_refused_with_one_line(table, tmp_path, damage, words):
    path = table.save(tmp_path / "t.json")
    path.write_text(damage(path.read_text()))
    with pytest.raises(TableError) as caught:
        load_table(path)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_edited_file_with_a_recomputed_checksum_still_needs_valid_fields(table, tmp_path):
    from lut.table import content_sha256

    data = json.loads(table.to_json())
    first = next(iter(data["records"]))
    data["records"][first]["runs"] = -1
    del data["sha256"]
    data["sha256"] = content_sha256(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TableError, match=r"runs must be an integer in 0\.\."):
        load_table(path)


def test_missing_file(tmp_path):
    with pytest.raises(TableError, match="no such file"):
        load_table(tmp_path / "none.json")


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        record(1.0).p50_ms = 2.0  # type: ignore[misc]


def test_predict_refuses_another_space(table):
    arch = get_space("edgevit").smallest(RESOLUTION, 10)
    with pytest.raises(TableError, match="prices space"):
        table.predict(arch)


def test_table_never_holds_nan(tmp_path):
    metadata = TableMetadata("test", SPACE, RESOLUTION, 10, 1, 1, "fp32")
    bad = LatencyTable(metadata, {"k": LatencyRecord(float("nan"), 0, 0, 0, 0, 1)})
    with pytest.raises(ValueError):
        bad.save(tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()
    assert np.isnan(bad.records["k"].p50_ms)
