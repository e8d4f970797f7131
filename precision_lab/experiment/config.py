"""Experiment configuration: a pydantic model, TOML loading with one clear error, sweep expansion.

An experiment is a TOML file (see ``experiments/*.toml``)::

    name = "normal_sweep"                       # results go to results/<name>/
    question = "How does the error grow with the logits' scale?"
    description = "..."                         # optional, shown by the report
    notes = "..."                               # optional, shown by the report
    classes = 10                                # C (not for fixed/file inputs)
    batch_size = 10                             # B: rows per batch
    samples = 100                               # number of batches per sweep point
    seed = 0
    formats = ["float16", "bfloat16", "float32", "float64"]   # or "all"
    implementations = "all"                     # or registry keys / "pkg.module:func"
    reduction = "none"                          # "none" | "mean" | "sum"

    [inputs]
    generator = "normal"
    scale = [1.0, 10.0, 100.0]                  # a list: one sweep point per value

    [compare]                                   # optional pairwise check, like the seed's
    a = "torch"
    b = "torch_manual"
    abs_tol = 1e-15

Generators (``[inputs] generator = ...``) and their parameters: see
:mod:`precision_lab.experiment.inputs`.

``device`` ("cpu" by default, "cuda" or "cuda:N"): where the torch implementations run (the
others, numpy code, always run on the CPU); refused when this machine has no such device.

``nonfinite`` ("refuse" by default, or "allow"): whether NaN and infinite logits in ``fixed``
or ``file`` data are measured (their losses follow the reference's non-finite rules) or refused.

Sweeps: every numeric parameter -- ``classes``, ``batch_size``, ``samples``, ``seed`` and the
generator's numbers -- may be a list; lists expand into the cartesian product, one sweep
point per combination, the first listed axis varying slowest.  Each point's parameters are
recorded in the manifest, and the swept ones as columns of every table.

Determinism and formats: see :mod:`precision_lab.experiment.inputs`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, ValidationError

from precision_lab.experiment.errors import ConfigError
from precision_lab.experiment.inputs import (
    GENERATORS,
    ConfidentInputs,
    FileInputs,
    FixedInputs,
    InputBatch,
    Int,
    LargeInputs,
    NormalInputs,
    Num,
    StrictModel,
    TorchRandInputs,
    UniformInputs,
    apply_loss_inputs,
)
from precision_lab.implementations import REGISTRY, get_implementation
from precision_lab.implementations.registry import default_keys
from precision_lab.numerics.formats import FORMAT_NAMES, get_format

__all__ = [
    "ConfigError",
    "generate",
    "ExperimentConfig",
    "CompareConfig",
    "GENERATORS",
    "SweepPoint",
    "load_config",
    "parse_config",
    "quantities",
    "LossConfig",
    "raw_data",
    "resolved_config",
    "config_hash",
    "sweep_points",
    "sweep_axes",
    "bundled_experiments_dir",
]

#: Top-level numeric keys that may be swept, in axis order.
TOP_NUMERIC = ("classes", "batch_size", "samples", "seed")

Inputs = Annotated[
    Union[UniformInputs, NormalInputs, ConfidentInputs, LargeInputs, FixedInputs,
          TorchRandInputs, FileInputs],
    Field(discriminator="generator"),
]


class CompareConfig(StrictModel):
    """A pairwise check like the seed's: share of |a - b| < abs_tol, per format."""

    a: str
    b: str
    abs_tol: float = 1e-15
    formats: Union[list[str], None] = None  # default: every format of the experiment


class LossConfig(StrictModel):
    """The ``[loss]`` table: nn.CrossEntropyLoss's keywords and the LLM extensions, as the
    experiment applies them (every number may be a list: a sweep axis).

    * ``targets``: "index" (class indices) or "probabilities" (each row's target distribution
      softmax(N(0, 1) / ``temperature``), drawn per row);
    * ``weight``: fixed per-class weights (one per class), or ``weight_spread`` s: weights drawn
      log-uniformly from [1/s, s] per class and sweep point;
    * ``ignore_index`` and ``ignore_fraction``: that share of the targets (drawn per row)
      replaced by ``ignore_index`` (padding);
    * ``label_smoothing``, ``z_loss`` (PaLM: z_loss * lse(x)^2 per row), ``softcap`` (Gemma 2:
      x -> softcap * tanh(x / softcap)).

    Weights and probabilities are rounded once to the logits' format, like the logits; they
    come from their own random stream, so the logits and targets are those of the same config
    without the table."""

    targets: Literal["index", "probabilities"] = "index"
    weight: Union[list[float], None] = None
    weight_spread: Union[Num, None] = None
    ignore_index: int = -100
    ignore_fraction: Num = 0.0
    label_smoothing: Num = 0.0
    z_loss: Num = 0.0
    softcap: Union[Num, None] = None
    temperature: Num = 1.0

    #: The numbers that may be swept, in axis order.
    NUMERIC: ClassVar[tuple[str, ...]] = ("weight_spread", "ignore_fraction", "label_smoothing",
                                          "z_loss", "softcap", "temperature")

    def numeric_params(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.NUMERIC if getattr(self, k) is not None]


Quantity = Literal["loss", "grad"]


class ExperimentConfig(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]
    question: str
    description: str = ""
    notes: str = ""
    inputs: Inputs
    classes: Union[Int, None] = None
    batch_size: Union[Int, None] = None
    samples: Union[Int, None] = None
    seed: Int = 0
    formats: Union[Literal["all"], list[str]] = "all"
    implementations: Union[Literal["all"], list[str]] = "all"
    reduction: Literal["none", "mean", "sum"] = "none"
    nonfinite: Literal["refuse", "allow"] = "refuse"
    device: str = "cpu"
    input_format: Union[str, None] = None
    quantity: Union[Quantity, list[Quantity]] = "loss"
    loss: Union[LossConfig, None] = None
    compare: Union[CompareConfig, None] = None


# --------------------------------------------------------------------------- error messages

_TYPE_WORDS = {Num: "a number or a list of numbers", Int: "an integer or a list of integers"}


def _describe(annotation: Any) -> str:
    if annotation == Union[Int, None]:
        return _TYPE_WORDS[Int]
    if annotation in _TYPE_WORDS:
        return _TYPE_WORDS[annotation]
    text = {str: "a string", float: "a number", int: "an integer", bool: "true or false"}
    if annotation in text:
        return text[annotation]
    s = str(annotation).replace("typing.", "")
    if "Literal" in s:
        return "one of the allowed values"
    return s


def _model_for(loc: tuple) -> tuple[type[StrictModel], list[str], str | None]:
    """Walk an error location: (model at the deepest named section, dotted key parts, field)."""
    model: type[StrictModel] = ExperimentConfig
    keys: list[str] = []
    i = 0
    while i < len(loc):
        part = loc[i]
        if not isinstance(part, str):
            keys[-1] = f"{keys[-1]}[{part}]" if keys else str(part)
            i += 1
            continue
        if part == "inputs" and model is ExperimentConfig:
            keys.append(part)
            if i + 1 < len(loc) and loc[i + 1] in GENERATORS:
                model = GENERATORS[loc[i + 1]]
                i += 2
                if i >= len(loc):
                    return model, keys, None
                continue
            return model, keys, "inputs"
        if part == "compare" and model is ExperimentConfig and i + 1 < len(loc):
            keys.append(part)
            model = CompareConfig
            i += 1
            if i + 1 < len(loc) and loc[i] == "CompareConfig":
                i += 1
            continue
        if part in model.model_fields:
            keys.append(part)
            return model, keys, part
        keys.append(part)
        return model, keys, None
    return model, keys, None


def _from_validation_error(file: Path | str, err: ValidationError) -> ConfigError:
    seen: dict[str, ConfigError] = {}  # by dotted key; "" for the whole file
    for e in err.errors():
        loc, etype = tuple(e["loc"]), e["type"]
        model, keys, fld = _model_for(loc)
        key = ".".join(keys) if keys else ""
        if key in seen:
            continue
        if etype == "extra_forbidden":
            section = ".".join(keys[:-1])
            where = f" in [{section}]" if section else ""
            seen[key] = ConfigError(file, key, f"unknown key{where}",
                                    [k for k in model.model_fields])
        elif etype == "missing":
            seen[key] = ConfigError(file, key, "required key is missing")
        elif etype in ("union_tag_invalid", "union_tag_not_found"):
            got = (e.get("ctx") or {}).get("tag")
            prob = (f"unknown generator {got!r}" if got is not None
                    else "[inputs] needs a 'generator' key")
            seen["inputs.generator"] = ConfigError(file, "inputs.generator", prob, list(GENERATORS))
        elif etype == "literal_error" and fld in ("formats", "implementations"):
            names = FORMAT_NAMES if fld == "formats" else _registry_keys()
            seen[key] = ConfigError(file, key, f"invalid value {e.get('input')!r}; give \"all\" "
                                    "or a list of names", ["all", *names])
        elif etype == "literal_error":
            got = e.get("input")
            exp = (e.get("ctx") or {}).get("expected", "")
            seen[key] = ConfigError(file, key, f"invalid value {got!r}", exp)
        elif etype == "string_pattern_mismatch":
            seen[key] = ConfigError(file, key, f"invalid value {e.get('input')!r}",
                                    "letters, digits, '_', '.', '-' (used as a folder name)")
        else:
            ann = model.model_fields[fld].annotation if fld in model.model_fields else None
            want = _describe(ann) if ann is not None else e["msg"]
            if fld in ("formats", "implementations"):
                want = '"all" or a list of names'
            seen[key] = ConfigError(file, key, f"wrong type {type(e.get('input')).__name__} "
                                    f"({e.get('input')!r}); expected {want}")
    errs = list(seen.values())
    if len(errs) == 1:
        return errs[0]
    first = errs[0]
    first.problem += "".join(f"\n  also: {x}" for x in errs[1:])
    return first


def _registry_keys() -> list[str]:
    return list(REGISTRY)


# --------------------------------------------------------------------------- loading

def load_config(path: "str | Path") -> ExperimentConfig:
    """Read, parse and validate one TOML config; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read the config file ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"TOML syntax error: {exc}") from None
    return parse_config(data, path)


def parse_config(data: dict, path: "str | Path" = "<config>") -> ExperimentConfig:
    """Validate a config dict (as TOML gives it); ``path`` names the file in errors and
    anchors relative data paths."""
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(path, exc) from None
    object.__setattr__(cfg, "_source", Path(path))
    object.__setattr__(cfg, "_data", data)
    _check(cfg, Path(path))
    return cfg


def source_of(cfg: ExperimentConfig) -> Path:
    """The file a config was read from (relative data paths are anchored there)."""
    return getattr(cfg, "_source", Path("<config>"))


def raw_data(cfg: ExperimentConfig) -> dict:
    """The config as parsed from TOML, before validation (to rebuild it in another process)."""
    return dict(getattr(cfg, "_data", cfg.model_dump(mode="json")))


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, list) else [v]


def format_names(cfg: ExperimentConfig) -> list[str]:
    return list(FORMAT_NAMES) if cfg.formats == "all" else [get_format(f).name for f in cfg.formats]


def implementation_keys(cfg: ExperimentConfig) -> list[str]:
    """The experiment's implementation keys, canonical (parameters in declaration order,
    defaults left out); "all" is every registered key whose optional extra is installed."""
    if cfg.implementations == "all":
        return default_keys()
    return list(dict.fromkeys(_canonical(k) for k in cfg.implementations))


def _canonical(key: str) -> str:
    try:
        return get_implementation(key).key
    except ValueError:
        return key


def compare_keys(cfg: ExperimentConfig) -> "tuple[str, str, float] | None":
    """The ``[compare]`` pair as canonical implementation keys, with its tolerance."""
    if cfg.compare is None:
        return None
    return _canonical(cfg.compare.a), _canonical(cfg.compare.b), cfg.compare.abs_tol


def compare_formats(cfg: ExperimentConfig) -> list[str]:
    if cfg.compare is None:
        return []
    if cfg.compare.formats is None:
        return format_names(cfg)
    return [get_format(f).name for f in cfg.compare.formats]


def _check_device(device: str, path: Path) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` (an index this machine has)."""
    import re

    if device == "cpu":
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(path, "device", f"unknown device {device!r}", ["cpu", "cuda", "cuda:N"])
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(path, "device", f"{device!r} is not available here (torch "
                          f"{torch.__version__} sees no CUDA device); use \"cpu\" or run on a "
                          "machine with a GPU")
    n = torch.cuda.device_count()
    if ":" in device and int(device.split(":")[1]) >= n:
        raise ConfigError(path, "device", f"{device!r}: this machine has {n} CUDA device(s)",
                          [f"cuda:{i}" for i in range(n)])


def _check_loss(cfg: ExperimentConfig, path: Path) -> None:
    """The [loss] table's ranges, and that every implementation declares what it is asked."""
    needed: dict[str, str] = {}
    if cfg.loss is not None:
        lc = cfg.loss
        ranges = {"ignore_fraction": (0.0, 1.0, "in [0, 1]"),
                  "label_smoothing": (0.0, 1.0, "in [0, 1]"),
                  "z_loss": (0.0, math.inf, ">= 0"), "softcap": (0.0, math.inf, "> 0"),
                  "temperature": (0.0, math.inf, "> 0"), "weight_spread": (1.0, math.inf, ">= 1")}
        for key, (lo, hi, words) in ranges.items():
            for v in _as_list(getattr(lc, key)) if getattr(lc, key) is not None else []:
                strict = key in ("softcap", "temperature")
                if not math.isfinite(v) or v < lo or v > hi or (strict and v <= lo):
                    raise ConfigError(path, f"loss.{key}", f"must be {words}, got {v}")
        if lc.weight is not None and lc.weight_spread is not None:
            raise ConfigError(path, "loss.weight", "give weight or weight_spread, not both")
        if lc.weight is not None:
            if any(not (math.isfinite(w) and w >= 0) for w in lc.weight):
                raise ConfigError(path, "loss.weight", "weights must be finite and >= 0")
            for c in _as_list(cfg.classes) if cfg.classes is not None else []:
                if len(lc.weight) != c:
                    raise ConfigError(path, "loss.weight", f"{len(lc.weight)} weights for "
                                      f"{c} classes; give one weight per class")
        if lc.weight is not None or lc.weight_spread is not None:
            needed["weight"] = "loss.weight"
        if any(v > 0 for v in _as_list(lc.ignore_fraction)):
            needed["ignore_index"] = "loss.ignore_fraction"
            if lc.targets == "probabilities":
                raise ConfigError(path, "loss.ignore_fraction", "probability targets have no "
                                  "ignore_index (torch refuses it)")
        if any(v > 0 for v in _as_list(lc.label_smoothing)):
            needed["label_smoothing"] = "loss.label_smoothing"
        if any(v > 0 for v in _as_list(lc.z_loss)):
            needed["z_loss"] = "loss.z_loss"
        if lc.softcap is not None:
            needed["softcap"] = "loss.softcap"
        if lc.targets == "probabilities":
            needed["prob_targets"] = "loss.targets"
    for key in implementation_keys(cfg):
        caps = get_implementation(key).capabilities
        for kw, where in needed.items():
            if kw not in caps.keywords:
                able = [k for k in REGISTRY if kw in REGISTRY[k].capabilities.keywords]
                raise ConfigError(path, "implementations", f"{key!r} does not support {kw} "
                                  f"(asked by {where})", able)
        if "grad" in quantities(cfg) and not caps.gradient:
            able = [k for k in REGISTRY if REGISTRY[k].capabilities.gradient]
            raise ConfigError(path, "implementations", f"{key!r} has no gradient (asked by "
                              "quantity)", able)
    if cfg.input_format is not None:
        try:
            get_format(cfg.input_format)
        except ValueError:
            raise ConfigError(path, "input_format", f"unknown format {cfg.input_format!r}",
                              FORMAT_NAMES) from None


def _check(cfg: ExperimentConfig, path: Path) -> None:
    """Checks beyond types: names exist, numbers in range, data files readable and shaped."""
    _check_device(cfg.device, path)
    fmts = cfg.formats if cfg.formats != "all" else []
    if cfg.formats != "all" and not cfg.formats:
        raise ConfigError(path, "formats", "empty list", ["all", *FORMAT_NAMES])
    for f in fmts:
        try:
            get_format(f)
        except ValueError:
            raise ConfigError(path, "formats", f"unknown format {f!r}",
                              ["all", *FORMAT_NAMES]) from None
    if len(set(format_names(cfg))) != len(format_names(cfg)):
        raise ConfigError(path, "formats", "a format is listed twice")

    allowed_impls = ["all", *REGISTRY, "or 'package.module:function'"]
    if cfg.implementations != "all":
        if not cfg.implementations:
            raise ConfigError(path, "implementations", "empty list", allowed_impls)
        for key in cfg.implementations:
            try:
                get_implementation(key)
            except Exception as exc:  # noqa: BLE001 - any failure to resolve is a config error
                why = (f" ({str(exc).split('; allowed')[0]})" if ":" in str(key) or "(" in str(key)
                       else "")
                raise ConfigError(path, "implementations",
                                  f"unknown implementation {key!r}{why}", allowed_impls) from None
    impls = implementation_keys(cfg)

    if cfg.compare is not None:
        for side in ("a", "b"):
            v = getattr(cfg.compare, side)
            if _canonical(v) not in impls:
                raise ConfigError(path, f"compare.{side}",
                                  f"{v!r} is not one of this experiment's implementations", impls)
        if not (cfg.compare.abs_tol >= 0 and math.isfinite(cfg.compare.abs_tol)):
            raise ConfigError(path, "compare.abs_tol", "must be a finite number >= 0")
        for f in cfg.compare.formats or []:
            try:
                name = get_format(f).name
            except ValueError:
                raise ConfigError(path, "compare.formats", f"unknown format {f!r}",
                                  format_names(cfg)) from None
            if name not in format_names(cfg):
                raise ConfigError(path, "compare.formats", f"{f!r} is not run by this experiment",
                                  format_names(cfg))

    gen = cfg.inputs
    name = gen.generator
    for key in TOP_NUMERIC[:3]:
        val = getattr(cfg, key)
        if val is None:
            if key == "classes" and "classes" not in gen.TOP_KEYS_UNUSED:
                raise ConfigError(path, "classes", f"required for generator {name!r}")
            continue
        if key in gen.TOP_KEYS_UNUSED:
            raise ConfigError(path, key, f"not used with generator {name!r} (the data decide "
                              "it); remove the key")
        vals = _as_list(val)
        if not vals:
            raise ConfigError(path, key, "empty list")
        for v in vals:
            if v < 1:
                raise ConfigError(path, key, f"must be >= 1, got {v}")
    for v in _as_list(cfg.seed):
        if v < 0:
            raise ConfigError(path, "seed", f"must be >= 0, got {v}")
    gen.check(path, cfg.nonfinite)
    _check_loss(cfg, path)
    if isinstance(gen, FileInputs):
        gen.check_data(path, cfg.nonfinite, cfg.batch_size)


# --------------------------------------------------------------------------- sweeps

@dataclass(frozen=True)
class SweepPoint:
    """One combination of parameter values."""

    index: int
    params: dict[str, Any] = field(default_factory=dict)  # every numeric parameter, scalar
    swept: dict[str, Any] = field(default_factory=dict)   # the swept ones only


def _numeric_params(cfg: ExperimentConfig) -> list[tuple[str, Any]]:
    out = [(k, getattr(cfg, k)) for k in TOP_NUMERIC if getattr(cfg, k) is not None]
    out += cfg.inputs.numeric_params()
    if cfg.loss is not None:
        out += cfg.loss.numeric_params()
    return out


def quantities(cfg: ExperimentConfig) -> list[str]:
    """What is measured: ["loss"], ["grad"] or ["loss", "grad"] (in that order)."""
    q = cfg.quantity if isinstance(cfg.quantity, list) else [cfg.quantity]
    return [x for x in ("loss", "grad") if x in q]


def sweep_axes(cfg: ExperimentConfig) -> list[str]:
    """Names of the swept parameters (those given as lists), in axis order."""
    return [k for k, v in _numeric_params(cfg) if isinstance(v, list)]


def sweep_points(cfg: ExperimentConfig) -> list[SweepPoint]:
    """The cartesian product of the list-valued parameters (first axis slowest)."""
    params = _numeric_params(cfg)
    names = [k for k, _ in params]
    values = [_as_list(v) for _, v in params]
    axes = set(sweep_axes(cfg))
    pts = []
    for i, combo in enumerate(itertools.product(*values)):
        p = dict(zip(names, combo))
        pts.append(SweepPoint(i, p, {k: v for k, v in p.items() if k in axes}))
    return pts


# --------------------------------------------------------------------------- resolution, hash

def resolved_config(cfg: ExperimentConfig) -> dict:
    """The config with defaults filled in and names canonical ("all" expanded), as JSON data.

    Data files of the ``file`` generator are recorded with their sha256, so a changed file
    changes the config hash."""
    d = cfg.model_dump(mode="json")
    d["formats"] = format_names(cfg)
    d["implementations"] = implementation_keys(cfg)
    if cfg.compare is not None:
        d["compare"]["formats"] = compare_formats(cfg)
        d["compare"]["a"], d["compare"]["b"], _ = compare_keys(cfg) or ("", "", 0.0)
    d["inputs"].update(cfg.inputs.resolved(source_of(cfg).parent))
    d["sweep_axes"] = sweep_axes(cfg)
    return d


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(cfg: ExperimentConfig) -> str:
    """sha256 of the canonical JSON of the resolved config."""
    return hashlib.sha256(canonical_json(resolved_config(cfg)).encode()).hexdigest()


def bundled_experiments_dir() -> Path | None:
    """The experiments/ folder: beside the package (a checkout) or in the current directory."""
    here = Path(__file__).resolve().parent.parent / "experiments"
    for cand in (here, Path.cwd() / "experiments"):
        if cand.is_dir():
            return cand
    return None



def generate(cfg: ExperimentConfig, point: SweepPoint) -> InputBatch:
    """All batches of one sweep point (see :mod:`precision_lab.experiment.inputs`)."""
    batch = cfg.inputs.generate(point.params, source_of(cfg).parent)
    return batch if cfg.loss is None else apply_loss_inputs(batch, cfg.loss, point.params)
