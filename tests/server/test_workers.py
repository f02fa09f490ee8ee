"""server.workers: paused_gc (the collector is off inside bulk work and comes back after it) and
Forked (a result computed in a forked process)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from typing import Any

import pytest

from server.workers import Forked, paused_gc


def test_the_collector_is_paused_inside_and_restored_after() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():  # nested
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer block still runs
    assert gc.isenabled()


def test_an_error_in_the_block_restores_the_collector() -> None:
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("bulk work failed")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_concurrent_blocks_resume_only_when_the_last_ends() -> None:
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with paused_gc():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    with paused_gc():
        pass
    assert not gc.isenabled()  # the other thread's block still runs
    release.set()
    thread.join(10)
    assert gc.isenabled()


def _square(x: int) -> int:
    return x * x


def _raises(message: str) -> None:
    raise ValueError(message)


class _Unpicklable(Exception):
    def __init__(self, message: str, handle: Any) -> None:
        super().__init__(message)
        self.handle = handle

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle")


def _raises_unpicklable() -> None:
    raise _Unpicklable("kept by name", threading.Lock())


def _dies() -> None:
    os._exit(4)


def test_forked_gives_the_result_computed_in_another_process() -> None:
    job = Forked(os.getpid)
    assert job.result() != os.getpid()
    assert Forked(_square, 7).result() == 49
    assert multiprocessing.active_children() == []


def test_forked_raises_the_function_s_exception() -> None:
    with pytest.raises(ValueError, match="bad input"):
        Forked(_raises, "bad input").result()
    with pytest.raises(RuntimeError, match="_Unpicklable: kept by name"):
        Forked(_raises_unpicklable).result()
    assert multiprocessing.active_children() == []


def test_forked_process_dying_is_reported_with_its_exit_code() -> None:
    with pytest.raises(RuntimeError, match=r"ended unexpectedly \(exit code 4\)"):
        Forked(_dies).result()


def test_forked_close_ends_a_running_process() -> None:
    job = Forked(time.sleep, 60)
    started = time.monotonic()
    job.close()
    assert time.monotonic() - started < 10 and multiprocessing.active_children() == []
