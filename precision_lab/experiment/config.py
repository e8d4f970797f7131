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

Layouts (see :mod:`precision_lab.implementations.layouts`): ``layout`` ("contiguous" by
default, "transposed" or "strided"), ``pad_vocab_to`` (a positive integer: the vocabulary
padded to a multiple of it; none by default) and ``pad_value`` ("-inf" by default, "masked" or
a finite number; only with ``pad_vocab_to``) decide how every implementation receives the
logits; each may be a list (a sweep axis).  The reference is always the loss of the real
(B, V) logits, so a finite ``pad_value`` shows as an error: the kernel computes the loss of the
padded problem.  Not with class weights or probability targets (they have V entries).

The ``linear`` generator gives hidden states and a classifier weight instead of logits: its
implementations are the fused linear cross-entropy keys (``"fused_linear(chunk=4096)"``,
``"linear_torch"``; "all" is both defaults), reduction "none", quantity "loss", no ``[loss]``
table and no layout keys; the truth is the loss of the exact product logits.

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
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, ValidationError

from precision_lab.experiment.errors import ConfigError
from precision_lab.experiment.inputs import (
    GENERATORS,
    Batch,
    ConfidentInputs,
    FileInputs,
    FixedInputs,
    InputBatch,
    Int,
    LargeInputs,
    LinearInputs,
    NormalInputs,
    Num,
    StrictModel,
    TorchRandInputs,
    UniformInputs,
    apply_loss_inputs,
)
from precision_lab.implementations import REGISTRY, get_implementation
from precision_lab.implementations.layouts import LAYOUTS
from precision_lab.implementations.registry import default_keys
from precision_lab.implementations.zoo import LINEAR_IMPLEMENTATIONS, resolve_linear
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
          TorchRandInputs, FileInputs, LinearInputs],
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
    layout: Union[str, list[str]] = "contiguous"
    pad_vocab_to: Union[Int, None] = None
    pad_value: Union[str, float, int, list[Union[str, float, int]]] = "-inf"

    #: The layout keys, in sweep-axis order (after the [loss] numbers).
    LAYOUT_KEYS: ClassVar[tuple[str, ...]] = ("layout", "pad_vocab_to", "pad_value")


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
    lin = takes_linear(cfg)
    if cfg.implementations == "all":
        return list(LINEAR_IMPLEMENTATIONS) if lin else default_keys()
    return list(dict.fromkeys(_canonical(k, lin) for k in cfg.implementations))


def takes_linear(cfg: ExperimentConfig) -> bool:
    """Whether the experiment's implementations take hidden states and weights (the
    ``linear`` generator) rather than logits."""
    return isinstance(cfg.inputs, LinearInputs)


def _canonical(key: str, linear: bool = False) -> str:
    try:
        return resolve_linear(key).key if linear else get_implementation(key).key
    except ValueError:
        return key


def compare_keys(cfg: ExperimentConfig) -> "tuple[str, str, float] | None":
    """The ``[compare]`` pair as canonical implementation keys, with its tolerance."""
    if cfg.compare is None:
        return None
    lin = takes_linear(cfg)
    return _canonical(cfg.compare.a, lin), _canonical(cfg.compare.b, lin), cfg.compare.abs_tol


def compare_formats(cfg: ExperimentConfig) -> list[str]:
    if cfg.compare is None:
        return []
    if cfg.compare.formats is None:
        return format_names(cfg)
    return [get_format(f).name for f in cfg.compare.formats]


def _check_device(device: str, path: Path) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` (an index this machine has)."""
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
    for key in implementation_keys(cfg) if not takes_linear(cfg) else []:
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


_LINEAR_ALLOWED = [*LINEAR_IMPLEMENTATIONS, "fused_linear(chunk=..., logits=format|float32, "
                   "acc=..., exp=exp2|exp)"]


def _is_linear_key(key: str) -> bool:
    try:
        resolve_linear(key)
    except ValueError:
        return False
    return True


def _check_linear(cfg: ExperimentConfig, path: Path) -> None:
    """The ``linear`` generator: fused linear keys only, per-row losses of the plain
    cross-entropy, inputs of a 16- or 32-bit format (the exact product needs them)."""
    for key in cfg.implementations if cfg.implementations != "all" else []:
        try:
            resolve_linear(key)
        except ValueError as exc:
            what = (f"{key!r} takes logits; the linear generator gives hidden states and a "
                    "weight" if _is_logits_key(key) else
                    f"unknown implementation {key!r} ({str(exc).split('; allowed')[0]})")
            raise ConfigError(path, "implementations", what, ["all", *_LINEAR_ALLOWED]) from None
    if cfg.reduction != "none":
        raise ConfigError(path, "reduction", f"{cfg.reduction!r}: the linear generator's truth "
                          "is per row (the exact-product reference has no reduction)", ["none"])
    if quantities(cfg) != ["loss"]:
        raise ConfigError(path, "quantity", "the linear generator measures the loss only",
                          ["loss"])
    if cfg.loss is not None:
        raise ConfigError(path, "loss", "the linear generator's truth is the plain "
                          "cross-entropy of the exact product; remove the [loss] table")
    for key in ExperimentConfig.LAYOUT_KEYS:
        if key in cfg.model_fields_set:
            raise ConfigError(path, key, "layouts apply to logits; the linear generator has "
                              "none (remove the key)")
    in_fmts = [cfg.input_format] if cfg.input_format is not None else format_names(cfg)
    for fm in in_fmts:
        if fm is not None and get_format(fm).name not in ("float16", "bfloat16", "float32"):
            key = "input_format" if cfg.input_format is not None else "formats"
            raise ConfigError(path, key, f"{fm!r}: the linear generator rounds hidden states "
                              "and weights to the input format, which must be a 16- or 32-bit "
                              "one (the exact product takes them)", ["float16", "bfloat16",
                                                                     "float32"])


def _is_logits_key(key: str) -> bool:
    try:
        get_implementation(key)
    except Exception:  # noqa: BLE001 - any failure to resolve: not a logits implementation
        return False
    return True


def pad_text(v: "str | float | int") -> str:
    """A ``pad_value`` as the text a sweep point records: "-inf", "masked", or the number's
    repr ("8.0")."""
    return v if isinstance(v, str) else repr(float(v))


def pad_fill(text: str) -> "str | float":
    """The ``pad_value`` argument of :func:`~precision_lab.implementations.layouts.present`
    from a point's recorded text."""
    return text if text in ("-inf", "masked") else float(text)


def _check_layout(cfg: ExperimentConfig, path: Path) -> None:
    """``layout``, ``pad_vocab_to`` and ``pad_value``: known names, positive integers, finite
    numbers; padding not with per-class inputs (V entries)."""
    for v in _as_list(cfg.layout):
        if v not in LAYOUTS:
            raise ConfigError(path, "layout", f"unknown layout {v!r}", LAYOUTS)
    if not _as_list(cfg.layout):
        raise ConfigError(path, "layout", "empty list", LAYOUTS)
    pads = _as_list(cfg.pad_vocab_to) if cfg.pad_vocab_to is not None else []
    if cfg.pad_vocab_to is not None and not pads:
        raise ConfigError(path, "pad_vocab_to", "empty list", "positive integers")
    for n in pads:
        if n < 1:
            raise ConfigError(path, "pad_vocab_to", f"must be a positive integer, got {n}")
    values = _as_list(cfg.pad_value)
    allowed = '"-inf", "masked" or a finite number'
    if not values:
        raise ConfigError(path, "pad_value", "empty list", allowed)
    for v in values:
        if isinstance(v, str) and v not in ("-inf", "masked"):
            raise ConfigError(path, "pad_value", f"invalid value {v!r}", allowed)
        if isinstance(v, (int, float)) and not math.isfinite(v):
            raise ConfigError(path, "pad_value", f"{v} is not finite (write the string \"-inf\" "
                              "for -inf pad columns)", allowed)
    if "pad_value" in cfg.model_fields_set and cfg.pad_vocab_to is None:
        raise ConfigError(path, "pad_value", "fills the padded columns; it needs pad_vocab_to")
    if cfg.pad_vocab_to is not None and cfg.loss is not None:
        lc = cfg.loss
        if lc.weight is not None or lc.weight_spread is not None or \
                lc.targets == "probabilities":
            key = "loss.targets" if lc.targets == "probabilities" else "loss.weight"
            raise ConfigError(path, key, "has one entry per class of the real vocabulary; a "
                              "padded vocabulary (pad_vocab_to) would need them padded too")


def _layout_params(cfg: ExperimentConfig) -> list[tuple[str, Any]]:
    """The layout keys as point parameters: only those away from their defaults (so a
    config without them has the points it always had); pad values as text."""
    out: list[tuple[str, Any]] = []
    if cfg.layout != "contiguous":
        out.append(("layout", cfg.layout))
    if cfg.pad_vocab_to is not None:
        out.append(("pad_vocab_to", cfg.pad_vocab_to))
        pv = cfg.pad_value
        out.append(("pad_value", [pad_text(v) for v in pv] if isinstance(pv, list)
                    else pad_text(pv)))
    return out


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
    if cfg.implementations != "all" and not cfg.implementations:
        raise ConfigError(path, "implementations", "empty list", allowed_impls)
    if takes_linear(cfg):
        _check_linear(cfg, path)
    elif cfg.implementations != "all":
        for key in cfg.implementations:
            if _is_linear_key(key):
                raise ConfigError(path, "implementations", f"{key!r} takes hidden states and a "
                                  "weight, not logits: use it with [inputs] generator = "
                                  '"linear"', allowed_impls)
            try:
                get_implementation(key)
            except Exception as exc:  # noqa: BLE001 - any failure to resolve is a config error
                why = re.split(r"\s*allowed:", str(exc))[0].rstrip("; ")
                if ":" in str(key):  # an import path: what failed matters, not the registry
                    raise ConfigError(path, "implementations", why) from None
                why = f" ({why})" if "(" in str(key) else ""
                raise ConfigError(path, "implementations",
                                  f"unknown implementation {key!r}{why}", allowed_impls) from None
    impls = implementation_keys(cfg)

    if cfg.compare is not None:
        for side in ("a", "b"):
            v = getattr(cfg.compare, side)
            if _canonical(v, takes_linear(cfg)) not in impls:
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
    _check_layout(cfg, path)
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
    return out + _layout_params(cfg)


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



def generate(cfg: ExperimentConfig, point: SweepPoint) -> Batch:
    """All batches of one sweep point (see :mod:`precision_lab.experiment.inputs`)."""
    batch = cfg.inputs.generate(point.params, source_of(cfg).parent)
    if cfg.loss is None or not isinstance(batch, InputBatch):
        return batch
    return apply_loss_inputs(batch, cfg.loss, point.params)
