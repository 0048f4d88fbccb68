"""``bussdcc logs``: the last lines of a worker's log (across rotations), following it, and finding it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bussdcc import Context, Event, Message, Runtime, Service

from ._cli import Background, bussdcc
from ._helpers import MakeRuntime, wait_until


@dataclass(slots=True, frozen=True)
class Say(Message):
    """Asks the Sayer to print ``count`` numbered lines from ``first``."""

    name = "test.say"
    first: int
    count: int


class Sayer(Service):
    """Prints numbered lines when asked, from its own process."""

    name = "sayer"
    interval = 3600.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Say):
            for i in range(evt.payload.first, evt.payload.first + evt.payload.count):
                print(f"n={i:05d} {'.' * 20}")


class Greeter(Service):
    """Says hello at start (for ``bussdcc run`` of a file)."""

    name = "greeter"
    interval = 3600.0

    def start(self, ctx: Context) -> None:
        print("hello from the greeter")


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"stdout: n=(\d+)", text)]


def said(rt: Runtime, logs: Path, first: int, count: int) -> None:
    """Have the Sayer print lines ``first`` .. ``first + count - 1``; return once the last is in its file."""
    rt.emit(Say(first, count))
    last = f"n={first + count - 1:05d}"
    wait_until(lambda: last in read(logs / "sayer.log"), what=f"{last} in the log file")


def test_logs_shows_the_last_lines_across_rotated_files(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    rt, _ = make_runtime("logsn", Sayer(), log_dir=logs, log_max_bytes=1024, log_backups=3)
    said(rt, logs, 0, 200)
    assert (logs / "sayer.log.3").exists()  # rotated several times
    run_dir = str(rt.run_dir)
    out = bussdcc("logs", "sayer", "-n", "5", "--run-dir", run_dir)
    assert out.returncode == 0, out.stderr
    assert numbers(out.stdout) == [195, 196, 197, 198, 199] and len(out.stdout.splitlines()) == 5
    # More than the current file holds: the rest comes from the rotated files, in order.
    out = bussdcc("logs", "sayer", "-n", "40", "-r", "logsn")
    assert numbers(out.stdout) == list(range(160, 200)), out.stdout
    current = numbers(read(logs / "sayer.log"))
    assert len(current) < 40
    # Everything kept: an unbroken run up to the last line, the oldest rotated away.
    everything = numbers(bussdcc("logs", "sayer", "-n", "100000", "--run-dir", run_dir).stdout)
    assert everything == list(range(everything[0], 200)) and everything[0] > 0
    assert bussdcc("logs", "sayer", "-n", "0", "--run-dir", run_dir).stdout == ""
    # Each line as written: time, pid, stream.
    (pid,) = [w.pid for w in rt.workers()]
    line = out.stdout.splitlines()[-1]
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z \[{pid}\] stdout: n=00199 \.{{20}}", line), line


def test_logs_follow_prints_new_lines_across_rotations_and_ends_with_the_runtime(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    rt, _ = make_runtime("logsf", Sayer(), log_dir=logs, log_max_bytes=1024, log_backups=3)
    said(rt, logs, 0, 1)
    follower = Background(["logs", "sayer", "-f", "-n", "1", "--run-dir", str(rt.run_dir)])
    try:
        follower.wait_line("n=00000")
        # Batches of about 2 KB: a file is 1 KB, so the follower is often rotations behind, and catches up.
        for batch in range(10):
            said(rt, logs, 1 + batch * 30, 30)
            follower.wait_line(f"n={batch * 30 + 30:05d}")
        assert (logs / "sayer.log.3").exists()  # it rotated while followed
        assert numbers("\n".join(follower.out)) == list(range(301))
        rt.shutdown()
        assert follower.wait() == 0  # the runtime ended, and so did the follower
        assert follower.out[-1].endswith("exited: stopped"), follower.out[-3:]
    finally:
        follower.stop()
    # The runtime is gone: its log directory is still readable.
    out = bussdcc("logs", "sayer", "-n", "1", "--log-dir", str(logs))
    assert out.returncode == 0 and out.stdout.rstrip().endswith("exited: stopped"), out


def test_logs_follow_goes_on_where_many_last_lines_end(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    rt, _ = make_runtime("logsbig", Sayer(), log_dir=logs)
    said(rt, logs, 0, 2000)  # about 150 KB: the last lines are read back in several blocks
    follower = Background(["logs", "sayer", "-f", "-n", "1500", "--run-dir", str(rt.run_dir)])
    try:
        follower.wait_line("n=01999")
        said(rt, logs, 2000, 5)
        follower.wait_line("n=02004")
        assert numbers("\n".join(follower.out)) == list(range(500, 2005))
    finally:
        follower.stop()


def test_logs_says_in_one_line_what_it_cannot_show(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    rt, _ = make_runtime("logsbad", Sayer(), log_dir=logs)
    said(rt, logs, 0, 1)
    bare, _ = make_runtime("nologs")
    cases = [
        (("ghost", "--run-dir", str(rt.run_dir)), f"no log of worker 'ghost' in {logs} (logs there: sayer)"),
        (
            ("sayer", "--run-dir", str(bare.run_dir)),
            "the runtime 'nologs' writes no log files (start it with --log-dir DIR, or [runtime] log_dir)",
        ),
        (("sayer", "--log-dir", str(tmp_path / "none")), f"no log directory {tmp_path / 'none'}"),
        (("sayer", "-n", "-1", "--log-dir", str(logs)), "-n takes a number >= 0, not -1"),
    ]
    for args, error in cases:
        out = bussdcc("logs", *args)
        assert out.returncode == 1 and out.stdout == "", out
        assert out.stderr == f"bussdcc logs: {error}\n"


def test_run_writes_logs_where_the_file_or_the_command_line_says(tmp_path: Path) -> None:
    system = tmp_path / "system.toml"
    system.write_text(
        '[runtime]\nname = "greetings"\nlog_dir = "logs"\n\n'
        '[[services]]\nclass = "tests.test_logs_cli:Greeter"\nname = "greeter"\n'
    )
    for extra, where in (((), tmp_path / "logs"), (("--log-dir", str(tmp_path / "elsewhere")), tmp_path / "elsewhere")):
        run = Background(["run", str(system), *extra])
        try:
            run.wait_line("running", err=True)
            # Relative to the file's folder; found through the live runtime.
            log = where / "greeter.log"
            wait_until(lambda: "hello from the greeter" in read(log), what="the greeting")  # noqa: B023
            out = bussdcc("logs", "greeter", "-r", "greetings")
            assert out.returncode == 0 and "stdout: hello from the greeter" in out.stdout, out
            assert bussdcc("shutdown", "greetings").returncode == 0
            assert run.wait() == 0
        finally:
            run.stop()
    assert not (tmp_path / "logs" / "elsewhere").exists()


def test_logs_help_names_its_options() -> None:
    text = bussdcc("logs", "--help").stdout
    for option in ("-f", "--follow", "-n", "--lines", "--log-dir", "--run-dir", "-r"):
        assert option in text
