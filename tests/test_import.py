"""The core imports and runs with only torch and safetensors: optional extras stay leaves."""

import subprocess
import sys
import textwrap


def test_core_imports_and_prunes_without_optional_dependencies():
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torchvision", "matplotlib", "tqdm", "torch_pruning", "transformers", "lightning"}:
                    raise ImportError(f"blocked optional dependency {name}")
        sys.meta_path.insert(0, Block())
        import torch
        from torch import nn
        import torch_lottery
        from torch_lottery import LotteryTicket
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        with LotteryTicket(model, rate=0.5) as t:
            pass
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torchvision", "matplotlib", "tqdm"})
        assert not loaded, loaded
        print("sparsity", t.sparsity)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sparsity 0.5" in out.stdout


def test_public_api_is_explicit():
    import torch_lottery

    assert "LotteryTicket" in torch_lottery.__all__
    for name in torch_lottery.__all__:
        assert hasattr(torch_lottery, name), name


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, read with ast from torch_lottery/**/*.py, lazy imports included.

    Every ``import`` and ``from ... import`` anywhere in a module counts (inside functions and
    ``if TYPE_CHECKING:`` blocks too). ``from . import x`` and ``from torch_lottery import x`` are edges to the
    package root (which runs ``__init__``), plus to ``x`` where ``x`` is a submodule.
    """
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "torch_lottery"
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = ["torch_lottery", *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                wanted = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in wanted:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_graph_finds_lazy_and_relative_imports():
    graph = _import_graph()
    assert "torch_lottery.ticket_file" in graph["torch_lottery.lottery"]  # LotteryTicket.save's lazy import
    assert "torch_lottery.lottery" in graph["torch_lottery.ticket_io"]
    assert "torch_lottery.files" in graph["torch_lottery.ticket_file"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = _import_graph()
    assert _cycles(graph) == []
    # the file layer and the ticket file format never import the engine (nor the package root)
    for lower in ("torch_lottery.files", "torch_lottery.ticket_file", "torch_lottery._version"):
        reach, todo = set(), [lower]
        while todo:
            for dep in graph[todo.pop()] - reach:
                reach.add(dep)
                todo.append(dep)
        assert not reach & {"torch_lottery.lottery", "torch_lottery"}, (lower, sorted(reach))
