"""Where chunks run: in this process, in local worker processes, or on a Dask cluster.

:func:`open_executor` gives a :class:`concurrent.futures.Executor` (or None for "in this
process"): ``workers > 1`` starts that many local processes (``spawn``: a fresh interpreter
each, so torch's threads are never forked); ``scheduler="tcp://HOST:PORT"`` connects to a Dask
cluster through ``distributed.Client(...).get_executor()`` (the optional extra
``precision-lab[cluster]``).  The same chunk function runs everywhere, so the tables are
byte-identical whichever executor computed them.

Workers re-read nothing from disk except the data files of a ``file`` generator, which must be
reachable under the same path on every worker.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["open_executor", "default_workers", "ClusterError"]


class ClusterError(RuntimeError):
    """The cluster cannot be used: the extra is missing, or the scheduler does not answer."""


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def open_executor(workers: int = 1, scheduler: "str | None" = None,
                  timeout: float = 30.0) -> Iterator["Executor | None"]:
    """An executor for chunk jobs, shut down on exit; None means "run in this process".

    ``workers``: local processes (1: none; 0: one per core).  ``scheduler``: the address of a
    Dask scheduler; then ``workers`` is ignored.

    Raises:
        ClusterError: ``distributed`` is not installed, or the scheduler does not answer within
            ``timeout`` seconds (one line naming the address).
    """
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise ClusterError("a Dask scheduler needs the optional extra: pip install "
                               "'precision-lab[cluster]'") from None
        try:
            client: Any = Client(scheduler, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any connection failure is the same message
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} "
                               f"({type(exc).__name__}: {exc})") from None
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
        return
    n = default_workers() if workers == 0 else workers
    if n <= 1:
        yield None
        return
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
