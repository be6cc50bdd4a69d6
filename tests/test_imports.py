"""The module map: nobody imports the entry point, and every module imports on its own (no import circle)."""
import ast
import subprocess
import sys
from pathlib import Path

import cmidps

PKG = Path(cmidps.__file__).parent


def _modules() -> dict:
    """{dotted module name: path} of every module of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set:
    """The cmidps modules (and names within them) that ``path`` imports, at any depth of the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m == "cmidps" or m.startswith("cmidps.")}


def test_nobody_imports_the_entry_point():
    importers = [name for name, path in _modules().items() if name != "cmidps.cli"
                 and "cmidps.cli" in _imports(name, path)]
    assert importers == []


def test_the_import_walk_sees_relative_imports():
    mods = _modules()
    assert "cmidps.commands.options" in _imports("cmidps.cli", mods["cmidps.cli"])
    assert "cmidps.commands.options" in _imports("cmidps.bench.images", mods["cmidps.bench.images"])


def test_every_module_imports_alone():
    """Each module imported first, in a fresh package state (an import circle fails as a partially
    initialised module); one interpreter, so torch is imported once."""
    names = [n for n in _modules() if not n.endswith("__main__")]
    code = (
        "import sys, importlib\n"
        "import cmidps, torch\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'cmidps' or m.startswith('cmidps.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PKG.parent)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
