"""`WorkerThread`: the thread a model runs on, watched from the event loop so a crash or a hang is noticed."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LostReason = Literal["crashed", "hung"]


class WorkerLost(Exception):
    """The worker thread died (``crashed``) or a call ran past its time limit (``hung``)."""

    def __init__(self, reason: LostReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _settle(future: asyncio.Future[Any], succeeded: bool, value: Any) -> None:
    if future.done():
        return
    if succeeded:
        future.set_result(value)
    else:
        future.set_exception(value)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "it ended"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class WorkerThread:
    """A daemon thread that runs calls one at a time for the event loop that created it.

    A call's ``Exception`` is handed back to its caller and the thread goes on. Anything else that escapes
    (``SystemExit``, ``KeyboardInterrupt``, a ``BaseException`` from native code) ends the thread: `call`
    then raises `WorkerLost` ``crashed`` at once. A call that runs past its timeout raises `WorkerLost`
    ``hung``; Python cannot kill a thread, so the owner abandons it (`abandon`) and starts another. The
    thread is a daemon, so an abandoned one never holds the process open at exit.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._exited = asyncio.Event()
        self.exit_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        """Whether the OS thread still runs (an abandoned, hung thread does)."""
        return self._thread.is_alive()

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        # A closed loop raises RuntimeError: nobody waits for the answer any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _main(self) -> None:
        try:
            while (call := self._calls.get()) is not None:
                function, args, future = call
                try:
                    value = function(*args)
                except Exception as error:
                    self._post(_settle, future, False, error)
                else:
                    self._post(_settle, future, True, value)
                del call, function, args, future  # drop the batch's arrays before waiting for the next call
        except BaseException as error:  # the thread dies; the event loop learns it through _exited
            self.exit_error = error
        finally:
            self._post(self._exited.set)

    async def call(self, function: Callable[..., T], *args: Any, timeout: float | None) -> T:
        """``function(*args)`` on this thread; raises what it raised, or `WorkerLost` (crashed or hung)."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._calls.put((function, args, future))
        exited = asyncio.ensure_future(self._exited.wait())
        try:
            await asyncio.wait({future, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if future.done():
            return future.result()
        # Whatever the abandoned call ends with later, nobody reads it: keep asyncio from logging it.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if self._exited.is_set() or not self._thread.is_alive():
            raise WorkerLost("crashed", f"its thread died ({_describe(self.exit_error)})")
        raise WorkerLost("hung", f"a batch ran for more than {timeout:g} s")

    def stop(self) -> None:
        """Let the thread end after its current call (if it ever returns); never waits for it."""
        self._calls.put(None)
