"""The fork server's own loop (it runs in the child made at boot, single-threaded).

It forks each worker on request, gives it pipes for its output and a process
group of its own, reaps it through a pidfd and reports its exit; it kills what a
dead worker left behind (it is a child subreaper), and everything when the
parent goes. No request, and no refusal of the environment (EMFILE, EAGAIN), is
ever this process's end: each is one failed spawn, reported.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import pickle
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO

import psutil

from ..kernel import protocol as p
from ..kernel._boundary import SlotTable, WorkerSpec
from ._procenv import apply_process

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: Seconds between looks at the orphans this process adopted (to reap those that ended).
_TEND_PERIOD = 1.0
#: Seconds the fork server waits, when it exits, for the processes it killed to end.
_EXIT_GRACE = 1.0
Entry = Callable[[WorkerSpec, object], NoReturn]
#: Signals sent to the whole process group that only the parent acts on.
_PARENTS_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> None:
    global _libc  # noqa: PLW0603 - loaded once in the fork server, not again in every worker
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, value, 0, 0, 0)


def _die_with_parent(parent_pid: int) -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before prctl() took effect.
    if os.getppid() != parent_pid:
        os._exit(1)


def _children(pid: int) -> list[int]:
    """The children of ``pid``: from /proc (fast), else from a scan by psutil."""
    try:
        out: list[int] = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        return out
    except FileNotFoundError:
        try:
            return [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    except OSError:
        return []


def _kill_tree(pids: list[int]) -> None:
    """SIGKILL ``pids`` and all their descendants (never waits)."""
    tree = list(pids)
    for pid in tree:  # grows as it goes: every descendant, once
        tree.extend(_children(pid))
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _reap_if_done(pid: int) -> bool:
    """Reap ``pid`` if it has ended (never blocks); True once it is gone."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def _open_gate() -> tuple[int, int] | None:
    """A pipe whose read end children block on until the write end is closed (None if none can be made)."""
    try:
        return os.pipe2(os.O_CLOEXEC)
    except OSError:
        return None  # no gate: the children just start at once


def _close_gate(gate: tuple[int, int] | None) -> None:
    """Open the gate: every child waiting at it goes on."""
    if gate is not None:
        for fd in gate:
            os.close(fd)


def _pass_gate(gate: tuple[int, int] | None) -> None:  # pragma: no cover - runs in the child
    """Wait (in a child just forked) until the fork server has forked the rest of the burst."""
    if gate is None:
        return
    read_end, write_end = gate
    os.close(write_end)  # or the gate would never open: EOF comes once no write end is left
    try:
        os.read(read_end, 1)
    finally:
        os.close(read_end)


def _exec_worker(req: p.Spawn, parent: int) -> NoReturn:  # pragma: no cover - runs in the child
    argv = [*(req.argv or []), "--slot", str(req.slot), "--incarnation", str(req.incarnation)]
    argv += ["--parent-pid", str(parent)]
    env = dict(os.environ)
    # The fresh interpreter imports the class from where the parent would have.
    env["PYTHONPATH"] = os.pathsep.join(x for x in sys.path if x)
    # Its routing id and secret go through a pipe it inherits and empties at once: argv is
    # public (ps), and the environment stays readable in /proc for the process's whole life.
    key_r, key_w = os.pipe()
    os.write(key_w, p.encode_key(req.identity, req.token))
    os.close(key_w)
    os.set_inheritable(key_r, True)
    env[p.KEY_FD_ENV] = str(key_r)
    os.execve(argv[0], argv, env)


class _Pipe:  # pragma: no cover - runs in the fork server
    """One of a worker's output pipes, and the part of a line not yet ended."""

    __slots__ = ("buffer", "pid", "stream", "worker")

    def __init__(self, worker: str, pid: int, stream: int) -> None:
        self.worker = worker
        self.pid = pid
        self.stream = stream
        self.buffer = bytearray()

    def take(self, flush: bool) -> list[str]:
        """The complete lines buffered (and with ``flush``, the rest too)."""
        if flush:
            data = bytes(self.buffer)
            self.buffer.clear()
            if not data:
                return []
            data = data.removesuffix(b"\n")
        else:
            end = self.buffer.rfind(b"\n")
            if end < 0:
                if len(self.buffer) < p.MAX_LINE:
                    return []
                end = len(self.buffer)  # a line too long to wait for its end
            data = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
        text = data.decode("utf-8", "replace")
        return [chunk for line in text.split("\n") for chunk in _split(line)]


def _describe(exc: BaseException) -> str:  # pragma: no cover - runs in the fork server
    try:
        return repr(exc)
    except BaseException:  # a repr that raises must not take the fork server down either
        return f"{type(exc).__name__} (unprintable)"


def _describe_os(step: str, exc: OSError) -> str:
    """``fork: [Errno 11] Resource temporarily unavailable (EAGAIN)``."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    return f"{step}: {exc} ({name})" if name else f"{step}: {exc}"


def _std_streams() -> tuple[TextIO, TextIO]:
    """A worker's sys.stdout and sys.stderr: line-buffered text on fds 1 and 2, whatever those are then.

    The host may have pointed its own sys.stdout elsewhere than fd 1 (a test runner's capture).
    The fork server makes these once and never writes to them: each worker inherits them, empty,
    with fds 1 and 2 made its output pipes, instead of building its own, whose code and objects
    would be copied into its memory (about 60 kB of each worker's USS). Made here they only take
    fd 1's seekability as it is in the fork server, which matters to tell() and seek() alone.
    """
    out = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    err = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    return out, err


def _split(line: str) -> list[str]:  # pragma: no cover - runs in the fork server
    return [line[i : i + p.MAX_LINE] for i in range(0, len(line), p.MAX_LINE)] or [""]


class Zygote:  # pragma: no cover - runs in the child
    def __init__(  # noqa: PLR0917 - one private call site
        self,
        sock: socket.socket,
        components: dict[str, tuple[str, object]],
        endpoint: str,
        slots: SlotTable,
        entry: Entry,
        run_dir: Path,
    ) -> None:
        self.run_dir = run_dir
        self.sock = sock
        self.components = components
        self.endpoint = endpoint
        self.slots = slots
        self.entry = entry
        self.parent = os.getppid()
        self.children: dict[int, int] = {}  # pidfd -> pid
        #: Adopted orphans seen alive at the last look: left by workers that are still alive.
        self.adopted: set[int] = set()
        self.tended = 0.0
        self.pipes: dict[int, _Pipe] = {}  # read end -> the worker's stdout or stderr
        self.buffer = bytearray()
        #: The gate the processes of the burst of requests at hand wait at (see ``_read_requests``).
        self.gate: tuple[int, int] | None = None
        #: Reports held while a burst is forked (see ``_report``).
        self.reports: list[bytes] = []
        #: Each worker's sys.stdout and sys.stderr, made here once rather than in every worker.
        self.streams: tuple[TextIO, TextIO] | None = None
        try:
            self.streams = _std_streams()
        except OSError:
            pass  # fd 1 or 2 closed here: each worker opens its own on its pipes

    def run(self) -> None:
        # What a dead worker's helpers leave behind is adopted here, to be killed and reaped.
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        # Every object made so far is shared with each worker: out of the collector's sight, its
        # pages are not copied into a worker by the first collection there (faster starts, less USS).
        gc.freeze()
        # A signal to the whole process group (systemd's KillMode=control-group, a shell,
        # `timeout`) is the parent's to handle: this process ends with the parent anyway.
        # Workers inherit these until they install their own handlers, so none dies early.
        for sig in _PARENTS_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        # EOF on the socket pair is not enough: a child the application forks
        # after boot holds a copy of the parent's end. Watch the parent itself.
        try:
            parent_fd = os.pidfd_open(self.parent)
        except ProcessLookupError:
            parent_fd = -1
        if parent_fd < 0:
            self._kill_all()
            return
        poller.register(parent_fd, select.POLLIN)
        while True:
            events = poller.poll(int(_TEND_PERIOD * 1000))
            if time.monotonic() - self.tended >= _TEND_PERIOD:
                self._tend()
            for fd, _ in events:
                if fd == parent_fd:
                    self._kill_all()
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                    return
                if fd == self.sock.fileno():
                    outcome = self._read_requests(poller)
                    if outcome != "more":
                        self._kill_all()
                        if outcome == "orphaned":
                            # Nobody else is left to remove the sockets.
                            shutil.rmtree(self.run_dir, ignore_errors=True)
                        return
                elif fd in self.pipes:
                    self._read_pipe(fd, poller)
                else:
                    self._reaped(fd, poller)

    def _read_requests(self, poller: select.poll) -> str:
        try:
            chunk = self.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            return "orphaned"
        # The processes forked for one burst of requests wait at a gate until all are forked:
        # runnable at once, they would slow down the forking of the rest (a boot of many).
        self.gate = None
        try:
            while True:
                self.buffer += chunk
                frames = p.unpack_stream(self.buffer)
                for k, data in enumerate(frames):
                    try:
                        req = p.decode(data, p.FORK_REQUESTS)
                    except Exception:  # the parent is trusted, so a bug: serve the next request regardless
                        traceback.print_exc()
                        continue
                    if isinstance(req, p.Quit):
                        return "quit"
                    if self.gate is None and (k + 1 < len(frames) or self._more_waiting()):
                        self.gate = _open_gate()
                    try:
                        self._spawn(req, poller)
                    except BaseException as exc:  # one bad request is one failed spawn, never this process's end
                        self._report(p.SpawnFailed(req.worker, req.incarnation, _describe(exc)))
                try:
                    chunk = self.sock.recv(65536, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return "more"
                except OSError:
                    return "orphaned"
                if not chunk:
                    return "orphaned"
        finally:
            gate, self.gate = self.gate, None
            self._flush_reports()  # the parent knows their pids before any of them says hello
            _close_gate(gate)

    def _more_waiting(self) -> bool:
        """Whether another request is buffered or already readable behind the one at hand."""
        if self.buffer:
            return True
        try:
            return bool(self.sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK))
        except OSError:
            return False

    def _spawn(self, req: p.Spawn, poller: select.poll) -> None:
        spec: WorkerSpec | None = None
        component: object = None
        if req.argv is None:
            try:
                role, component = self.components[req.worker] if req.pickled is None else pickle.loads(req.pickled)
            except BaseException as exc:  # even SystemExit from a __reduce__: the request fails, not us
                self._report(p.SpawnFailed(req.worker, req.incarnation, _describe(exc)))
                return
            spec = WorkerSpec(
                req.worker,
                role,
                req.incarnation,
                self.endpoint,
                req.slot,
                self.slots,
                self.parent,
                req.identity,
                req.token,
                req.gated,
            )
        me = os.getpid()
        opened: list[int] = []
        step = "pipe2"
        try:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            opened += (out_r, out_w)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            opened += (err_r, err_w)
            step = "fork"
            pid = os.fork()
        except OSError as exc:  # EMFILE at the fd limit, EAGAIN at a pids limit: this spawn fails, later ones may not
            for fd in opened:
                os.close(fd)
            self._report(p.SpawnFailed(req.worker, req.incarnation, _describe_os(step, exc), exc.errno))
            return
        if pid == 0:
            try:
                _pass_gate(self.gate)
                os.setpgid(0, 0)
                _die_with_parent(me)
                self.sock.close()
                for fd in [*self.children, *self.pipes, out_r, err_r]:
                    os.close(fd)
                # Its output goes through us, so no line is lost when it dies and each carries its name.
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                os.close(out_w)
                os.close(err_w)
                # The host may have pointed sys.stdout elsewhere than fd 1 (a test runner's capture).
                sys.stdout, sys.stderr = self.streams or _std_streams()
                if spec is None:
                    assert req.argv is not None
                    _exec_worker(req, self.parent)
                if apply_process(component):
                    _die_with_parent(me)  # a change of ids clears the death signal
                self.entry(spec, component)
            except BaseException:
                traceback.print_exc()
            os._exit(1)
        try:
            os.setpgid(pid, pid)  # also here, so the group exists before anyone signals it
        except OSError:
            pass
        os.close(out_w)
        os.close(err_w)
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:
            # Without a pidfd it could be neither watched nor reaped: end it now, unseen.
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            _kill_tree([pid])
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            os.close(out_r)
            os.close(err_r)
            self._report(p.SpawnFailed(req.worker, req.incarnation, _describe_os("pidfd_open", exc), exc.errno))
            return
        for stream, pipe_fd in ((1, out_r), (2, err_r)):
            os.set_blocking(pipe_fd, False)
            self.pipes[pipe_fd] = _Pipe(req.worker, pid, stream)
            poller.register(pipe_fd, select.POLLIN)
        self.children[fd] = pid
        poller.register(fd, select.POLLIN)
        self._report(p.Spawned(req.worker, req.incarnation, pid))

    def _read_pipe(self, fd: int, poller: select.poll, final: bool = False) -> None:
        pipe = self.pipes[fd]
        eof = False
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                eof = True
                break
            pipe.buffer += chunk
            if len(pipe.buffer) >= 4 * 65536:
                break  # forward some before reading more
        lines = pipe.take(flush=eof or final)
        if lines:
            self._report(p.Output(pipe.worker, pipe.pid, pipe.stream, lines))
        if eof or final:
            poller.unregister(fd)
            os.close(fd)
            del self.pipes[fd]

    def _reaped(self, fd: int, poller: select.poll) -> None:
        pid = self.children.pop(fd)
        poller.unregister(fd)
        os.close(fd)
        self._bury(pid)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped already (by a _tend that mistook it): its status is lost
            status = 255 << 8
        # Everything it wrote is in its pipes now: forward it before saying it ended.
        for pipe_fd in [f for f, pipe in self.pipes.items() if pipe.pid == pid]:
            self._read_pipe(pipe_fd, poller, final=True)
        self._report(p.Reaped(pid, os.waitstatus_to_exitcode(status)))

    def _bury(self, pid: int) -> None:
        """Kill what a dead (not yet reaped) worker left: its process group, and what it orphaned."""
        try:
            os.killpg(pid, signal.SIGKILL)  # safe: the zombie still holds the group's id
        except OSError:
            pass
        # Its children were adopted here when it died: the orphans not seen before are its own.
        workers = set(self.children.values())
        left = [c for c in _children(os.getpid()) if c != pid and c not in workers and c not in self.adopted]
        _kill_tree(left)
        self.adopted.update(left)  # reaped by the next _tend(), without blocking now

    def _tend(self) -> None:
        """Reap adopted orphans that ended; remember those alive (they belong to live workers)."""
        self.tended = time.monotonic()
        workers = set(self.children.values())
        self.adopted = {c for c in _children(os.getpid()) if c not in workers and not _reap_if_done(c)}

    def _report(self, frame: Any) -> None:
        data = p.pack_stream(frame)
        if self.gate is not None:
            self.reports.append(data)  # a burst: said at once, when its gate opens
            return
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def _flush_reports(self) -> None:
        """Send the reports held during a burst, in one write."""
        if self.reports:
            data = b"".join(self.reports)
            self.reports.clear()
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def _kill_all(self) -> None:
        """Kill every worker's process group and every orphan; reap them (a bounded wait)."""
        for pid in self.children.values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        for fd in self.children:
            os.close(fd)
        self.children.clear()
        for fd in self.pipes:
            os.close(fd)
        self.pipes.clear()
        deadline = time.monotonic() + _EXIT_GRACE
        while (left := _children(os.getpid())) and time.monotonic() < deadline:
            _kill_tree(left)
            if not all([_reap_if_done(pid) for pid in left]):
                time.sleep(0.005)
