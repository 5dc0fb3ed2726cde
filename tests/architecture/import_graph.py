"""The project's import graph, read from the source with `ast`: every `import` and `from ... import`,
at module level or inside functions, including those under `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("model", "index_store", "trainer", "service")


@dataclass(frozen=True)
class Import:
    """One import statement: the importing module, its file and line, and the module it names."""

    importer: str
    path: Path
    line: int
    imported: str

    @property
    def package(self) -> str:
        """The top-level package of the imported module."""
        return self.imported.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.imported}"


def module_name(path: Path) -> str:
    """The dotted module name of a source file under the repository root."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files(package: str) -> list[Path]:
    """Every Python file of a top-level package."""
    return sorted((REPO_ROOT / package).rglob("*.py"))


def imports_of(path: Path, importer: str | None = None) -> list[Import]:
    """Every import in one file (module `importer`, by default named from its path), with relative
    imports resolved to absolute module names."""
    importer = importer or module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(importer, path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = importer.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if path.name == "__init__.py" else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` names a module too: keep both spellings.
            found.append(Import(importer, path, node.lineno, base))
            found += [Import(importer, path, node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def project_imports() -> list[Import]:
    """Every import of every project package's files."""
    return [entry for package in PACKAGES for path in source_files(package) for entry in imports_of(path)]


def module_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (names that are not modules are dropped)."""
    modules = {module_name(path) for package in PACKAGES for path in source_files(package)}
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for entry in project_imports():
        if entry.imported in modules and entry.imported != entry.importer:
            graph[entry.importer].add(entry.imported)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components
