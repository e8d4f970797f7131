"""Input generators: logits and targets for one sweep point, deterministic from the seed.

:func:`generate` returns an :class:`InputBatch` of ``samples`` batches, logits of shape
(S, B, C) in float64 (float32 for the torch protocol, and for file data its stored dtype
widened exactly to float64 unless it is float32) and int64 targets of shape (S, B).
:func:`to_format` rounds the logits once, correctly, to a format; the runner computes each
format's reference from exactly those rounded values.  See :mod:`precision_lab.experiment.config` for
the generators' parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from precision_lab.experiment.config import ConfigError, ExperimentConfig, SweepPoint, source_of
from precision_lab.numerics.formats import Format, get_format, round_float64_array

__all__ = ["InputBatch", "generate", "to_format", "fixed_arrays", "load_file_arrays",
           "torch_rand_protocol"]


@dataclass(frozen=True)
class InputBatch:
    logits: np.ndarray   # (S, B, C), float64 or float32
    targets: np.ndarray  # (S, B), int64

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.logits.shape)  # type: ignore[return-value]


def to_format(logits: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """Round logits correctly (once, ties to even) to ``fmt``'s dtype."""
    f = get_format(fmt)
    if logits.dtype == f.np_dtype:
        return logits.copy()
    return round_float64_array(logits.astype(np.float64), f)


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


def fixed_arrays(inputs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``fixed`` generator's one batch: logits (1, B, C) float64, targets (1, B) int64."""
    logits = np.asarray(inputs.logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[None, :]
    if logits.ndim != 2 or logits.shape[1] == 0 or logits.shape[0] == 0:
        raise ValueError("logits must be one non-empty row or a list of rows of equal length")
    targets = np.atleast_1d(np.asarray(inputs.targets, dtype=np.int64))
    if targets.ndim != 1 or len(targets) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} row(s) of logits but {targets.size} target(s)")
    if (targets < 0).any() or (targets >= logits.shape[1]).any():
        raise ValueError(f"targets must be class indices in [0, {logits.shape[1]})")
    return logits[None], targets[None]


def _load_array(path: Path) -> np.ndarray:
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


def load_file_arrays(cfg: ExperimentConfig, base: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the ``file`` generator's data: logits (N, C) or (S, B, C), targets (N,) or (S, B).

    Paths are relative to the config file's folder (``base``).  Raises :class:`ConfigError`
    naming the key on a missing, unreadable or badly shaped file."""
    base = source_of(cfg).parent if base is None else base
    src = source_of(cfg)
    arrays = {}
    for key in ("logits", "targets"):
        p = base / getattr(cfg.inputs, key)
        try:
            arrays[key] = _load_array(p)
        except Exception as exc:  # noqa: BLE001 - every failure is the same config error
            raise ConfigError(src, f"inputs.{key}", f"cannot load {str(p)!r} ({exc})",
                              ".npy or .pt file, path relative to the config file") from None
    x, y = arrays["logits"], arrays["targets"]
    if x.ndim not in (2, 3) or not np.issubdtype(x.dtype, np.floating) or 0 in x.shape:
        raise ConfigError(src, "inputs.logits", f"expected floating logits of shape (N, C) or "
                          f"(S, B, C), got {x.dtype} {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != x.shape[:-1]:
        raise ConfigError(src, "inputs.targets", f"expected integer targets of shape "
                          f"{x.shape[:-1]}, got {y.dtype} {y.shape}")
    if (y < 0).any() or (y >= x.shape[-1]).any():
        raise ConfigError(src, "inputs.targets", f"class indices must be in [0, {x.shape[-1]})")
    if x.ndim == 3 and cfg.batch_size is not None:
        raise ConfigError(src, "batch_size", "the logits file is already batched (S, B, C); "
                          "remove the key")
    if x.ndim == 2 and cfg.batch_size is not None:
        for b in (cfg.batch_size if isinstance(cfg.batch_size, list) else [cfg.batch_size]):
            if x.shape[0] % b:
                raise ConfigError(src, "batch_size", f"{b} does not divide the {x.shape[0]} rows "
                                  "of the logits file")
    return x, y


def generate(cfg: ExperimentConfig, point: SweepPoint) -> InputBatch:
    """All batches of one sweep point."""
    p = point.params
    gen = cfg.inputs.generator
    if gen == "fixed":
        x, y = fixed_arrays(cfg.inputs)
        return InputBatch(x, y)
    if gen == "file":
        x, y = load_file_arrays(cfg)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)  # float16 / bfloat16 widen exactly
        if x.ndim == 2:
            b = int(p.get("batch_size") or x.shape[0])
            x = x.reshape(x.shape[0] // b, b, x.shape[1])
            y = y.reshape(y.shape[0] // b, b)
        return InputBatch(np.ascontiguousarray(x), y.astype(np.int64))
    S, B, C = int(p["samples"] if "samples" in p else 1), int(p.get("batch_size") or 1), int(p["classes"])
    seed = int(p["seed"])
    if gen == "torch_rand_protocol":
        return torch_rand_protocol(seed, S, B, C)
    rng = np.random.Generator(np.random.PCG64(seed))
    shape = (S, B, C)
    if gen == "uniform":
        x = rng.uniform(float(p["low"]), float(p["high"]), size=shape)
    elif gen == "normal":
        x = float(p["mean"]) + float(p["scale"]) * rng.standard_normal(size=shape)
    elif gen == "confident":
        x = float(p["scale"]) * rng.standard_normal(size=shape)
    elif gen == "large":
        top = get_format(cfg.inputs.format).max_finite * float(p["fraction"])
        x = rng.uniform(-1.0, 1.0, size=shape) * top
    else:  # pragma: no cover - the config model admits no other generator
        raise ValueError(f"unknown generator {gen!r}")
    y = rng.integers(0, C, size=(S, B), dtype=np.int64)
    if gen == "confident":
        if C > 1:
            others = x.copy()
            np.put_along_axis(others, y[..., None], -np.inf, axis=-1)
            top = others.max(axis=-1)
        else:
            top = np.zeros((S, B))
        np.put_along_axis(x, y[..., None], (top + float(p["margin"]))[..., None], axis=-1)
    return InputBatch(np.ascontiguousarray(x, dtype=np.float64), y)
