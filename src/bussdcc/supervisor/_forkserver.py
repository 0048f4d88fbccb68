"""The fork server: a single-threaded child, made at boot, that forks every worker.

It is forked before the runtime creates any thread or ZeroMQ context, so each
worker starts as a clean copy of the program as it was at boot (with the
user's classes, even those of a ``__main__`` without a main guard) in about a
millisecond. It reaps its children through pidfds and reports their exits.
It exits, killing its workers, when the parent closes the socket pair or dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import logging
import os
import pickle
import select
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, NoReturn

import psutil

from ..errors import BootError
from ..kernel import protocol as p
from ..kernel._boundary import SlotTable, WorkerSpec

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: Seconds between looks at the orphans this process adopted (to reap those that ended).
_TEND_PERIOD = 1.0
#: Seconds the fork server waits, when it exits, for the processes it killed to end.
_EXIT_GRACE = 1.0
#: Seconds the fork at boot waits, in all, for logging threads to finish the record they are writing.
_QUIET_WAIT = 2.0
#: Thread names made by the runtime itself: none of them is inside user code at the fork.
_OWN_THREADS = "bussdcc-"
_Entry = Callable[[WorkerSpec, object], NoReturn]
#: Signals sent to the whole process group that only the parent acts on.
_PARENTS_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _resolve(entry: str) -> _Entry:
    module, _, attr = entry.partition(":")
    fn: _Entry = getattr(importlib.import_module(module), attr)
    return fn


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, value, 0, 0, 0)


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


def other_threads(ignore: Collection[threading.Thread] = ()) -> list[str]:
    """The names of the live threads, other than the caller's, the runtime's own and ``ignore``."""
    me = threading.current_thread()
    return [
        t.name for t in threading.enumerate() if t is not me and t not in ignore and not t.name.startswith(_OWN_THREADS)
    ]


def threads_fault(threads: list[str]) -> str:
    """What the threads alive at the fork of the fork server mean, for a ``runtime.fault``."""
    shown = ", ".join(repr(name) for name in threads[:10])
    if len(threads) > 10:
        shown += f" and {len(threads) - 10} more"
    return (
        f"{_count(threads)} running when the fork server was made at boot: {shown}. A lock one of them "
        "held then (a file it was writing, say) stays held for ever in every worker, which then hangs; "
        "logging's handlers were made safe, other locks cannot be. Boot the runtime before starting threads"
    )


def threads_hint(threads: list[str]) -> str:
    """Why a worker forked from a threaded host may hang at start (empty if none was threaded)."""
    if not threads:
        return ""
    return (
        f" ({_count(threads)} running when the fork server was made at boot: a lock they held may be "
        "held for ever in the worker; boot the runtime before starting threads)"
    )


def _count(threads: list[str]) -> str:
    return "1 other thread was" if len(threads) == 1 else f"{len(threads)} other threads were"


def _handlers() -> list[logging.Handler]:
    """Every live logging handler, in the order they were made (the order their locks are taken in)."""
    refs: list[Any] = list(getattr(logging, "_handlerList", ()))
    handlers = [ref() for ref in refs]
    return [h for h in handlers if isinstance(h, logging.Handler)]


@contextlib.contextmanager
def _logging_quiet() -> Any:
    """Hold logging's lock and every handler's lock, their streams flushed, for a fork.

    A thread caught inside a handler's write at the fork leaves the file's
    buffer lock held in the child for ever (CPython reinitialises the
    handler's own lock after fork, never the buffer's): with every handler
    lock held, no logging thread is inside a write. Flushing first keeps the
    child from writing the parent's buffered records a second time.
    """
    module_lock: Any = getattr(logging, "_lock", None)
    parent = os.getpid()
    held: list[Any] = []
    deadline = time.monotonic() + _QUIET_WAIT
    # Module lock first, then handlers: the order logging's own configuration
    # takes them in. A handler closing takes them the other way round, so each
    # handler lock is waited for a bounded time, and one not had is passed over.
    if module_lock is not None:
        module_lock.acquire()
    try:
        for handler in _handlers():
            lock: Any = handler.lock
            if lock is None or not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                continue
            held.append(lock)
            try:
                handler.flush()
            except Exception:
                pass  # a closed or broken stream: nothing to flush, and not ours to report
        yield
    finally:
        if os.getpid() != parent:  # pragma: no cover - the child: logging made its locks anew
            held.clear()
            module_lock = None
        for lock in reversed(held):
            lock.release()
        if module_lock is not None:
            module_lock.release()


class ForkServer:
    """The parent's handle on the fork server process."""

    def __init__(
        self,
        components: Mapping[str, tuple[str, object]],
        *,
        endpoint: str,
        slots: SlotTable,
        entry: str,
        run_dir: Path,
        waiting: Collection[threading.Thread] = (),
    ) -> None:
        """Fork the fork server; ``waiting``: threads known to wait for the boot, holding nothing."""
        fn = _resolve(entry)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the children would print the parent's buffered output again
        #: The threads (other than the runtime's) alive at the fork: what they held stays held in every worker.
        self.threads: list[str] = []
        #: Where the workers' sockets live.
        self.run_dir = run_dir
        with warnings.catch_warnings(), _logging_quiet():
            # Forking a threaded host is safe here: the child only runs this module's loop.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.threads = other_threads(waiting)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                ours.close()
                _Zygote(theirs, dict(components), endpoint, slots, fn, run_dir).run()
            except BaseException:  # say why, or the parent only learns that it exited
                traceback.print_exc()
            finally:
                os._exit(0)
        theirs.close()
        self.pid = pid
        self._sock = ours
        self._sock.setblocking(False)
        self._buffer = bytearray()
        self._write_lock = threading.Lock()

    def fileno(self) -> int:
        """The socket to poll for reports."""
        return self._sock.fileno()

    def spawn(
        self,
        worker: str,
        incarnation: int,
        slot: int,
        pickled: bytes | None = None,
        argv: list[str] | None = None,
        *,
        identity: bytes,
        token: bytes,
    ) -> None:
        """Ask for a new worker process with this routing id and secret; the answer arrives as a report."""
        self._send(p.Spawn(worker, incarnation, slot, pickled, argv, identity, token))

    def _send(self, frame: p.Spawn | p.Quit) -> None:
        data = p.pack_stream(frame)
        with self._write_lock:
            self._sock.setblocking(True)
            try:
                self._sock.sendall(data)
            finally:
                self._sock.setblocking(False)

    def reports(self) -> list[p.ForkReport]:
        """Read every report available now (never blocks)."""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:  # ECONNRESET: it died with requests unread
                raise BootError(f"the fork server exited ({exc})") from exc
            if not chunk:
                raise BootError("the fork server exited")
            self._buffer += chunk
        return [p.decode_fork_report(f) for f in p.unpack_stream(self._buffer)]

    def close(self, timeout: float = 5.0) -> None:
        """Ask the fork server to exit and reap it."""
        try:
            self._send(p.Quit())
        except OSError:
            pass
        self._sock.close()
        _reap(self.pid, timeout)


def _reap(pid: int, timeout: float) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    finally:
        os.close(fd)


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


def _split(line: str) -> list[str]:  # pragma: no cover - runs in the fork server
    return [line[i : i + p.MAX_LINE] for i in range(0, len(line), p.MAX_LINE)] or [""]


class _Zygote:  # pragma: no cover - runs in the child
    def __init__(  # noqa: PLR0917 - one private call site
        self,
        sock: socket.socket,
        components: dict[str, tuple[str, object]],
        endpoint: str,
        slots: SlotTable,
        entry: _Entry,
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

    def run(self) -> None:
        # What a dead worker's helpers leave behind is adopted here, to be killed and reaped.
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
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
        self.buffer += chunk
        for data in p.unpack_stream(self.buffer):
            try:
                req = p.decode_fork_request(data)
            except Exception:  # the parent is trusted, so a bug: serve the next request regardless
                traceback.print_exc()
                continue
            if isinstance(req, p.Quit):
                return "quit"
            try:
                self._spawn(req, poller)
            except BaseException as exc:  # one bad request is one failed spawn, never this process's end
                self._report(p.SpawnFailed(req.worker, req.incarnation, _describe(exc)))
        return "more"

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
                sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
                if spec is None:
                    assert req.argv is not None
                    _exec_worker(req, self.parent)
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
        try:
            self.sock.sendall(p.pack_stream(frame))
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
