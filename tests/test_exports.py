"""One public surface, documented; and the architecture's import rules."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import bussdcc
from bussdcc import message

SRC = Path(bussdcc.__file__).parent


def test_seed_imports_work() -> None:
    from bussdcc import (  # noqa: F401
        Context,
        Device,
        Event,
        Interface,
        Message,
        Process,
        Runtime,
        Service,
        Severity,
        SignalRuntime,
        ThreadedRuntime,
        message,
    )


def test_all_is_exactly_the_public_names() -> None:
    public = {n for n in vars(bussdcc) if not n.startswith("_")} - {"cli", "kernel", "supervisor", "worker"}
    assert set(bussdcc.__all__) - {"__version__"} == public


def test_every_public_object_has_a_docstring() -> None:
    for name in bussdcc.__all__:
        obj = getattr(bussdcc, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and inspect.isfunction(member):
                        assert member.__doc__, f"{name}.{attr} has no docstring"
    for name in message.__all__:
        assert getattr(message, name).__doc__, f"message.{name} has no docstring"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    rel_pkg = path.relative_to(SRC.parent).with_suffix("").parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel_pkg[: len(rel_pkg) - node.level])
                if path.name == "__init__.py":
                    base = list(rel_pkg[: len(rel_pkg) - node.level + 1])
                mod = ".".join([*base, node.module] if node.module else base)
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
            elif node.module:
                found.add(node.module)
    return found


def _layer_imports(layer: str) -> dict[str, set[str]]:
    return {str(p.relative_to(SRC)): _imports(p) for p in (SRC / layer).rglob("*.py")}


def test_kernel_imports_neither_side_nor_zmq() -> None:
    for path, mods in _layer_imports("kernel").items():
        bad = {x for x in mods if x.startswith(("bussdcc.supervisor", "bussdcc.worker", "zmq"))}
        assert not bad, f"kernel/{path} imports {bad}"


def test_worker_and_supervisor_never_import_each_other() -> None:
    for path, mods in _layer_imports("worker").items():
        assert not {x for x in mods if x.startswith("bussdcc.supervisor")}, f"worker/{path}"
    for path, mods in _layer_imports("supervisor").items():
        assert not {x for x in mods if x.startswith("bussdcc.worker")}, f"supervisor/{path}"


def test_the_server_never_imports_the_command_line() -> None:
    for layer in ("kernel", "supervisor", "worker"):
        for path, mods in _layer_imports(layer).items():
            assert not {x for x in mods if x.startswith("bussdcc.cli")}, f"{layer}/{path} imports the command line"


def test_the_client_imports_nothing_of_the_server() -> None:
    # It finds and talks to a runtime through the layout and the wire the kernel defines.
    for name in ("_client.py", "_commands.py", "_render.py"):
        mods = _imports(SRC / "cli" / name)
        assert not {x for x in mods if x.startswith("bussdcc.supervisor")}, f"cli/{name}"


def test_layer_check_sees_relative_imports() -> None:
    # Guards the guard: the walker must resolve `from ..kernel import x`.
    mods = _imports(SRC / "worker" / "_host.py")
    assert "bussdcc.kernel" in mods


def test_private_modules_are_underscored() -> None:
    allowed = {"__init__.py", "__main__.py", "protocol.py", "errors.py", "message.py", "py.typed"}
    for path in SRC.rglob("*.py"):
        assert path.name.startswith("_") or path.name in allowed, f"public module {path.relative_to(SRC)}"
