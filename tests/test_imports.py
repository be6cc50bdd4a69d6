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


# --- the layering of docs/design.md ----------------------------------------------------------------------
# Floors from the bottom; a module may import its own group and any group on a LOWER floor, nothing on its
# own floor from another group and nothing above. Keep in step with the map in docs/design.md.
CORE = ("cmidps", "diffusion", "prior", "sampling", "cmi", "linalg", "errors", "presets", "outputs")
FLOORS = [
    CORE,                                   # 0: the core every part uses
    ("operators", "data", "models"),        # 1: measurements, data files, networks
    ("methods", "metrics"),                 # 2: the sampler rules / solvers; the image metrics
    ("restore",),                           # 3: the Python API (measure, restore)
    ("commands",),                          # 4: the commands and their shared options
    ("training", "bench"),                  # 5: cmidps train, cmidps bench *: commands built on 4
    ("cli",),                               # 6: the entry point, registers 4 and 5
]
FLOOR = {g: i for i, groups in enumerate(FLOORS) for g in groups}


def _group(module: str) -> str:
    """``cmidps.operators.blur`` -> ``operators``; top-level modules are their own group; the core's
    modules are one group, ``core``."""
    parts = module.split(".")
    g = parts[1] if len(parts) > 1 else "cmidps"
    return "core" if g in CORE else g


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOOR[parts[1] if len(parts) > 1 else "cmidps"]


def _module_graph() -> dict:
    """{module: set of cmidps modules it imports} (names within modules resolved to their module)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imp in _imports(name, path):
            while imp not in mods and "." in imp:
                imp = imp.rpartition(".")[0]
            if imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph


def test_every_module_has_a_floor():
    """A new folder or top-level module must be placed on a floor here and in docs/design.md."""
    missing = sorted({m.split(".")[1] for m in _modules() if "." in m and m.split(".")[1] not in FLOOR})
    assert missing == [], f"place {missing} on a floor (tests/test_imports.py FLOORS, docs/design.md)"


def test_lower_floors_never_import_upper_ones():
    bad = []
    for name, deps in _module_graph().items():
        for dep in deps:
            if _group(dep) == _group(name):
                continue
            if _floor(dep) >= _floor(name):
                bad.append(f"{name} (floor {_floor(name)}) imports {dep} (floor {_floor(dep)})")
    assert bad == [], "\n".join(sorted(bad))


def test_the_core_imports_only_the_core():
    upper = ("operators", "methods", "commands", "training", "bench", "data", "models", "metrics", "restore", "cli")
    bad = [f"{n} imports {d}" for n, deps in _module_graph().items() if _group(n) == "core"
           for d in deps if d.split(".")[1:2] and d.split(".")[1] in upper]
    assert bad == []


def test_commands_never_import_bench_or_the_entry_point():
    bad = [f"{n} imports {d}" for n, deps in _module_graph().items() if n.startswith("cmidps.commands")
           for d in deps if d.startswith(("cmidps.bench", "cmidps.cli"))]
    assert bad == []


def test_no_import_circle():
    """No cycle in the module graph, counting imports at any depth of a file (function-level ones too)."""
    graph = _module_graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # the package's __init__ files importing their own children is not a circle
    cycles = [c for c in cycles if not all(p.split(".")[:2] == c.split(" -> ")[0].split(".")[:2]
                                           and (p.count(".") <= 1) for p in c.split(" -> "))]
    assert cycles == [], "\n".join(cycles)


# --- the public API: every name the README and docs use -------------------------------------------------
ROOT = PKG.parent
PUBLIC = [
    "cmidps.restore.restore", "cmidps.restore.measure", "cmidps.restore.parse_method",
    "cmidps.restore.measurement_image", "cmidps.restore.PresetStepsWarning",
    "cmidps.models.loading.load_prior", "cmidps.cmi.CMIConfig", "cmidps.cmi.cmi_gradient",
    "cmidps.operators.make_operator", "cmidps.operators.TASKS", "cmidps.operators.LinearOperator",
    "cmidps.operators.DenseOperator", "cmidps.operators.MaskOperator", "cmidps.operators.ReflectBlur",
    "cmidps.operators.nonlinear.PhaseRetrieval", "cmidps.operators.nonlinear.HighDynamicRange",
    "cmidps.operators.nonlinear.NonlinearOperator", "cmidps.operators.motion.load_kernel",
    "cmidps.sampling.sample", "cmidps.sampling.StepState",
    "cmidps.methods.samplers.dps", "cmidps.methods.samplers.pigdm", "cmidps.methods.samplers.mcg",
    "cmidps.methods.samplers.dsg", "cmidps.methods.samplers.RULES", "cmidps.methods.samplers.make_rule",
    "cmidps.methods.solvers.ddnm", "cmidps.methods.solvers.ddnm_plus", "cmidps.methods.solvers.ddrm",
    "cmidps.methods.solvers.diffpir", "cmidps.methods.solvers.tmpd", "cmidps.methods.solvers.svd_form",
    "cmidps.methods.drivers.daps", "cmidps.methods.drivers.reddiff", "cmidps.methods.drivers.DRIVERS",
    "cmidps.presets.PRESETS", "cmidps.presets.get_preset", "cmidps.prior.to_model", "cmidps.prior.from_model",
    "cmidps.prior.NetworkPrior", "cmidps.prior.GaussianMixturePrior",
    "cmidps.data.load_mnist", "cmidps.data.load_heldout",
    "cmidps.metrics.compute_metrics", "cmidps.metrics.dataset_metrics", "cmidps.metrics.psnr", "cmidps.metrics.ssim",
]


def _resolve(dotted: str):
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def _doc_names() -> set:
    """``cmidps.a.b`` names in README.md and docs/*.md, and the names of their Python ``import`` lines."""
    import re

    names = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        names.update(re.findall(r"\bcmidps(?:\.[A-Za-z_]\w*)+", text))
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            try:
                tree = ast.parse(block)
            except SyntaxError:  # an interface sketch, not a program: its one-line imports still count
                tree = ast.parse("\n".join(ln.strip() for ln in block.splitlines()
                                           if re.match(r"\s*from cmidps[\w.]* import [\w, ]+$", ln)))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cmidps"):
                    names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n.rstrip(".") for n in names if not n.endswith((".py", ".md", ".json"))}


def test_the_public_api_imports():
    bad = []
    for name in PUBLIC:
        try:
            _resolve(name)
        except (ImportError, AttributeError) as exc:
            bad.append(f"{name}: {exc}")
    assert bad == []


def test_every_name_the_docs_use_exists():
    names = _doc_names()
    assert "cmidps.models.loading.load_prior" in names and "cmidps.restore.restore" in names
    bad = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as exc:
            bad.append(f"{name}: {type(exc).__name__}: {exc}")
    assert bad == [], "names in README.md / docs/*.md that do not import:\n" + "\n".join(bad)


def _design_table_paths() -> set:
    """The module paths the module table of docs/design.md names (relative to cmidps/): ``a/b.py``;
    a row ``operators/inpaint.py``, ``blur.py`` names siblings; a folder ``metrics/`` names all of it."""
    import re

    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("## Module map"):]
    table = table[:table.index("\n## ", 1)]
    named = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        folder = ""
        for item in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if item.endswith("/"):
                named.add(item)
                continue
            if "/" in item:
                folder = item.rpartition("/")[0] + "/"
                named.add(item)
            else:
                named.add(folder + item)
    return named


def test_design_md_names_every_module():
    """The tree matches the map: every module file is in docs/design.md's module table (or its folder is),
    and every file the table names exists."""
    named = _design_table_paths()
    files = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
             if p.name not in ("__init__.py", "__main__.py") and "assets" not in p.parts}
    missing = sorted(f for f in files if f not in named and not any(f.startswith(d) for d in named if d.endswith("/")))
    assert missing == [], f"add these modules to the module table of docs/design.md: {missing}"
    stale = sorted(n for n in named if not n.endswith("/") and n not in files)
    assert stale == [], f"docs/design.md names modules that do not exist: {stale}"


def _design_may_import() -> dict:
    """{module path relative to cmidps/ (or a folder ending in /): set of allowed tokens} from the
    module table of docs/design.md."""
    import re

    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("## Module map"):]
    table = table[:table.index("\n## ", 1)]
    rules = {}
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        allowed = {t.strip() for t in re.split(r"[,(]", cells[-1].replace(")", "")) if t.strip()}
        allowed = {t.split(" ")[0] for t in allowed if t not in ("–", "-")}
        folder = ""
        for item in re.findall(r"`([^`]+)`", cells[0]):
            if "/" in item and not item.endswith("/"):
                folder = item.rpartition("/")[0] + "/"
            rules[item if ("/" in item or item.endswith(".py")) and item.startswith(folder) else folder + item] = allowed
    return rules


def test_design_md_may_import_is_what_the_code_imports():
    """Every import of a module is allowed by its row's "may import" cell in docs/design.md (its own
    folder and the package itself always are)."""
    rules = _design_may_import()
    bad = []
    for name, deps in _module_graph().items():
        parts = name.split(".")[1:]
        if not parts:
            continue
        rel = "/".join(parts) + ".py"
        row = rules.get(rel)
        if row is None:
            folder = next((f for f in rules if f.endswith("/") and rel.startswith(f)), None)
            if folder is None:
                continue  # __init__ of a folder, or a module the other test reports
            row = rules[folder]
        own = parts[0] if len(parts) > 1 else None
        for dep in deps:
            d = ".".join(dep.split(".")[1:])
            if not d or (own and d.split(".")[0] == own):
                continue
            ok = any(d == t or d.startswith(t + ".") or (t.endswith(".*") and d.startswith(t[:-2]))
                     or t in ("any", "everything") for t in row)
            if not ok:
                bad.append(f"{rel} imports {d}, not in its row {sorted(row)}")
    assert bad == [], "docs/design.md's 'may import' column is out of date:\n" + "\n".join(sorted(bad))
