"""The runtime package must stay torch-free: importing every mmkp_edge module loads neither torch
nor transformers (checked in a fresh interpreter, since this test session may have loaded them)."""

import pkgutil
import subprocess
import sys

import mmkp_edge


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(mmkp_edge.__path__, "mmkp_edge."))


def test_every_module_is_found():
    mods = all_modules()
    assert "mmkp_edge.posts" in mods and "mmkp_edge.cli.score" in mods
    assert {"mmkp_edge.serve.app", "mmkp_edge.serve.scheduler", "mmkp_edge.cli.serve"} <= set(mods)


def test_importing_mmkp_edge_loads_no_torch_or_transformers():
    code = (
        "import importlib, sys\n"
        f"for m in {all_modules()!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'peft', 'train', 'export', 'bench'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"mmkp_edge pulled in: {out.stdout.strip()}"
