"""A worker that leaves by sys.exit() ends as the interpreter would: with its code, and no traceback."""

from __future__ import annotations

import sys

from bussdcc import Context, Runtime, Service

from ._helpers import Recorder


class Quits(Service):
    name = "quits"
    restart = "temporary"
    interval = 0.01

    def __init__(self, code: int | str) -> None:
        self.code = code

    def tick(self, ctx: Context) -> None:
        sys.exit(self.code)


def test_sys_exit_with_a_code_ends_the_worker_with_that_code() -> None:
    rec = Recorder()
    rt = Runtime(name="quits")
    rt.register_process(rec)
    rt.register_service(Quits(3))
    with rt:
        (exited,) = rec.wait_for("worker.exited")
    info = exited.payload.to_dict()
    assert (info["exit_code"], info["cause"], info["reason"]) == (3, "exit_code", "exit code 3")


def test_sys_exit_with_a_message_ends_the_worker_with_code_1() -> None:
    rec = Recorder()
    rt = Runtime(name="quits-msg")
    rt.register_process(rec)
    rt.register_service(Quits("driver refused"))
    with rt:
        (exited,) = rec.wait_for("worker.exited")
    assert exited.payload.to_dict()["exit_code"] == 1
