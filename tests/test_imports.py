"""Enforce the import graph of docs/architecture.md / STYLE.md by walking every module's AST.

Each arrow "A -> B" means modules of component A may import modules of component B. A component is
a top-level module (``moldiff/geometry.py`` -> ``geometry``) or sub-package (``moldiff/nn/*`` -> ``nn``);
imports inside one component are always allowed. Every import statement counts: module level,
inside functions (lazy imports) and under ``if TYPE_CHECKING:``, plus ``importlib.import_module``
calls with a literal name. To change the architecture, edit :data:`ALLOWED` (one line per component).
Components listed here that do not exist yet are skipped; a module that is *not* listed fails
:func:`test_every_component_is_in_the_table` until someone decides where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ANY = "*"  # may import every component except cli
LEAVES = frozenset({"constants", "config", "types", "geometry", "io", "runtime", "argtypes"})

#: component -> components it may import.  ``__init__`` is the root package (the public API).
ALLOWED: dict[str, frozenset[str] | str] = {
    "constants": LEAVES,  # leaves import nothing from moldiff except each other
    "config": LEAVES,
    "types": LEAVES,
    "geometry": LEAVES,
    "io": LEAVES,
    "runtime": LEAVES,
    "argtypes": LEAVES,
    "checkpoint": LEAVES,  # checkpoint files (plain data + tensors): read by inference and training alike
    "data": frozenset({"constants", "config", "geometry", "io", "types", "argtypes"}),
    "nn": frozenset({"types", "geometry"}),
    "diffusion": frozenset({"types", "geometry"}),
    "sampling": frozenset({"diffusion", "types", "geometry", "constants"}),
    "evaluation": frozenset({"constants", "io"}),
    "models": frozenset({"nn", "diffusion", "config", "types", "geometry", "conditioning", "constants"}),
    "training": frozenset(
        {
            "models",
            "data",
            "nn",
            "diffusion",
            "sampling",
            "evaluation",
            "config",
            "types",
            "geometry",
            "constants",
            "io",
            "conditioning",
            "checkpoint",
        }
    ),
    "conditioning": frozenset({"sampling", "config", "constants", "types", "geometry"}),
    "relax": frozenset({"constants", "io"}),  # molecules in, molecules out (RDKit / tblite); no models
    "fragments": frozenset({"constants", "io", "sampling", "evaluation", "pipeline"}),  # inpainting inputs
    "model_card": frozenset({"checkpoint", "pipeline"}),  # what a checkpoint can do (moldiff models)
    "pipeline": ANY,
    "cli": ANY,
    "__init__": ANY,
}

#: Third-party packages a component must never import (STYLE.md: evaluation is numpy/RDKit/pandas only,
#: constants is pure data, the maths never touches RDKit).
FORBIDDEN_EXTERNAL: dict[str, frozenset[str]] = {
    "constants": frozenset({"torch", "numpy", "torch_geometric", "e3nn", "rdkit", "pandas"}),
    "runtime": frozenset({"torch", "numpy", "torch_geometric", "e3nn", "rdkit", "pandas"}),
    "config": frozenset({"torch", "torch_geometric", "e3nn", "rdkit", "pandas"}),
    "evaluation": frozenset({"torch", "torch_geometric", "e3nn"}),
    "nn": frozenset({"rdkit"}),
    "diffusion": frozenset({"rdkit"}),
    "sampling": frozenset({"rdkit"}),
    "geometry": frozenset({"rdkit"}),
    "types": frozenset({"rdkit"}),
    "relax": frozenset({"torch", "torch_geometric", "e3nn"}),
    "checkpoint": frozenset({"torch_geometric", "e3nn", "rdkit", "pandas"}),
}

PACKAGE = Path(__file__).resolve().parents[1] / "moldiff"
MODULES = sorted(PACKAGE.rglob("*.py"))


def component_of_file(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_submodule(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


def imported_names(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of everything ``path`` imports, relative imports resolved.

    ``from moldiff import X`` (and ``import moldiff`` followed by ``moldiff.X``) yields ``moldiff.X``
    when ``X`` is a submodule, else ``moldiff`` (the root API); dunder metadata such as ``__version__``
    or ``__file__`` is ignored (the root package is always loaded before any submodule anyway).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = module_name(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    # attributes read from a bare ``import moldiff`` (e.g. ``moldiff.__file__``: metadata, fine)
    root_attrs = sorted(
        {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "moldiff"
        }
    )
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name != "moldiff" or a.asname:
                    out.append((node.lineno, a.name))
                    continue
                for attr in root_attrs:
                    if not (attr.startswith("__") and attr.endswith("__")):
                        out.append((node.lineno, f"moldiff.{attr}" if is_submodule(attr) else "moldiff"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base == "moldiff":
                for a in node.names:
                    if a.name.startswith("__") and a.name.endswith("__"):
                        continue
                    out.append((node.lineno, f"moldiff.{a.name}" if is_submodule(a.name) else "moldiff"))
            else:
                out.append((node.lineno, base))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.lineno, node.args[0].value))
    return out


def target_component(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "moldiff":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def allowed_targets(component: str) -> frozenset[str] | str:
    return ALLOWED[component]


# ---------------------------------------------------------------------------- the table itself
def test_table_is_well_formed():
    names = set(ALLOWED)
    for comp, targets in ALLOWED.items():
        if targets == ANY:
            continue
        assert "cli" not in targets, f"{comp} may not import cli (nothing imports cli)"
        assert targets <= names, f"{comp}: unknown targets {sorted(set(targets) - names)}"
    assert set(FORBIDDEN_EXTERNAL) <= names


def test_every_component_is_in_the_table():
    found = {component_of_file(p) for p in MODULES}
    missing = sorted(found - set(ALLOWED))
    assert not missing, (
        f"moldiff components {missing} are not in tests/test_imports.py::ALLOWED; add one line saying what "
        "each may import (and update docs/architecture.md)"
    )


def test_ast_walker_resolves_relative_and_lazy_imports(tmp_path, monkeypatch):
    src = (
        "from . import egnn\nfrom ..geometry import remove_mean\nimport moldiff.types\n"
        "def f():\n    from moldiff.diffusion import process\n"
        "    importlib.import_module('moldiff.cli')\nfrom moldiff import __version__, nn\n"
        "import moldiff\nmoldiff.__file__\nmoldiff.Sampler\nmoldiff.nn\n"
    )
    fake_pkg = tmp_path / "moldiff"
    (fake_pkg / "nn").mkdir(parents=True)
    (fake_pkg / "nn" / "__init__.py").write_text("")
    (fake_pkg / "nn" / "fake.py").write_text(src)
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake_pkg)
    names = sorted(n for _, n in imported_names(fake_pkg / "nn" / "fake.py"))
    assert names == sorted(
        [
            "moldiff.nn",
            "moldiff.geometry",
            "moldiff.types",
            "moldiff.diffusion",
            "moldiff.cli",
            "moldiff.nn",
            "moldiff",
            "moldiff.nn",
        ]
    )


# ---------------------------------------------------------------------------- the graph
@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE.parent)) for p in MODULES])
def test_module_follows_import_graph(path):
    comp = component_of_file(path)
    if comp not in ALLOWED:
        pytest.skip(f"{comp} not in ALLOWED (reported by test_every_component_is_in_the_table)")
    targets = allowed_targets(comp)
    bad = []
    for line, dotted in imported_names(path):
        tgt = target_component(dotted)
        if tgt is None or tgt == comp:
            continue
        ok = tgt != "cli" and (targets == ANY or tgt in targets)
        if not ok:
            bad.append(f"  line {line}: imports {dotted} ({comp} -> {tgt})")
    allowed = "anything but cli" if targets == ANY else sorted(targets)
    assert not bad, (
        f"{path.relative_to(PACKAGE.parent)} breaks the import graph; {comp} may import {allowed}:\n"
        + ("\n".join(bad))
    )


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE.parent)) for p in MODULES])
def test_module_avoids_forbidden_third_party(path):
    comp = component_of_file(path)
    forbidden = FORBIDDEN_EXTERNAL.get(comp, frozenset())
    bad = [
        f"  line {line}: {dotted}"
        for line, dotted in imported_names(path)
        if dotted.split(".")[0] in forbidden
    ]
    assert not bad, (
        f"{path.relative_to(PACKAGE.parent)} ({comp}) must not import {sorted(forbidden)}:\n" + "\n".join(bad)
    )


# ---------------------------------------------------------------------------- inference without training
_INFERENCE_ONLY = """
import sys, tempfile, os
import moldiff
from moldiff.cli import main
model = moldiff.load_model("qm9")
model.sample_raw(2, steps=2, seed=0)
with tempfile.TemporaryDirectory() as d:
    assert main(["sample", "--model", "qm9", "--num", "2", "--steps", "2", "--out", os.path.join(d, "a.xyz")]) == 0
print(sorted(m for m in sys.modules if m.startswith("moldiff.training")))
"""


def test_inference_does_not_import_training():
    """Loading a checkpoint and sampling (API and ``moldiff sample``) never imports ``moldiff.training``."""
    import subprocess
    import sys

    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _INFERENCE_ONLY], capture_output=True, text=True, env=env,
                         cwd=PACKAGE.parent, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout
