"""Analytic device models: a layer's (or any network's) latency from its op counts, with the device's
parameters as data.

A device model (`lut/device_models/<device>.yaml`, schema `latnas/device-model@1`) prices the op
classes a trace of the module gives (`search_spaces.tracing.OP_CLASSES`: `layer_cost(spec)` for a
layer of a space, `trace_costs(module, shape)` for any torch module, `lut.onnx_costs` for an ONNX
file), one rate per class:

    ms = Σ_class [calls_class · call_weight_class · call_overhead + work_class / rate_class]  (+ network_fixed)

work is MACs for the compute classes (conv, dwconv, linear, matmul) and elements for the others.
The rates are tied, so that a handful of parameters describe nine classes:

- conv and linear run at `mac_rate`; dwconv at `mac_rate × dwconv_efficiency` and matmul at
  `mac_rate × matmul_efficiency` (depthwise kernels reuse nothing across channels, attention has
  no stationary weights);
- `layout` (permutes, transposes, concatenations, upsampling copies) at its own `layout_rate`
  (published: 4D <-> token changes are expensive on the phone);
- `batchnorm` is folded into the neighbouring convolution by Core ML (free, no call);
  `layernorm` (and LayerNorm-like reductions) at `layernorm_rate`, a few element-wise passes;
- channels-last work (`LayerCost.token_elements`: every LayerNorm, and every element-wise,
  activation or layout op on a token sequence) pays `token_rate` on top: the Neural Engine
  computes in a channels-first 4D layout, and work along the last axis of a (B, N, C) tensor runs
  outside it (Apple's guidance for transformers on the ANE; EfficientFormer V1 §3: LN-Linear and
  3D layouts are slow on the phone, CONV-BN is not). Without this term a fit can only explain the
  token models' latency by LayerNorm alone, which then takes 60% of EdgeViT's time; with it,
  LayerNorm's share is its part of the channels-last work (published: LayerNorm is 10–20% of a
  ViT's latency);
- element-wise ops at `elementwise_rate`, activations at `activation_rate` with call weight 0
  (GELU is fused into the producing op on the Neural Engine: cheap);
- attention cost follows the token count N through the op counts themselves: the score matmuls
  and the softmax grow with N², so strided attention (fewer tokens) is cheaper.

Parameters marked `fitted: true` are fitted by `fit_parameters` (scipy least squares on the log
of predicted/published, coefficients non-negative) to published whole-network latencies
(`calibration_data`): reference architectures of our spaces, and networks outside them whose op
counts the caller traces (MobileNetV2, ResNet50: `experiments/iphone12_model/networks.py`).
Everything here is deterministic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from search_spaces.layers import LayerSpec, layer_cost, total_cost
from search_spaces.tracing import COMPUTE_CLASSES, OP_CLASSES, LayerCost

if TYPE_CHECKING:
    from search_spaces import Architecture, SearchSpace

    from lut.table import LatencyTable

MODEL_SCHEMA = "latnas/device-model@1"
PRICED_CLASSES = OP_CLASSES


def priced_work(cost: LayerCost) -> dict[str, tuple[int, int]]:
    """(calls, work) per op class of a cost: MACs for compute classes, elements otherwise."""
    return {count.op: (count.calls, count.macs if count.op in COMPUTE_CLASSES else count.elements) for count in cost.ops}


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
    """A published whole-network latency: of a reference architecture of one of our spaces
    (`space`, `reference`), or of a network outside them (`network`, whose op counts the fitting
    code traces; `source` says where it is written)."""

    published_ms: float
    name: str
    space: str | None = None
    reference: str | None = None
    network: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if (self.space is None or self.reference is None) == (self.network is None):
            raise ModelError(f"calibration point {self.name!r}: give space and reference, or network")

    def architecture(self) -> "Architecture":
        from search_spaces import get_space

        return get_space(self.space).reference(self.reference)

    def cost(self, networks: Mapping[str, LayerCost] | None = None) -> LayerCost:
        """The op counts of the network: traced from the space's layers, or given in `networks`."""
        if self.network is None:
            from search_spaces import get_space

            arch = self.architecture()
            return total_cost(get_space(arch.space).layer_specs(arch))
        if networks is None or self.network not in networks:
            raise ModelError(f"calibration point {self.name!r} needs the op counts of network {self.network!r} "
                             f"({self.source or 'written outside the spaces'})")
        return networks[self.network]

    def to_dict(self) -> dict[str, Any]:
        keys = ("name", "space", "reference", "network", "source", "published_ms")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


# The parameters every model file must define, with the unit they must be given in.
PARAMETER_UNITS = {
    "mac_rate": "TMAC/s",
    "dwconv_efficiency": "fraction of mac_rate",
    "matmul_efficiency": "fraction of mac_rate",
    "linear_efficiency": "fraction of mac_rate",
    "layernorm_rate": "Gelement/s",
    "token_rate": "Gelement/s",
    "layout_rate": "Gelement/s",
    "elementwise_rate": "Gelement/s",
    "activation_rate": "Gelement/s",
    "call_overhead": "us/call",
    "network_fixed": "ms/network",
}
# Call weight of each priced class (multiplies call_overhead): folded BatchNorms and fused
# activations cost no separate operation.
CALL_WEIGHTS = {"batchnorm": 0.0, "activation": 0.0}
#: the parameters a fit can free: each is (the reciprocal of) one linear coefficient of the latency
FITTABLE = ("mac_rate", "dwconv_efficiency", "matmul_efficiency", "linear_efficiency", "layernorm_rate", "token_rate",
            "layout_rate", "call_overhead", "network_fixed")
#: the compute classes priced at a fraction of `mac_rate`, and that fraction's parameter
EFFICIENCIES = {"dwconv": "dwconv_efficiency", "matmul": "matmul_efficiency", "linear": "linear_efficiency"}


class ModelError(ValueError):
    """A device model file that cannot be used; one-line message."""


@dataclass(frozen=True)
class DeviceModel:
    """An analytic device model. Contract: `cost_ms(cost)` ≥ 0 and deterministic, linear in the
    op counts (so a network's price is the sum of its layers' plus `network_fixed`);
    `network_ms(arch)` prices an architecture of a space, `module_ms(cost)` any network from its op
    counts; `with_values` returns a new model; `to_dict`/`from_dict` round-trip the YAML."""

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
            if parameter.fitted and name not in FITTABLE:
                raise ModelError(f"{self.device}: {name} cannot be fitted (not one linear coefficient of the latency)")
        for name in (n for n in PARAMETER_UNITS if "rate" in n or "efficiency" in n):
            if self.parameters[name].value <= 0:
                raise ModelError(f"{self.device}: {name} must be positive")
        for name in EFFICIENCIES.values():
            if self.parameters[name].fitted and not self.parameters["mac_rate"].fitted:
                raise ModelError(f"{self.device}: {name} is fitted relative to mac_rate; fit both")

    def value(self, name: str) -> float:
        return self.parameters[name].value

    @property
    def fitted_names(self) -> tuple[str, ...]:
        return tuple(name for name in FITTABLE if self.parameters[name].fitted)

    # -- pricing -------------------------------------------------------------------------------
    def class_ms_per_unit(self) -> dict[str, float]:
        """Milliseconds per unit of work (MAC or element) of each priced class."""
        mac_ms = 1.0 / (self.value("mac_rate") * 1e9)

        def per_element(name: str) -> float:
            return 1.0 / (self.value(name) * 1e6)

        return {
            "conv": mac_ms,
            "linear": mac_ms / self.value("linear_efficiency"),
            "dwconv": mac_ms / self.value("dwconv_efficiency"),
            "matmul": mac_ms / self.value("matmul_efficiency"),
            "batchnorm": 0.0,
            "layernorm": per_element("layernorm_rate"),
            "layout": per_element("layout_rate"),
            "elementwise": per_element("elementwise_rate"),
            "activation": per_element("activation_rate"),
        }

    def breakdown(self, cost: LayerCost) -> dict[str, float]:
        """Milliseconds of a layer or network (no network fixed cost) per op class, plus "calls"."""
        per_unit = self.class_ms_per_unit()
        call_ms = self.value("call_overhead") * 1e-3
        parts = {"calls": 0.0, "channels_last": cost.token_elements / (self.value("token_rate") * 1e6)}
        for name, (calls, work) in priced_work(cost).items():
            parts[name] = parts.get(name, 0.0) + work * per_unit[name]
            parts["calls"] += calls * CALL_WEIGHTS.get(name, 1.0) * call_ms
        return parts

    def cost_ms(self, cost: LayerCost) -> float:
        """Modelled milliseconds of a layer's or a network's op counts, without the network fixed cost."""
        return float(sum(self.breakdown(cost).values()))

    def layer_ms(self, spec: LayerSpec) -> float:
        """Modelled latency of one layer in milliseconds (network fixed cost not included)."""
        return self.cost_ms(layer_cost(spec))

    def module_ms(self, cost: LayerCost) -> float:
        """Modelled end-to-end latency of a whole network given its op counts (from a trace of the
        module or from its ONNX graph)."""
        return self.cost_ms(cost) + self.value("network_fixed")

    def network_ms(self, arch: "Architecture") -> float:
        """Modelled end-to-end latency of `arch` in milliseconds."""
        from search_spaces import get_space

        specs = get_space(arch.space).layer_specs(arch)
        return float(sum(self.layer_ms(spec) for spec in specs) + self.value("network_fixed"))

    # -- fitting -------------------------------------------------------------------------------
    def features(self, cost: LayerCost) -> tuple[np.ndarray, float]:
        """(feature per fitted parameter, fixed part in ms) of a network's op counts: the latency
        is features · coefficients + fixed, where each fitted parameter is one coefficient (a
        fitted efficiency is the coefficient of its class's MACs, `mac_rate`'s over it)."""
        work = priced_work(cost)
        fitted = self.fitted_names
        amounts = {
            "mac_rate": work.get("conv", (0, 0))[1] + sum(
                work.get(op, (0, 0))[1] / self.value(name) for op, name in EFFICIENCIES.items() if name not in fitted),
            **{name: work.get(op, (0, 0))[1] for op, name in EFFICIENCIES.items()},
            "layernorm_rate": work.get("layernorm", (0, 0))[1],
            "token_rate": cost.token_elements,
            "layout_rate": work.get("layout", (0, 0))[1],
            "call_overhead": sum(c * CALL_WEIGHTS.get(name, 1.0) for name, (c, _) in work.items()),
            "network_fixed": 1.0,
        }
        owners = {"conv": "mac_rate", "layernorm": "layernorm_rate", "layout": "layout_rate", "calls": "call_overhead",
                  "channels_last": "token_rate",
                  **{op: name if name in fitted else "mac_rate" for op, name in EFFICIENCIES.items()}}
        fixed = sum(ms for part, ms in self.breakdown(cost).items() if owners.get(part) not in fitted)
        if "network_fixed" not in fitted:
            fixed += self.value("network_fixed")
        return np.array([amounts[name] for name in fitted]), fixed

    def with_coefficients(self, coefficients: Mapping[str, float]) -> "DeviceModel":
        """The model whose fitted parameters are the given linear coefficients (ms per MAC for
        `mac_rate` and each fitted efficiency's class, ms per element for the rates, ms per call,
        ms per network)."""
        values: dict[str, float] = {}
        for name, coefficient in coefficients.items():
            if coefficient <= 0:
                raise ModelError(f"the fit drove {name} to its bound (term unused); fix it as a prior instead")
            if name == "mac_rate":
                values[name] = 1.0 / (coefficient * 1e9)
            elif name in ("layernorm_rate", "token_rate", "layout_rate"):
                values[name] = 1.0 / (coefficient * 1e6)
            elif name == "call_overhead":
                values[name] = coefficient * 1e3
            elif name == "network_fixed":
                values[name] = coefficient
        mac_coefficient = coefficients.get("mac_rate", 1.0 / (self.value("mac_rate") * 1e9))
        for name in EFFICIENCIES.values():
            if name in coefficients:
                values[name] = mac_coefficient / coefficients[name]
        return self.with_values(values)

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
            "calibration_data": [point.to_dict() for point in self.calibration_data],
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
                CalibrationPoint(float(p["published_ms"]), str(p["name"]), p.get("space"), p.get("reference"),
                                 p.get("network"), p.get("source"))
                for p in data.get("calibration_data", ())
            )
            return cls(str(data["device"]), str(data.get("summary", "")), parameters, points, dict(data.get("fit") or {}))
        except ModelError as error:
            raise ModelError(f"{source}: {error}") from None
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as error:
            raise ModelError(f"{source}: malformed ({error.__class__.__name__}: {str(error)[:100]})") from None


def model_path(device: str) -> Path:
    """The shipped model file of `device` (`lut/device_models/<device>.yaml`)."""
    return Path(str(resources.files("lut").joinpath("device_models", f"{device}.yaml")))


#: a device model file is a page of YAML; 1 MiB is far beyond any
MAX_MODEL_BYTES = 1 << 20


def load_model(path: str | Path) -> DeviceModel:
    """Read and check a device model YAML file (a regular file of at most `MAX_MODEL_BYTES`, safe
    YAML of bounded nesting); `ModelError` with one line otherwise."""
    from search_spaces.files import FileError, parse_yaml_document, read_input_text

    path = Path(path)
    try:
        data = parse_yaml_document(read_input_text(path, "", MAX_MODEL_BYTES), str(path))
    except FileError as error:
        raise ModelError(str(error)) from None
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


def network_features(model: DeviceModel, costs: Sequence[LayerCost]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature rows, fixed parts, published) of the model's calibration networks, whose op
    counts `costs` gives in `calibration_data` order."""
    if len(costs) != len(model.calibration_data):
        raise ModelError(f"{len(costs)} costs for {len(model.calibration_data)} calibration networks")
    rows, fixed = zip(*(model.features(cost) for cost in costs))
    return np.array(rows), np.array(fixed), np.array([p.published_ms for p in model.calibration_data])


def calibration_costs(model: DeviceModel, networks: Mapping[str, LayerCost] | None = None) -> list[LayerCost]:
    """The op counts of every calibration network (`CalibrationPoint.cost`)."""
    return [point.cost(networks) for point in model.calibration_data]


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


def fit_parameters(model: DeviceModel, costs: Sequence[LayerCost], exclude: Sequence[int] = ()) -> FitResult:
    """Fit the model's `fitted` parameters to its calibration data (`costs`: each network's op
    counts, in order; rows in `exclude` left out)."""
    features, fixed, published = network_features(model, costs)
    return _fit_from_features(model, features, fixed, published, exclude)


def _fit_from_features(
    model: DeviceModel, features: np.ndarray, fixed: np.ndarray, published: np.ndarray, exclude: Sequence[int] = ()
) -> FitResult:
    keep = np.array([i not in set(exclude) for i in range(len(published))])
    if keep.sum() < len(model.fitted_names):
        raise ModelError(f"{keep.sum()} networks cannot identify {len(model.fitted_names)} parameters")
    coefficients = _solve(features[keep], fixed[keep], published[keep])
    fitted = model.with_coefficients(dict(zip(model.fitted_names, (float(c) for c in coefficients))))
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
    def max_error_percent(self) -> float:
        return float(np.max(np.abs(self.errors_percent)))

    @property
    def spearman(self) -> float:
        from scipy.stats import spearmanr

        return float(spearmanr(self.predicted_ms, self.published_ms).statistic)


def leave_one_out(model: DeviceModel, costs: Sequence[LayerCost]) -> LeaveOneOut:
    """Refit without each calibration network in turn and predict it."""
    features, fixed, published = network_features(model, costs)
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
            "fit_data": [point.to_dict() for point in model.calibration_data],
            "fit": fit,
            "specs": len(specs),
            "widths_subset": [list(w) for w in widths] if widths else None,
        },
        **dict(metadata_fields),
    )
    return LatencyTable(metadata, records, calibration, source=f"{model.device}/{space.name} analytic table")
