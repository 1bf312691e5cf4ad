"""On Python 3.11, make aiohttp write a request's body at once, as it does by itself on Python >= 3.12.

aiohttp writes a request's headers and body in a task of its own (``ClientRequest.write_bytes``). On
Python >= 3.12 it starts that task eagerly: the request leaves inside ``session.post``. On 3.11 the task
is queued behind every task already ready, so in a burst of N requests (N agents ending a turn in the
same milliseconds) no request reaches the server until all N have been set up: the server sees the load
late, and the time in flight falls (workload B in ``benchmarks/client_perf.py``: 98.5 % of streams in
flight on 3.11 without this, 99.1 % on 3.12).

:func:`eager_body_writes` installs, for the duration of a ``with`` block, a task factory on the running
loop that runs the first step of aiohttp's body-write coroutine right away (normally the whole write:
``transport.write`` does not wait unless the socket buffer is full); whatever is left (a drain) continues
in an ordinary task. Every other coroutine goes to the previous factory untouched. On Python >= 3.12,
or with an aiohttp without ``ClientRequest.write_bytes``, it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import types
from collections.abc import Generator, Iterator
from typing import Any

from aiohttp import ClientRequest

__all__ = ["eager_body_writes"]


@types.coroutine
def _resume(coro: Any, pending: Any) -> Generator[Any, Any, Any]:
    """Go on driving ``coro``, which has already run up to yielding ``pending`` (what ``yield from``
    would do from that point on)."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # passed into the coroutine, as yield from does
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def _eager_factory(previous: Any, code: types.CodeType) -> Any:
    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future:
        if getattr(coro, "cr_code", None) is code:
            try:
                pending = coro.send(None)
            except StopIteration as stop:  # written: done, as an eager task would be
                fut = loop.create_future()
                fut.set_result(stop.value)
                return fut
            except BaseException as exc:  # kept in the future, as an eager task would
                fut = loop.create_future()
                fut.set_exception(exc)
                return fut
            coro = _resume(coro, pending)
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    return factory


@contextlib.contextmanager
def eager_body_writes(loop: asyncio.AbstractEventLoop | None = None) -> Iterator[bool]:
    """While inside, aiohttp request bodies leave inside ``session.post`` on this loop (default: the
    running one). Yields whether anything was installed (False on Python >= 3.12, where aiohttp does it
    itself, and where this aiohttp does not write bodies the expected way)."""
    write_bytes = getattr(ClientRequest, "write_bytes", None)
    code = getattr(write_bytes, "__code__", None)
    if sys.version_info >= (3, 12) or code is None:
        yield False
        return
    loop = loop or asyncio.get_running_loop()
    previous = loop.get_task_factory()
    factory = _eager_factory(previous, code)
    loop.set_task_factory(factory)
    try:
        yield True
    finally:
        if loop.get_task_factory() is factory:
            loop.set_task_factory(previous)
