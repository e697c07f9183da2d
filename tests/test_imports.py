"""The layering holds: no import cycle among latentdiff's modules, function-level imports included
(benchmarks/import_cycles.py walks the source with ast)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "benchmarks" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_cycles", module)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_among_latentdiff_modules():
    tool = _tool()
    graph = tool.import_graph(tool.module_files(tool.PACKAGES))
    assert "latentdiff.io" in graph and "latentdiff.pipelines.text_to_image" in graph and "latentdiff.train.common" in graph
    assert "latentdiff.hub" in graph["latentdiff.io"]  # model resolution sits above the Hub
    found = tool.cycles(graph)
    assert not found, "\n".join(tool.describe(c, graph) for c in found)


def test_the_walk_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import os\n\ndef g():\n    from ..a import x\n")
    (pkg / "d.py").write_text("from pkg.a import y\n")  # imports into the cycle, is not part of it
    tool = _tool()
    graph = tool.import_graph(tool.module_files({"pkg": pkg}))
    assert graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert tool.cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
