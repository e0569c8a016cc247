"""The house rules of the package layout: data flows one way (file -> task -> learner -> fit ->
store), learners, ``fit`` and the trainer never name a signal type, and modules stay small."""
import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "metainr"
MODALITY = re.compile(r"\b(image|images|ct|sinogram|sinograms|pixel|pixels|phantom|phantoms)\b", re.IGNORECASE)


def _modules(*parts):
    for part in parts:
        path = PKG / part
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imports(path):
    """Top-level package names (under metainr) that a module imports, absolute or relative."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG).parts[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[: len(rel) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from .. import x": x are modules of the package
                    names.update(a.name for a in node.names)
                else:
                    names.add(target[0])
            elif node.module and node.module.startswith("metainr."):
                names.add(node.module.split(".")[1])
    return names


def test_no_signal_type_is_named_in_learners_fit_or_the_trainer():
    hits = [f"{p.relative_to(PKG)}:{i}: {line.strip()}" for p in _modules("meta", "fit.py", "train")
            for i, line in enumerate(p.read_text().splitlines(), 1) if MODALITY.search(line)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("layer, forbidden", [
    ("fields", {"tasks", "data", "meta", "fit", "train", "cli"}),
    ("data", {"tasks", "meta", "fit", "train", "cli"}),
    ("tasks", {"meta", "fit", "train", "cli"}),
    ("meta", {"fit", "train", "cli"}),
    ("inner_loop.py", {"meta", "fit", "train", "store", "cli"}),
    ("fit.py", {"meta", "train", "store", "cli"}),
    ("train", {"store", "cli"}),
    ("store", {"cli"}),
    ("zoo", {"fields", "tasks", "meta", "fit", "train", "store", "cli"}),
])
def test_nothing_imports_upward(layer, forbidden):
    bad = {str(p.relative_to(PKG)): sorted(_imports(p) & forbidden) for p in _modules(layer)}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_modules_stay_small():
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not big, big
