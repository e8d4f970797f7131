"""Input generators: each one a config model that validates and generates itself.

A generator is the ``[inputs]`` table of a config (``generator = "<name>"``); its class declares
its parameters (pydantic fields; numeric ones may be lists, which become sweep axes), checks
what types cannot (:meth:`Generator.check`), and produces the logits and targets of one sweep
point (:meth:`Generator.generate`).  Code branches on these classes, never on name strings.

=========================  =================================================================
``uniform``                ``low`` (0.0), ``high`` (1.0): logits uniform in [low, high)
``normal``                 ``mean`` (0.0), ``scale`` (1.0): logits mean + scale * N(0, 1)
``confident``              ``scale`` (1.0), ``margin`` (10.0): logits scale * N(0, 1), then the
                           target's logit set to the row's largest other logit + margin
``large``                  ``format`` ("float16"), ``fraction`` (0.5): logits uniform in
                           [-fraction, fraction) * max_finite(format)
``fixed``                  ``logits`` (one row or a list of rows), ``targets`` (an int or a
                           list): one batch
``torch_rand_protocol``    the seed answer's protocol: a torch generator seeded with ``seed``;
                           per batch ``x = torch.rand(B, C)`` then ``y = torch.randint(0, C,
                           (B,))``, float32
``file``                   ``logits``, ``targets``: ``.npy`` or ``.pt`` files, paths relative
                           to the config file's folder; logits (N, C) cut into batches of
                           ``batch_size`` rows (default: all N rows in one batch) or already
                           batched (S, B, C); targets (N,) or (S, B) integers in [0, C)
``linear``                 ``hidden`` (K, 256), ``scale`` (1.0): no logits but hidden states
                           (S, B, K) ~ N(0, 1) and a classifier weight (C, K) ~ scale *
                           N(0, 1) / sqrt(K) (so the logits' spread is about ``scale``), for
                           the fused linear cross-entropy (:class:`LinearBatch`)
=========================  =================================================================

Targets of the random generators are uniform over the C classes (numpy), drawn after the
logits of the whole sweep point, from ``numpy.random.Generator(PCG64(seed))`` -- a fresh
generator per point, so points that differ only in a scale share their random numbers.
Inputs are generated once per point, in float64 (float32 for the torch protocol; a file's own
dtype widened exactly), and rounded once, correctly, to each format
(:func:`precision_lab.numerics.formats.to_format`).

NaN and infinite logits (``fixed`` and ``file`` data) are refused unless the config says
``nonfinite = "allow"``: the error names the file (or key), the row and the column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict

from precision_lab.experiment.errors import ConfigError
from precision_lab.numerics.formats import FORMAT_NAMES, get_format, to_format

__all__ = ["Num", "Int", "InputBatch", "LinearBatch", "Batch", "Generator", "GENERATORS",
           "apply_loss_inputs",
           "to_format",  # re-exported
           "torch_rand_protocol", "check_finite", "load_array"]

Num = Union[float, list[float]]
Int = Union[int, list[int]]


class StrictModel(BaseModel):
    """Config models: strict types, unknown keys refused, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


@dataclass(frozen=True)
class InputBatch:
    """The inputs of one sweep point: logits (S, B, C) and targets: int64 class indices
    (S, B) or float64 probabilities (S, B, C); with a ``[loss]`` table also per-class
    ``weight`` (C,) float64."""

    logits: np.ndarray
    targets: np.ndarray
    weight: "np.ndarray | None" = None

    @property
    def shape(self) -> tuple[int, int, int]:
        s, b, c = self.logits.shape
        return int(s), int(b), int(c)


@dataclass(frozen=True)
class LinearBatch:
    """The inputs of one sweep point of the ``linear`` generator: hidden states (S, B, K),
    the classifier weight (V, K) shared by every batch, and int64 targets (S, B) in [0, V).
    float64 here; the runner rounds both once to the input format."""

    hidden: np.ndarray
    classifier: np.ndarray
    targets: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        s, b, _ = self.hidden.shape
        return int(s), int(b), int(self.classifier.shape[0])


#: What a generator produces: logits, or hidden states and a classifier weight.
Batch = Union[InputBatch, LinearBatch]


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, list) else [v]


def _require(path: Path, key: str, values: Any, ok: Any, rule: str) -> None:
    """ConfigError for the first of ``values`` (a number or a sweep list) that fails ``ok``:
    "inputs.<key>: must be <rule>, got <value>"."""
    for v in _as_list(values):
        if not ok(v):
            raise ConfigError(path, f"inputs.{key}", f"must be {rule}, got {v}")


def check_finite(logits: np.ndarray, where: str, key: str) -> None:
    """Raise :class:`ConfigError` naming the first NaN or infinite logit (row, column)."""
    bad = ~np.isfinite(np.asarray(logits, dtype=np.float64))
    if bad.any():
        idx = np.argwhere(bad)[0]
        v = float(np.asarray(logits, dtype=np.float64)[tuple(idx)])
        pos = ", ".join(f"{n} {int(i)}" for n, i in
                        zip(("batch", "row", "column")[-len(idx):], idx))
        raise ConfigError(where, key, f"{v} at {pos} ({int(bad.sum())} non-finite value(s) in "
                          "all); NaN and infinite logits are refused unless the config says "
                          'nonfinite = "allow"')


class Generator(StrictModel):
    """Base of the generators.  Subclasses declare ``generator: Literal[name]`` and their
    parameters; ``TOP_KEYS_UNUSED`` names top-level keys the generator's data decide."""

    TOP_KEYS_UNUSED: ClassVar[tuple[str, ...]] = ()
    #: Parameters that are numbers (and may be swept); "format" and paths are not.
    NUMERIC: ClassVar[tuple[str, ...]] = ()

    def numeric_params(self) -> list[tuple[str, Any]]:
        """(name, value or list) of the sweepable parameters, in declaration order."""
        return [(k, getattr(self, k)) for k in self.NUMERIC]

    def check(self, path: Path, nonfinite: str) -> None:
        """Checks beyond types (ranges, data files); raise :class:`ConfigError`."""
        for name in self.NUMERIC:
            val = getattr(self, name)
            if isinstance(val, list) and not val:
                raise ConfigError(path, f"inputs.{name}", "empty list")
            for v in _as_list(val):
                if not math.isfinite(v):
                    raise ConfigError(path, f"inputs.{name}", f"must be finite, got {v}")

    def resolved(self, base: Path) -> dict[str, Any]:
        """Extra entries of the resolved config (e.g. data files' sha256)."""
        return {}

    def generate(self, params: dict[str, Any], base: Path) -> "Batch":  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def _shape(params: dict[str, Any]) -> tuple[int, int, int]:
        return (int(params.get("samples") or 1), int(params.get("batch_size") or 1),
                int(params["classes"]))

    @staticmethod
    def _rng(params: dict[str, Any]) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(int(params["seed"])))

    @staticmethod
    def _targets(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
        S, B, C = shape
        return rng.integers(0, C, size=(S, B), dtype=np.int64)


class UniformInputs(Generator):
    generator: Literal["uniform"]
    low: Num = 0.0
    high: Num = 1.0
    NUMERIC: ClassVar[tuple[str, ...]] = ("low", "high")

    def check(self, path: Path, nonfinite: str) -> None:
        super().check(path, nonfinite)
        for lo in _as_list(self.low):
            for hi in _as_list(self.high):
                if not lo < hi:
                    raise ConfigError(path, "inputs.low", f"needs low < high, got [{lo}, {hi})")

    def generate(self, params: dict[str, Any], base: Path) -> InputBatch:
        shape = self._shape(params)
        rng = self._rng(params)
        x = rng.uniform(float(params["low"]), float(params["high"]), size=shape)
        return InputBatch(np.ascontiguousarray(x), self._targets(rng, shape))


class NormalInputs(Generator):
    generator: Literal["normal"]
    mean: Num = 0.0
    scale: Num = 1.0
    NUMERIC: ClassVar[tuple[str, ...]] = ("mean", "scale")

    def check(self, path: Path, nonfinite: str) -> None:
        super().check(path, nonfinite)
        _require(path, "scale", self.scale, lambda v: v >= 0, ">= 0")

    def generate(self, params: dict[str, Any], base: Path) -> InputBatch:
        shape = self._shape(params)
        rng = self._rng(params)
        x = float(params["mean"]) + float(params["scale"]) * rng.standard_normal(size=shape)
        return InputBatch(np.ascontiguousarray(x), self._targets(rng, shape))


class ConfidentInputs(Generator):
    generator: Literal["confident"]
    scale: Num = 1.0
    margin: Num = 10.0
    NUMERIC: ClassVar[tuple[str, ...]] = ("scale", "margin")

    def check(self, path: Path, nonfinite: str) -> None:
        super().check(path, nonfinite)
        _require(path, "scale", self.scale, lambda v: v >= 0, ">= 0")

    def generate(self, params: dict[str, Any], base: Path) -> InputBatch:
        S, B, C = shape = self._shape(params)
        rng = self._rng(params)
        x = float(params["scale"]) * rng.standard_normal(size=shape)
        y = self._targets(rng, shape)
        if C > 1:
            others = x.copy()
            np.put_along_axis(others, y[..., None], -np.inf, axis=-1)
            top = others.max(axis=-1)
        else:
            top = np.zeros((S, B))
        np.put_along_axis(x, y[..., None], (top + float(params["margin"]))[..., None], axis=-1)
        return InputBatch(np.ascontiguousarray(x), y)


class LargeInputs(Generator):
    generator: Literal["large"]
    format: str = "float16"
    fraction: Num = 0.5
    NUMERIC: ClassVar[tuple[str, ...]] = ("fraction",)

    def check(self, path: Path, nonfinite: str) -> None:
        super().check(path, nonfinite)
        try:
            get_format(self.format)
        except ValueError:
            raise ConfigError(path, "inputs.format", f"unknown format {self.format!r}",
                              FORMAT_NAMES) from None
        _require(path, "fraction", self.fraction, lambda v: 0 < v <= 1, "in (0, 1]")

    def resolved(self, base: Path) -> dict[str, Any]:
        return {"format": get_format(self.format).name}

    def generate(self, params: dict[str, Any], base: Path) -> InputBatch:
        shape = self._shape(params)
        rng = self._rng(params)
        top = get_format(self.format).max_finite * float(params["fraction"])
        x = rng.uniform(-1.0, 1.0, size=shape) * top
        return InputBatch(np.ascontiguousarray(x), self._targets(rng, shape))


class FixedInputs(Generator):
    generator: Literal["fixed"]
    logits: Union[list[float], list[list[float]]]
    targets: Union[int, list[int]]
    TOP_KEYS_UNUSED: ClassVar[tuple[str, ...]] = ("classes", "batch_size", "samples")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Logits (1, B, C) float64 and targets (1, B) int64; ValueError on bad shapes."""
        logits = np.asarray(self.logits, dtype=np.float64)
        if logits.ndim == 1:
            logits = logits[None, :]
        if logits.ndim != 2 or logits.shape[1] == 0 or logits.shape[0] == 0:
            raise ValueError("logits must be one non-empty row or a list of rows of equal "
                             "length")
        targets = np.atleast_1d(np.asarray(self.targets, dtype=np.int64))
        if targets.ndim != 1 or len(targets) != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} row(s) of logits but {targets.size} "
                             "target(s)")
        if (targets < 0).any() or (targets >= logits.shape[1]).any():
            raise ValueError(f"targets must be class indices in [0, {logits.shape[1]})")
        return logits[None], targets[None]

    def check(self, path: Path, nonfinite: str) -> None:
        try:
            logits, _ = self.arrays()
        except ValueError as exc:
            raise ConfigError(path, "inputs.logits", str(exc)) from None
        if nonfinite != "allow":
            check_finite(logits[0], str(path), "inputs.logits")

    def generate(self, params: dict[str, Any], base: Path) -> InputBatch:
        x, y = self.arrays()
        return InputBatch(x, y)


class TorchRandInputs(Generator):
    generator: Literal["torch_rand_protocol"]

    def generate(self, params: dict[str, Any], base: Path) -> InputBatch:
        S, B, C = self._shape(params)
        return torch_rand_protocol(int(params["seed"]), S, B, C)


def torch_rand_protocol(seed: int, samples: int, batch_size: int, classes: int) -> InputBatch:
    """The seed answer's protocol: seed, then per batch ``x = torch.rand(B, C)`` and
    ``y = torch.randint(0, C, (B,))``, in that order, float32.

    A private ``torch.Generator`` seeded with ``seed`` gives the same stream as
    ``torch.manual_seed(seed)`` followed by the global calls, without touching global state."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    xs, ys = [], []
    for _ in range(samples):
        xs.append(torch.rand(size=(batch_size, classes), generator=g).to(torch.float))
        ys.append(torch.randint(0, classes, size=(batch_size,), generator=g))
    return InputBatch(torch.stack(xs).numpy().astype(np.float32),
                      torch.stack(ys).numpy().astype(np.int64))


def load_array(path: Path) -> np.ndarray:
    """A ``.npy`` or ``.pt`` file's array (bfloat16 tensors widened exactly to float32).

    Raises:
        ValueError: unsupported suffix, unreadable file, or a ``.pt`` that is not one tensor.
    """
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix in (".pt", ".pth"):
        import torch

        t = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{path.name} holds a {type(t).__name__}, not a tensor")
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)  # exact widening
        return t.numpy()
    raise ValueError(f"unsupported file type {path.suffix!r}; use .npy or .pt")


class FileInputs(Generator):
    generator: Literal["file"]
    logits: str
    targets: str
    TOP_KEYS_UNUSED: ClassVar[tuple[str, ...]] = ("classes", "samples")

    def load(self, base: Path, source: "Path | str" = "<config>",
             batch_size: "int | list[int] | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """Load and check the data: logits (N, C) or (S, B, C), targets (N,) or (S, B).

        Raises :class:`ConfigError` naming the key on a missing, unreadable or badly shaped
        file."""
        arrays = {}
        for key in ("logits", "targets"):
            p = base / getattr(self, key)
            try:
                arrays[key] = load_array(p)
            except Exception as exc:  # noqa: BLE001 - every failure is the same config error
                raise ConfigError(source, f"inputs.{key}", f"cannot load {str(p)!r} ({exc})",
                                  ".npy or .pt file, path relative to the config file") from None
        x, y = arrays["logits"], arrays["targets"]
        what = f"{self.logits!r}"
        if 0 in x.shape:
            raise ConfigError(source, "inputs.logits", f"{what} is empty (shape {x.shape}); it "
                              "needs at least one row and one class")
        if x.ndim not in (2, 3) or not np.issubdtype(x.dtype, np.floating):
            raise ConfigError(source, "inputs.logits", f"{what} holds {x.dtype} of shape "
                              f"{x.shape}; expected floating logits of shape (N, C) or "
                              "(S, B, C)")
        if not np.issubdtype(y.dtype, np.integer) or y.shape != x.shape[:-1]:
            raise ConfigError(source, "inputs.targets", f"expected integer targets of shape "
                              f"{x.shape[:-1]}, got {y.dtype} {y.shape}")
        if (y < 0).any() or (y >= x.shape[-1]).any():
            raise ConfigError(source, "inputs.targets",
                              f"class indices must be in [0, {x.shape[-1]})")
        if x.ndim == 3 and batch_size is not None:
            raise ConfigError(source, "batch_size", "the logits file is already batched "
                              "(S, B, C); remove the key")
        if x.ndim == 2 and batch_size is not None:
            for b in _as_list(batch_size):
                if x.shape[0] % b:
                    raise ConfigError(source, "batch_size", f"{b} does not divide the "
                                      f"{x.shape[0]} rows of the logits file")
        return x, y

    def check(self, path: Path, nonfinite: str) -> None:  # the runner passes batch_size
        pass

    def check_data(self, path: Path, nonfinite: str, batch_size: Any) -> None:
        x, _ = self.load(path.parent, path, batch_size)
        if nonfinite != "allow":
            check_finite(x, f"{path}: {self.logits}", "inputs.logits")

    def resolved(self, base: Path) -> dict[str, Any]:
        import hashlib

        return {f"{k}_sha256": hashlib.sha256((base / getattr(self, k)).read_bytes()).hexdigest()
                for k in ("logits", "targets")}

    def generate(self, params: dict[str, Any], base: Path) -> InputBatch:
        x, y = self.load(base)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)  # float16 / bfloat16 widen exactly
        if x.ndim == 2:
            b = int(params.get("batch_size") or x.shape[0])
            x = x.reshape(x.shape[0] // b, b, x.shape[1])
            y = y.reshape(y.shape[0] // b, b)
        return InputBatch(np.ascontiguousarray(x), y.astype(np.int64))


class LinearInputs(Generator):
    """Hidden states and a classifier weight instead of logits (the fused linear
    cross-entropy's inputs).  From ``PCG64(seed)``, in this order: hidden (S, B, K) ~ N(0, 1),
    weight (C, K) ~ scale * N(0, 1) / sqrt(K), targets uniform over the C classes.  The truth
    is the loss of the exact product of the rounded values
    (:mod:`precision_lab.numerics.exact_logits`)."""

    generator: Literal["linear"]
    hidden: Int = 256
    scale: Num = 1.0
    NUMERIC: ClassVar[tuple[str, ...]] = ("hidden", "scale")

    def check(self, path: Path, nonfinite: str) -> None:
        super().check(path, nonfinite)
        _require(path, "hidden", self.hidden, lambda k: k >= 1, ">= 1")
        _require(path, "scale", self.scale, lambda v: v > 0, "> 0")

    def generate(self, params: dict[str, Any], base: Path) -> LinearBatch:
        S, B, C = self._shape(params)
        K = int(params["hidden"])
        rng = self._rng(params)
        h = rng.standard_normal(size=(S, B, K))
        w = float(params["scale"]) * rng.standard_normal(size=(C, K)) / math.sqrt(K)
        return LinearBatch(h, w, rng.integers(0, C, size=(S, B), dtype=np.int64))


#: Generator classes by name.
GENERATORS: dict[str, type[Generator]] = {
    "uniform": UniformInputs,
    "normal": NormalInputs,
    "confident": ConfidentInputs,
    "large": LargeInputs,
    "fixed": FixedInputs,
    "torch_rand_protocol": TorchRandInputs,
    "file": FileInputs,
    "linear": LinearInputs,
}


def apply_loss_inputs(batch: InputBatch, loss: Any, params: dict[str, Any]) -> InputBatch:
    """The ``[loss]`` table's inputs on top of a point's logits and targets: ignored targets,
    probability targets, class weights (see :class:`precision_lab.experiment.config.LossConfig`).

    They come from their own stream, ``PCG64([seed, 2])``, so the logits and targets are the
    same as without the table."""
    S, B, C = batch.shape
    rng = np.random.Generator(np.random.PCG64([int(params.get("seed", 0)), 2]))
    weight = None
    if loss.weight is not None:
        weight = np.asarray(loss.weight, dtype=np.float64)
    elif params.get("weight_spread") is not None:
        ln = math.log(float(params["weight_spread"]))
        weight = np.exp(rng.uniform(-ln, ln, size=C))
    targets = batch.targets
    if loss.targets == "probabilities":
        z = rng.standard_normal(size=(S, B, C)) / float(params.get("temperature", 1.0))
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        targets = e / e.sum(axis=-1, keepdims=True)
    else:
        frac = float(params.get("ignore_fraction", 0.0))
        if frac > 0:
            targets = np.where(rng.random(size=(S, B)) < frac, np.int64(loss.ignore_index),
                               targets)
    return InputBatch(batch.logits, targets, weight)
