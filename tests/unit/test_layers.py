"""The layer picture as a check: no import loops, and no arrow back up to the front door.

`lint-imports` (run by `make lint`) checks the layers between packages; these tests check every
module, counting imports made inside functions (lazy imports run too, only later). Type-only
imports (under ``TYPE_CHECKING``) do not count: they never run.
"""

from __future__ import annotations

import grimp
import pytest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

#: The layers below the faces: none of them may import the ``dibs`` package itself (the
#: Python API, which stands above them all and would import them back).
BELOW_THE_FRONT_DOOR = ("ground", "core", "store", "service", "integrations")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("dibs", exclude_type_checking_imports=True)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every set of modules that import each other in a loop (the strongly connected
    components of more than one module, or a module importing itself), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def imports(module: str) -> Iterator[str]:
        return iter(sorted(graph.find_modules_directly_imported_by(module)))

    def visit(start: str) -> None:
        # Tarjan's algorithm, with an explicit stack: the graph may be deeper than recursion.
        work = [(start, imports(start))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, imports(child)))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                loops_to_itself = graph.direct_import_exists(importer=module, imported=module)
                if len(component) > 1 or loops_to_itself:
                    found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(found)


def test_no_module_imports_itself_back_through_a_loop(graph: grimp.ImportGraph) -> None:
    """No import loop anywhere in dibs: a module never reaches itself through its imports."""
    assert [] == import_cycles(graph)


def test_a_loop_is_found_when_there_is_one() -> None:
    """The loop finder sees a loop of three modules and leaves the module outside it alone."""
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")]:
        graph.add_import(importer=importer, imported=imported)
    assert [["p.a", "p.b", "p.c"]] == import_cycles(graph)


def test_no_lower_layer_imports_the_front_door(graph: grimp.ImportGraph) -> None:
    """Nothing under dibs.ground, core, store, service or integrations imports ``dibs``
    itself (``import dibs``, ``from dibs import X``): the arrow would point back up."""
    offenders = sorted(
        module
        for layer in BELOW_THE_FRONT_DOOR
        for module in graph.find_descendants(f"dibs.{layer}") | {f"dibs.{layer}"}
        if graph.direct_import_exists(importer=module, imported="dibs")
    )
    assert [] == offenders
