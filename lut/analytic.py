"""Analytic device models: a layer's latency from its shapes, with the device's parameters as data.

A device model (`lut/device_models/<device>.yaml`, schema `latnas/device-model@1`) prices the op
breakdown that every layer kind already gives (`layer_cost(spec).ops`, see
`search_spaces.layers.OP_CLASSES`):

    layer_ms = Σ_class [calls_class · call_weight_class · call_overhead + work_class / rate_class]
               + layer_fixed
    network_ms = Σ layer_ms + network_fixed

work is MACs for the compute classes (conv, dwconv, linear, matmul) and elements for the memory
classes. The rates are tied, so that a handful of parameters describe eight classes:

- conv and linear run at `mac_rate`; dwconv and matmul at `mac_rate` times a fixed efficiency;
- the layout class `reshape` at its own `reshape_rate` (published: 4D <-> token changes are
  expensive on the phone);
- normalisation is split in two: BatchNorm is folded into the neighbouring convolution by Core ML
  (free), LayerNorm (and the L2 normalisation of XCA) is a separate reduction priced at
  `layernorm_rate` (published: LayerNorm is 10–20% of a ViT's latency). `LayerCost` records both
  as "norm", so which norms are BatchNorms is derived from the layer kind (`batchnorm_elements`);
- element-wise ops at `elementwise_rate`, activations at `activation_rate` with call weight 0
  (GELU is fused into the producing convolution on the Neural Engine: cheap);
- attention cost follows the token count N through the op counts themselves: the score matmuls
  and the softmax grow with N², so strided attention (fewer tokens) is cheaper.

Parameters marked `fitted: true` are fitted by `fit_parameters` (scipy least squares on the log
of predicted/published, coefficients non-negative) to the published whole-network latencies listed
in the model's `calibration_data`; the others are fixed priors. Everything here is deterministic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from search_spaces.layers import LayerSpec, layer_cost

if TYPE_CHECKING:
    from search_spaces import Architecture, SearchSpace

    from lut.table import LatencyTable

MODEL_SCHEMA = "latnas/device-model@1"

# Priced classes: the op classes of `OP_CLASSES`, with "norm" split into its two kinds.
PRICED_CLASSES = ("conv", "dwconv", "linear", "matmul", "batchnorm", "layernorm", "activation", "elementwise", "reshape")
COMPUTE_CLASSES = ("conv", "dwconv", "linear", "matmul")

# Layer kinds all of whose norms are BatchNorms (folded into a convolution by Core ML).
_ALL_BATCHNORM_KINDS = frozenset(
    {
        "ffn",
        "attn_ffn",
        "efficientformer_v2.stem",
        "efficientformer_v2.downsample",
        "efficientformer_v2.head",
        "meta4d",
        "efficientformer_v1.stem",
        "efficientformer_v1.downsample",
        "edgevit.head",
    }
)


def batchnorm_elements(spec: LayerSpec, norm_elements: int) -> int:
    """How many of a layer's normalised elements are BatchNorm (the rest are LayerNorm-like).

    Derived from the layer kind, because `LayerCost` records both norms as "norm":
    EfficientFormer V2 uses BatchNorm everywhere; V1 in its 4D part (stem, downsamples, meta4d),
    LayerNorm in meta3d and the head; EdgeViT's local aggregation (sample ratio > 1) has two
    BatchNorms over the whole map and its head one, everything else is LayerNorm; EdgeNeXt uses
    LayerNorm (and XCA's L2 normalisation) only. A kind not listed here is priced as LayerNorm,
    the conservative (slower) choice. Splitting the "norm" op class in `layers.py` would remove
    this table.
    """
    if spec.kind in _ALL_BATCHNORM_KINDS:
        return norm_elements
    if spec.kind == "lgl":
        ratio = spec.option("sr", 1)
        height, width = spec.input_size
        return min(norm_elements, 2 * spec.in_channels * height * width) if isinstance(ratio, int) and ratio > 1 else 0
    return 0


def priced_work(spec: LayerSpec) -> dict[str, tuple[int, int]]:
    """(calls, work) per priced class of one layer: MACs for compute classes, elements otherwise."""
    work: dict[str, tuple[int, int]] = {}
    for count in layer_cost(spec).ops:
        if count.op == "norm":
            folded = batchnorm_elements(spec, count.elements)
            # calls are split in proportion to elements (all norms of a layer have equal size or
            # are all of one kind in every family)
            folded_calls = round(count.calls * folded / count.elements) if count.elements else 0
            work["batchnorm"] = (folded_calls, folded)
            work["layernorm"] = (count.calls - folded_calls, count.elements - folded)
        elif count.op in COMPUTE_CLASSES:
            work[count.op] = (count.calls, count.macs)
        else:
            work[count.op] = (count.calls, count.elements)
    return work


@dataclass(frozen=True)
class Parameter:
    """One model parameter: value, unit, whether the calibration fits it, and what it means."""

    value: float
    unit: str
    fitted: bool
    comment: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "fitted": self.fitted, "comment": self.comment}


@dataclass(frozen=True)
class CalibrationPoint:
    """A published whole-network latency of a reference architecture of one of our spaces."""

    space: str
    reference: str
    published_ms: float
    name: str

    def architecture(self) -> "Architecture":
        from search_spaces import get_space

        return get_space(self.space).reference(self.reference)


# The parameters every model file must define, with the unit they must be given in.
PARAMETER_UNITS = {
    "mac_rate": "TMAC/s",
    "dwconv_efficiency": "fraction of mac_rate",
    "matmul_efficiency": "fraction of mac_rate",
    "layernorm_rate": "Gelement/s",
    "reshape_rate": "Gelement/s",
    "elementwise_rate": "Gelement/s",
    "activation_rate": "Gelement/s",
    "call_overhead": "us/call",
    "layer_fixed": "us/layer",
    "network_fixed": "ms/network",
}
# Call weight of each priced class (multiplies call_overhead): folded BatchNorms and fused
# activations cost no separate operation.
CALL_WEIGHTS = {"batchnorm": 0.0, "activation": 0.0}

# The linear coefficient each fitted parameter becomes (ms per unit of its feature) and back.
_COEFFICIENT = {
    "mac_rate": lambda rate: 1.0 / (rate * 1e9),
    "layernorm_rate": lambda rate: 1.0 / (rate * 1e6),
    "reshape_rate": lambda rate: 1.0 / (rate * 1e6),
    "call_overhead": lambda us: us * 1e-3,
    "layer_fixed": lambda us: us * 1e-3,
    "network_fixed": lambda ms: ms,
}
_FROM_COEFFICIENT = {
    "mac_rate": lambda c: 1.0 / (c * 1e9),
    "layernorm_rate": lambda c: 1.0 / (c * 1e6),
    "reshape_rate": lambda c: 1.0 / (c * 1e6),
    "call_overhead": lambda c: c * 1e3,
    "layer_fixed": lambda c: c * 1e3,
    "network_fixed": lambda c: c,
}


class ModelError(ValueError):
    """A device model file that cannot be used; one-line message."""


@dataclass(frozen=True)
class DeviceModel:
    """An analytic device model. Contract: `layer_ms(spec)` ≥ 0 and deterministic;
    `network_ms(arch)` = Σ `layer_ms` over `layer_specs(arch)` + `network_fixed`; `with_values`
    returns a new model; `to_dict`/`from_dict` round-trip the YAML document."""

    device: str
    summary: str
    parameters: Mapping[str, Parameter]
    calibration_data: tuple[CalibrationPoint, ...]
    fit: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = sorted(set(PARAMETER_UNITS) - set(self.parameters))
        extra = sorted(set(self.parameters) - set(PARAMETER_UNITS))
        if missing or extra:
            raise ModelError(f"{self.device}: missing parameter(s) {missing} / unknown {extra}")
        for name, parameter in self.parameters.items():
            if parameter.unit != PARAMETER_UNITS[name]:
                raise ModelError(f"{self.device}: {name} must be in {PARAMETER_UNITS[name]}, got {parameter.unit!r}")
            if not np.isfinite(parameter.value) or parameter.value < 0:
                raise ModelError(f"{self.device}: {name} must be a finite non-negative number, got {parameter.value}")
            if parameter.fitted and name not in _COEFFICIENT:
                raise ModelError(f"{self.device}: {name} cannot be fitted (not linear in the latency)")
        for name in (n for n, unit in PARAMETER_UNITS.items() if "rate" in n or "efficiency" in n):
            if self.parameters[name].value <= 0:
                raise ModelError(f"{self.device}: {name} must be positive")

    def value(self, name: str) -> float:
        return self.parameters[name].value

    @property
    def fitted_names(self) -> tuple[str, ...]:
        return tuple(name for name in PARAMETER_UNITS if self.parameters[name].fitted)

    # -- pricing -------------------------------------------------------------------------------
    def class_ms_per_unit(self) -> dict[str, float]:
        """Milliseconds per unit of work (MAC or element) of each priced class."""
        mac_ms = 1.0 / (self.value("mac_rate") * 1e9)

        def per_element(name: str) -> float:
            return 1.0 / (self.value(name) * 1e6)

        return {
            "conv": mac_ms,
            "linear": mac_ms,
            "dwconv": mac_ms / self.value("dwconv_efficiency"),
            "matmul": mac_ms / self.value("matmul_efficiency"),
            "batchnorm": 0.0,
            "layernorm": per_element("layernorm_rate"),
            "reshape": per_element("reshape_rate"),
            "elementwise": per_element("elementwise_rate"),
            "activation": per_element("activation_rate"),
        }

    def layer_breakdown(self, spec: LayerSpec) -> dict[str, float]:
        """Milliseconds of one layer per priced class, plus "calls" and "layer_fixed"."""
        per_unit = self.class_ms_per_unit()
        call_ms = self.value("call_overhead") * 1e-3
        parts = {"calls": 0.0, "layer_fixed": self.value("layer_fixed") * 1e-3}
        for name, (calls, work) in priced_work(spec).items():
            parts[name] = parts.get(name, 0.0) + (work * per_unit[name] if work else 0.0)
            parts["calls"] += calls * CALL_WEIGHTS.get(name, 1.0) * call_ms
        return parts

    def layer_ms(self, spec: LayerSpec) -> float:
        """Modelled latency of one layer in milliseconds (network fixed cost not included)."""
        return float(sum(self.layer_breakdown(spec).values()))

    def network_ms(self, arch: "Architecture") -> float:
        """Modelled end-to-end latency of `arch` in milliseconds."""
        from search_spaces import get_space

        specs = get_space(arch.space).layer_specs(arch)
        return float(sum(self.layer_ms(spec) for spec in specs) + self.value("network_fixed"))

    # -- fitting -------------------------------------------------------------------------------
    def features(self, arch: "Architecture") -> tuple[np.ndarray, float]:
        """(feature per fitted parameter, fixed part in ms) of a network: network_ms is
        features · coefficients + fixed, where coefficient = `_COEFFICIENT[name](value)`."""
        from search_spaces import get_space

        fitted = self.fitted_names
        totals = dict.fromkeys(fitted, 0.0)
        fixed = 0.0
        for spec in get_space(arch.space).layer_specs(arch):
            work = priced_work(spec)
            amounts = {
                "mac_rate": sum(w for name, (_, w) in work.items() if name in ("conv", "linear"))
                + work.get("dwconv", (0, 0))[1] / self.value("dwconv_efficiency")
                + work.get("matmul", (0, 0))[1] / self.value("matmul_efficiency"),
                "layernorm_rate": work.get("layernorm", (0, 0))[1],
                "reshape_rate": work.get("reshape", (0, 0))[1],
                "call_overhead": sum(c * CALL_WEIGHTS.get(name, 1.0) for name, (c, _) in work.items()),
                "layer_fixed": 1.0,
            }
            for name in fitted:
                if name != "network_fixed":
                    totals[name] += amounts[name]
            fixed += sum(value for part, value in self.layer_breakdown(spec).items() if _owner(part) not in fitted)
        if "network_fixed" in fitted:
            totals["network_fixed"] = 1.0
        else:
            fixed += self.value("network_fixed")
        return np.array([totals[name] for name in fitted]), fixed

    def with_values(self, values: Mapping[str, float]) -> "DeviceModel":
        parameters = dict(self.parameters)
        for name, value in values.items():
            parameters[name] = replace(parameters[name], value=float(value))
        return replace(self, parameters=parameters)

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MODEL_SCHEMA,
            "device": self.device,
            "summary": self.summary,
            "parameters": {name: self.parameters[name].to_dict() for name in PARAMETER_UNITS},
            "calibration_data": [
                {"name": p.name, "space": p.space, "reference": p.reference, "published_ms": p.published_ms}
                for p in self.calibration_data
            ],
            "fit": dict(self.fit),
        }

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: Any, source: str = "device model") -> "DeviceModel":
        if not isinstance(data, Mapping) or data.get("schema") != MODEL_SCHEMA:
            raise ModelError(f"{source}: not a {MODEL_SCHEMA} document")
        try:
            parameters = {
                str(name): Parameter(float(entry["value"]), str(entry["unit"]), bool(entry["fitted"]), str(entry["comment"]))
                for name, entry in data["parameters"].items()
            }
            points = tuple(
                CalibrationPoint(str(p["space"]), str(p["reference"]), float(p["published_ms"]), str(p["name"]))
                for p in data.get("calibration_data", ())
            )
            return cls(str(data["device"]), str(data.get("summary", "")), parameters, points, dict(data.get("fit") or {}))
        except (KeyError, TypeError, AttributeError) as error:
            raise ModelError(f"{source}: malformed ({error.__class__.__name__}: {error})") from None
        except ModelError as error:
            raise ModelError(f"{source}: {error}") from None


def _owner(part: str) -> str | None:
    """The fittable parameter that a part of `layer_breakdown` is proportional to, if any."""
    return {
        "conv": "mac_rate",
        "linear": "mac_rate",
        "dwconv": "mac_rate",
        "matmul": "mac_rate",
        "layernorm": "layernorm_rate",
        "reshape": "reshape_rate",
        "calls": "call_overhead",
        "layer_fixed": "layer_fixed",
    }.get(part)


def model_path(device: str) -> Path:
    """The shipped model file of `device` (`lut/device_models/<device>.yaml`)."""
    return Path(str(resources.files("lut").joinpath("device_models", f"{device}.yaml")))


def load_model(path: str | Path) -> DeviceModel:
    """Read and check a device model YAML file; `ModelError` with one line otherwise."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ModelError(f"{path}: cannot read ({error.__class__.__name__})") from None
    return DeviceModel.from_dict(data, str(path))


def model_yaml(model: DeviceModel, header: str = "") -> str:
    """The YAML text of a model (parameters in their canonical order), with an optional header."""
    import yaml

    body = yaml.safe_dump(model.to_dict(), sort_keys=False, width=110, allow_unicode=True)
    return header + body


# -- calibration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitResult:
    """A fitted model and how well it reproduces its calibration networks."""

    model: DeviceModel
    predicted_ms: tuple[float, ...]
    published_ms: tuple[float, ...]
    names: tuple[str, ...]

    @property
    def mape_percent(self) -> float:
        predicted, published = np.array(self.predicted_ms), np.array(self.published_ms)
        return float(np.mean(np.abs(predicted - published) / published) * 100)


def network_features(model: DeviceModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features rows, fixed parts, published) of the model's calibration networks."""
    rows, fixed, published = [], [], []
    for point in model.calibration_data:
        features, constant = model.features(point.architecture())
        rows.append(features)
        fixed.append(constant)
        published.append(point.published_ms)
    return np.array(rows), np.array(fixed), np.array(published)


def _solve(features: np.ndarray, fixed: np.ndarray, published: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising Σ log(predicted / published)² (scipy least squares)."""
    from scipy.optimize import least_squares

    scale = features.max(axis=0)
    scale[scale == 0] = 1.0
    scaled = features / scale

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.log(scaled @ theta + fixed) - np.log(published)

    start = np.full(features.shape[1], float(np.median(published)) / features.shape[1])
    result = least_squares(residuals, start, bounds=(0.0, np.inf), method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12)
    # a scaled coefficient at its bound means a term the data does not use: report it as zero
    theta = np.where(result.x <= 1e-6 * float(np.max(result.x)), 0.0, result.x)
    return theta / scale


def _model_from_coefficients(model: DeviceModel, coefficients: np.ndarray) -> DeviceModel:
    values = {}
    for name, coefficient in zip(model.fitted_names, coefficients):
        if coefficient <= 0:
            raise ModelError(f"the fit drove {name} to its bound (term unused); fix it as a prior instead")
        values[name] = _FROM_COEFFICIENT[name](float(coefficient))
    return model.with_values(values)


def fit_parameters(model: DeviceModel, exclude: Sequence[int] = ()) -> FitResult:
    """Fit the model's `fitted` parameters to its calibration data (rows in `exclude` left out)."""
    features, fixed, published = network_features(model)
    return _fit_from_features(model, features, fixed, published, exclude)


def _fit_from_features(
    model: DeviceModel, features: np.ndarray, fixed: np.ndarray, published: np.ndarray, exclude: Sequence[int] = ()
) -> FitResult:
    keep = np.array([i not in set(exclude) for i in range(len(published))])
    if keep.sum() < len(model.fitted_names):
        raise ModelError(f"{keep.sum()} networks cannot identify {len(model.fitted_names)} parameters")
    coefficients = _solve(features[keep], fixed[keep], published[keep])
    fitted = _model_from_coefficients(model, coefficients)
    predicted = features @ coefficients + fixed
    return FitResult(
        fitted, tuple(float(p) for p in predicted), tuple(float(p) for p in published), tuple(p.name for p in model.calibration_data)
    )


@dataclass(frozen=True)
class LeaveOneOut:
    """Leave-one-out predictions: each network predicted by the model fitted without it."""

    names: tuple[str, ...]
    published_ms: tuple[float, ...]
    predicted_ms: tuple[float, ...]

    @property
    def errors_percent(self) -> tuple[float, ...]:
        return tuple((p - m) / m * 100 for p, m in zip(self.predicted_ms, self.published_ms))

    @property
    def mape_percent(self) -> float:
        return float(np.mean(np.abs(self.errors_percent)))

    @property
    def spearman(self) -> float:
        from scipy.stats import spearmanr

        return float(spearmanr(self.predicted_ms, self.published_ms).statistic)


def leave_one_out(model: DeviceModel) -> LeaveOneOut:
    """Refit without each calibration network in turn and predict it."""
    features, fixed, published = network_features(model)
    predicted = []
    for index in range(len(published)):
        result = _fit_from_features(model, features, fixed, published, exclude=(index,))
        predicted.append(result.predicted_ms[index])
    return LeaveOneOut(tuple(p.name for p in model.calibration_data), tuple(float(p) for p in published), tuple(predicted))


# -- tables --------------------------------------------------------------------------------------
def model_table(
    model: DeviceModel,
    space: "SearchSpace",
    resolution: int,
    metadata_fields: Mapping[str, Any],
    num_classes: int | None = None,
    widths: Sequence[Sequence[int]] | None = None,
) -> "LatencyTable":
    """The latency table of every spec of `space` priced by `model`.

    Records hold the modelled layer latency in every statistic (std 0, runs 0: nothing was
    measured); the calibration is the identity scale plus the model's `network_fixed` as the
    intercept, so `table.predict(arch) == model.network_ms(arch)`. The metadata's `build` says
    `source: analytic-model`, the model file's hash, the fit data and its leave-one-out error.
    """
    from search_spaces.enumeration import enumerate_specs

    from lut.table import Calibration, LatencyRecord, LatencyTable, TableMetadata

    num_classes = num_classes or space.default_num_classes
    specs = enumerate_specs(space, resolution, num_classes, widths)
    records = {}
    for key, spec in specs.items():
        ms = model.layer_ms(spec)
        records[key] = LatencyRecord(p50_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, runs=0)
    fit = dict(model.fit)
    calibration = Calibration(
        method="analytic-model",
        scales={},
        intercept_ms=model.value("network_fixed"),
        fitted_on=len(model.calibration_data),
        fit={
            "what": "intercept_ms is the model's per-network fixed cost; records are modelled, not measured",
            "loo_mape_percent": fit.get("loo_mape_percent"),
            "loo_spearman": fit.get("loo_spearman"),
            "fit_mape_percent": fit.get("fit_mape_percent"),
        },
    )
    metadata = TableMetadata(
        space=space.name,
        resolution=resolution,
        num_classes=num_classes,
        build={
            "source": "analytic-model",
            "model": f"lut/device_models/{model.device}.yaml",
            "model_sha256": model.sha256,
            "parameters": {name: {"value": p.value, "unit": p.unit, "fitted": p.fitted} for name, p in model.parameters.items()},
            "fit_data": [
                {"name": p.name, "space": p.space, "reference": p.reference, "published_ms": p.published_ms}
                for p in model.calibration_data
            ],
            "fit": fit,
            "specs": len(specs),
            "widths_subset": [list(w) for w in widths] if widths else None,
        },
        **dict(metadata_fields),
    )
    return LatencyTable(metadata, records, calibration, source=f"{model.device}/{space.name} analytic table")
