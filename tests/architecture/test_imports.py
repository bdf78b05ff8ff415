"""The import contract: which modules may know Rasa and Sanic, and which may know the relay's parts.

docs/architecture.md draws the modules in rings. This test reads every import
of connectors/omnidesk (at the top of a module and inside functions alike) and
fails when a module crosses its ring, or when the imports form a cycle.
"""

import ast
import pathlib
import re
from typing import Dict, List, Optional, Set

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "connectors" / "omnidesk"
FRAMEWORKS = ("rasa", "rasa_sdk", "sanic", "socketio", "engineio")

# The channel's modules that are Rasa's and Sanic's face; every other module of
# channel/ is core and is tested without a server (tests/relay/).
RASA_FACE = {
    "connectors.omnidesk.channel.input",
    "connectors.omnidesk.channel.startup",
    "connectors.omnidesk.channel.routes",
    "connectors.omnidesk.channel.customer",
    "connectors.omnidesk.channel.rasa_bot",
    "connectors.omnidesk.channel.rasa_compat",
    "connectors.omnidesk.channel.incoming",
}
# The lines to the customer, one module per channel, know that channel's Rasa class.
LINES = "connectors.omnidesk.channel.lines"


def is_face(name: str) -> bool:
    return name in RASA_FACE or name == LINES or name.startswith(LINES + ".")


# The relay's own parts: only the relay (and its parts among themselves) use them.
RELAY_PARTS = {
    "connectors.omnidesk.channel.turns",
    "connectors.omnidesk.channel.notices",
    "connectors.omnidesk.channel.record",
}
RELAY_SIDE = RELAY_PARTS | {"connectors.omnidesk.channel.relay"}


def module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: pathlib.Path, known: Set[str] = frozenset()) -> Set[str]:  # type: ignore[assignment]
    """Every module ``path`` imports, anywhere in it, as absolute dotted names.

    ``from package import module`` counts as importing the module, not the
    package's ``__init__`` (``known`` tells modules from other names).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            if not submodules & known:
                names.add(node.module)
            names.update(submodules)
    return names


def modules() -> Dict[str, Set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    found = {module_name(p): imports_of(p, known) for p in paths}
    assert len(found) > 20, "the package was not found"
    return found


def ours(imported: Set[str], known: Set[str]) -> Set[str]:
    """The package's own modules among ``imported`` (``from x import name`` counts x)."""
    return {name for name in imported if name in known}


def frameworks_in(imported: Set[str]) -> List[str]:
    return sorted(n for n in imported if n.split(".", 1)[0] in FRAMEWORKS)


def test_the_core_of_the_channel_imports_neither_rasa_nor_sanic() -> None:
    crossing = {
        name: frameworks_in(imported)
        for name, imported in modules().items()
        if name.startswith("connectors.omnidesk.channel.")
        and not is_face(name)
        and frameworks_in(imported)
    }
    assert crossing == {}


def test_the_modules_both_processes_share_know_no_framework_and_no_channel() -> None:
    shared = {
        name: imported
        for name, imported in modules().items()
        if name.count(".") == 2
        and name not in {"connectors.omnidesk.channel", "connectors.omnidesk.action"}
    }
    assert "connectors.omnidesk.client" in shared
    crossing = {
        name: frameworks_in(imported)
        + sorted(
            n
            for n in imported
            if n.startswith(("connectors.omnidesk.channel", "connectors.omnidesk.action"))
        )
        for name, imported in shared.items()
    }
    assert {name: c for name, c in crossing.items() if c} == {}


def test_the_action_server_imports_nothing_of_the_channel_nor_rasa_itself() -> None:
    # rasa_sdk (and the Sanic it serves on) is the action server's; rasa is not there.
    crossing = {
        name: sorted(
            n
            for n in imported
            if n.startswith("connectors.omnidesk.channel") or n.split(".", 1)[0] == "rasa"
        )
        for name, imported in modules().items()
        if name.startswith("connectors.omnidesk.action")
    }
    assert {name: c for name, c in crossing.items() if c} == {}


def test_nothing_outside_the_relay_reaches_its_parts() -> None:
    known = set(modules())
    reaching = {
        name: sorted(ours(imported, known) & RELAY_PARTS)
        for name, imported in modules().items()
        if name not in RELAY_SIDE
    }
    assert {name: r for name, r in reaching.items() if r} == {}


def test_the_imports_form_no_cycle() -> None:
    graph = modules()
    known = set(graph)
    edges = {name: ours(imported, known) - {name} for name, imported in graph.items()}
    # The package's __init__ files import the channel lazily (PEP 562): no edge.
    cycle = _find_cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def _find_cycle(edges: Dict[str, Set[str]]) -> Optional[List[str]]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize(
    ("imported", "expected"),
    [({"sanic.response"}, ["sanic.response"]), ({"json", "connectors.omnidesk.rules"}, [])],
)
def test_the_contract_sees_a_framework_import(imported: Set[str], expected: List[str]) -> None:
    assert frameworks_in(imported) == expected


def test_the_contract_sees_an_import_inside_a_function(tmp_path: pathlib.Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from sanic import response\n    return response\n")
    assert "sanic" in imports_of(module)


def test_the_contract_sees_a_cycle() -> None:
    edges: Dict[str, Set[str]] = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(edges) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_architecture_page_names_every_module_and_no_module_that_is_gone() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    files = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    missing = sorted(
        str(p.relative_to(PACKAGE))
        for p in files
        if f"`{p.name}`" not in page and f"{p.relative_to(ROOT)}`" not in page
    )
    assert missing == [], "docs/architecture.md does not name these modules"

    named = set(re.findall(r"`(?:[\w./]+/)?([a-z_]+\.py)`", page))
    existing = {p.name for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    assert sorted(named - existing) == [], "docs/architecture.md names modules that do not exist"
