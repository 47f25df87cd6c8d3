"""Running a side task in a worker thread while the calling thread does the main work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, wait
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def running_beside(executor: Executor, fn: Callable[..., T], *args: Any) -> Iterator[Future[T]]:
    """`fn(*args)` in a worker of `executor` while the block runs; yields its future. An error of the block waits
    for the side task before it propagates: the worker's own outcome must not replace that error, nor outlive it."""
    future = executor.submit(fn, *args)
    try:
        yield future
    except BaseException:
        wait([future])
        raise
