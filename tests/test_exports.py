"""One public surface, documented; and the architecture's import rules."""

from __future__ import annotations
import __future__

import ast
import inspect
from pathlib import Path
from types import ModuleType

import bussdcc
from bussdcc import errors, message

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


PUBLIC = (bussdcc, message, errors)
PRIVATE = {"cli", "kernel", "supervisor", "worker"}


def _exported() -> list[tuple[str, str, object]]:
    return [(mod.__name__, name, getattr(mod, name)) for mod in PUBLIC for name in mod.__all__]


def test_all_is_exactly_the_public_names() -> None:
    for mod in PUBLIC:
        public = {
            n
            for n, obj in vars(mod).items()
            if not n.startswith("_") and not inspect.ismodule(obj) and not isinstance(obj, __future__._Feature)
        }
        modules = {n for n in mod.__all__ if inspect.ismodule(getattr(mod, n))}
        assert set(mod.__all__) - {"__version__"} - modules == public, mod.__name__
    assert not set(bussdcc.__all__) & PRIVATE


def test_every_public_name_is_exported_exactly_once() -> None:
    # bussdcc: what a system is built from; bussdcc.message: the runtime's own messages;
    # bussdcc.errors: every exception. One place each, so there is one way to import it.
    seen: dict[int, str] = {}
    names: dict[str, str] = {}
    for module, name, obj in _exported():
        if inspect.ismodule(obj) or name == "__version__":
            continue
        where = f"{module}.{name}"
        assert name not in names, f"{name} is exported by {names[name]} and {where}"
        assert id(obj) not in seen, f"{where} is {seen[id(obj)]} exported again"
        names[name] = seen[id(obj)] = where


def test_each_module_exports_its_kind() -> None:
    assert all(inspect.isclass(obj) and issubclass(obj, BaseException) for _, _, obj in _exported_from(errors))
    assert all(inspect.isclass(obj) and issubclass(obj, bussdcc.Message) for _, _, obj in _exported_from(message))
    for _, name, obj in _exported_from(bussdcc):
        assert not (inspect.isclass(obj) and issubclass(obj, BaseException)), f"{name} belongs in bussdcc.errors"
    assert {"Strategy", "RestartPolicy", "Message", "Severity"} <= set(bussdcc.__all__)
    assert {"errors", "message"} <= set(bussdcc.__all__)


def _exported_from(mod: ModuleType) -> list[tuple[str, str, object]]:
    return [(m, n, o) for m, n, o in _exported() if m == mod.__name__ and not inspect.ismodule(o)]


def _alias_comment(name: str) -> str:
    # A type alias cannot carry a docstring: its `#:` comment, on the line above it, is its documentation.
    for path in (SRC / "kernel").glob("*.py"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith(f"{name}: TypeAlias") and i and lines[i - 1].startswith("#: "):
                return lines[i - 1][3:]
    return ""


def _one_line(doc: str | None) -> bool:
    return bool(doc and doc.strip() and doc.strip().splitlines()[0].strip())


def test_every_public_name_has_a_one_line_docstring() -> None:
    for module, name, obj in _exported():
        if name == "__version__":
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            assert _one_line(obj.__doc__), f"{module}.{name} has no docstring"
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and inspect.isfunction(member):
                        assert _one_line(member.__doc__), f"{module}.{name}.{attr} has no docstring"
        else:
            assert _alias_comment(name), f"{module}.{name} (a type alias) has no #: comment"


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
