"""Ctrl-C during training, delivered where it is safe to stop.

Python raises KeyboardInterrupt wherever the main thread happens to be: inside an MLflow
write, a SQLAlchemy commit of the Optuna storage, or torch's optimizer step, and
the cleanup that ends the run KILLED then works on a half-done operation (a Ctrl-C test of the
tuner once hung there, under load). While training, the first Ctrl-C (or SIGTERM, where it was
mapped to KeyboardInterrupt) only sets a flag; the training loop raises KeyboardInterrupt at
its next step boundary, and `train()` right after training. A Ctrl-C during the test
evaluation and model logging lets them finish (the run ends FINISHED, whole) and is raised
when `train()` returns. The same signal again interrupts at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)


class StopRequest:
    """Whether a deferred Ctrl-C is waiting; `check()` raises it."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def check(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C arrived since training started."""
        if self.signal is not None:
            raise self.interrupt()

    def interrupt(self) -> KeyboardInterrupt:
        """The KeyboardInterrupt that stands for the pending signal."""
        return KeyboardInterrupt(f"{signal.Signals(self.signal).name} during training")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only the same signal again escalates: `mlflow run` answers the terminal's Ctrl-C by
        # sending its child SIGTERM right after the SIGINT the child got itself.
        if self.signal == signum:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signum
            log.warning("stopping at the next training step (Ctrl-C again to stop at once)")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """`kill <pid>` (SIGTERM) ends trials and runs like Ctrl-C does: FAIL / KILLED, not RUNNING.

    Outermost, around a whole command: `deferred_interrupts()` then defers SIGTERM too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_active: StopRequest | None = None  # the outermost deferral's; nested ones share it


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[StopRequest]:
    """Defer SIGINT, and SIGTERM where it raises KeyboardInterrupt, to `StopRequest.check()`.

    When the outermost block ends with a Ctrl-C still pending, it is raised there: in place of
    a normal exit, and in place of any other exception (a pruned trial, a failed model of a
    benchmark), so that no handler swallows it. Nested blocks share the outermost one's
    request. Signals whose handler is not Python's KeyboardInterrupt (set by the caller or an
    embedding program) are left alone, and so is everything off the main thread, where
    handlers cannot be installed and signals never arrive.
    """
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield StopRequest()
        return
    if _active is not None:
        yield _active
        return
    request = StopRequest()
    previous = {
        signum: signal.getsignal(signum)
        for signum in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(signum) is signal.default_int_handler
    }
    for signum in previous:
        signal.signal(signum, request._handle)
    _active = request
    try:
        yield request
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        if request.signal is None:
            raise
        raise request.interrupt() from err
    finally:
        for signum, handler in previous.items():  # before `_active`: a late signal still defers
            signal.signal(signum, handler)
        _active = None
    request.check()


def raise_if_interrupted() -> None:
    """Raise the pending Ctrl-C of the active deferral now, if there is one."""
    if _active is not None and threading.current_thread() is threading.main_thread():
        _active.check()
