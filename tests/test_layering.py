"""The layer diagram of docs/architecture.md, enforced: every import inside the package points down (or
sideways within one unit), and no module takes a private name from another module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "denoisekit"

#: Units bottom to top; a unit may import its own modules and any unit of a lower layer. A unit is a
#: first-level module or folder of the package, or a sub-folder named here (``samplers.tuning``).
LAYERS: list[tuple[str, ...]] = [
    ("_utils", "_threads"),                            # small tensor helpers; threads and OpenMP (no torch)
    ("io", "options"),                                 # files (atomic, JSON, safetensors, cache); typed options
    ("engine",),                                       # the training loop, checkpoints, data stream, EMA, logs
    ("process",),                                      # noising maths
    ("schedules",),                                    # step grids
    ("prediction",),                                   # parameterisations: a table, and the Denoiser adapter
    ("denoiser",),                                     # the denoiser contract and the wrapper base
    ("condition",),                                    # the one condition schema: keys, null/batch/index/check
    ("samplers", "losses"),                            # pure algorithms over the contract
    ("samplers.tuning", "oracle"),                     # grids and solvers fitted to a model; the exact GMM
    ("guidance",),                                     # denoiser wrappers
    ("score_distillation",),                           # SDS, PDS, VSD: losses over a guided denoiser
    ("data", "models"),                                # datasets and operators; networks
    ("eval",),                                         # metrics and their feature networks
    ("conditioning",),                                 # condition kinds: validation, network wrapping, previews
    ("generation",),                                   # a loaded run and generate()
    ("train",),                                        # the engine, recipes, run layout
    ("pipelines", "compat"),                           # user tasks over generate(); other libraries' formats
    ("ui",),                                           # the web UI (denoisekit ui starts it from the CLI)
    ("cli", "api"),                                    # commands, denoisekit.load
]
LEVEL = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def unit_of(module: str) -> str | None:
    """The layer unit of ``denoisekit.a.b...``: the longest dotted prefix named in LAYERS."""
    parts = module.split(".")[1:]
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in LEVEL:
            return ".".join(parts[:k])
    return None


def _imports(module: str, path: Path):
    """``(line, target module, imported names)`` of every import of package code in ``module``."""
    tree = ast.parse(path.read_text())
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("denoisekit"):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    yield node.lineno, (sub if sub in MODULES else target), alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("denoisekit"):
                    yield node.lineno, alias.name, None


def test_every_unit_has_a_layer():
    missing = sorted({m for m in MODULES if m != "denoisekit" and unit_of(m) is None})
    assert not missing, f"modules outside the layer table (add their unit to LAYERS): {missing}"


def test_imports_point_down_the_layers():
    bad = []
    for module, path in MODULES.items():
        if module == "denoisekit":
            continue  # the package's __init__ re-exports the core
        here = unit_of(module)
        for line, target, _ in _imports(module, path):
            there = unit_of(target)
            if there is None or there == here or target == "denoisekit":
                continue
            if LEVEL[there] >= LEVEL[here]:
                bad.append(f"{path.relative_to(SRC)}:{line} ({here}, layer {LEVEL[here]}) imports {target} "
                           f"({there}, layer {LEVEL[there]})")
    assert not bad, "imports up or sideways across the layer diagram:\n" + "\n".join(bad)


def _private_module(target: str, importer: str) -> bool:
    """``target`` is a private module (``samplers._common``) of a package that ``importer`` is not in."""
    parts = target.split(".")
    for k, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__") and k > 1:  # denoisekit._utils is the shared helper
            return not importer.startswith(".".join(parts[:k]) + ".")
    return False


def test_no_private_names_across_modules():
    bad = []
    for module, path in MODULES.items():
        for line, target, name in _imports(module, path):
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                bad.append(f"{path.relative_to(SRC)}:{line} takes {name} from {target}")
            elif _private_module(target, module):
                bad.append(f"{path.relative_to(SRC)}:{line} imports the private module {target}")
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", ["denoisekit.train.trainer", "denoisekit.cli.image"])
def test_the_checker_sees_real_imports(module):
    """The scan is not vacuous: high modules do import lower layers."""
    assert any(unit_of(t) not in (None, unit_of(module)) for _, t, _ in _imports(module, MODULES[module]))
