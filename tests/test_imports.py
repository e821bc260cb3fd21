"""The layering (DESIGN.md §1): mmkp_edge ← train ← export ← bench / demo, checked two ways.

- Statically: every import statement of every module, including those inside function bodies (where
  a hidden cycle would otherwise sit unseen until that function runs), and string arguments of
  `importlib.import_module`, may name only the packages its layer is allowed to see.
- Dynamically: importing every mmkp_edge module in a fresh interpreter loads neither torch nor
  transformers nor any other layer (this test session may have loaded them already).
"""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import mmkp_edge

ROOT = Path(__file__).resolve().parents[1]
# layer → the top-level project packages its modules may import (itself included)
ALLOWED = {
    "mmkp_edge": {"mmkp_edge"},
    "train": {"mmkp_edge", "train"},
    "export": {"mmkp_edge", "train", "export"},
    "bench": {"mmkp_edge", "train", "export", "bench"},
    "demo": {"mmkp_edge", "train", "export", "demo"},
}
PROJECT = set(ALLOWED) | {"tests"}


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(mmkp_edge.__path__, "mmkp_edge."))


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `tree`, at any depth; relative imports stay
    inside their own package and are skipped."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
            found.append((node.lineno, node.args[0].value))
    return found


def layering_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((root / layer).rglob("*.py")):
            for line, name in imported_names(ast.parse(path.read_text(encoding="utf-8"))):
                top = name.split(".")[0]
                if top in PROJECT and top not in allowed:
                    bad.append(f"{path.relative_to(root)}:{line} imports {name}")
    return bad


def test_every_module_is_found():
    mods = all_modules()
    assert "mmkp_edge.posts" in mods and "mmkp_edge.cli.score" in mods
    assert {"mmkp_edge.serve.app", "mmkp_edge.serve.scheduler", "mmkp_edge.cli.serve"} <= set(mods)


def test_no_layer_imports_a_layer_above_it():
    assert layering_violations() == []


def test_the_scan_sees_imports_inside_functions(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.py").write_text(
        "import os\n\ndef f():\n    from export.exporter import export_bundle\n"
        "    import importlib\n    importlib.import_module('demo.run')\n")
    assert layering_violations(tmp_path) == ["train/x.py:4 imports export.exporter",
                                             "train/x.py:6 imports demo.run"]


def test_importing_mmkp_edge_loads_no_torch_or_transformers():
    code = (
        "import importlib, sys\n"
        f"for m in {all_modules()!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'peft', 'train', 'export', 'bench', 'demo'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"mmkp_edge pulled in: {out.stdout.strip()}"


def test_mmkp_train_has_the_demo_and_train_cli_does_not_import_it():
    code = ("import sys\nimport train.cli\nassert 'demo' not in train.cli.cli.commands\n"
            "assert not any(m.split('.')[0] in ('export', 'demo') for m in sys.modules)\n"
            "import demo.cli\nprint(sorted(demo.cli.cli.commands))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'demo'" in out.stdout and "'sft'" in out.stdout
