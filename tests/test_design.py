"""docs/design.md §5 is the map of the package: it must name every module, and no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seco_labels"


def mapped_paths(text: str) -> set[str]:
    """The paths the §5 tree names, as ``seco_labels/<folder>/<module>.py`` (folders end in ``/``).

    A tree line is ``<indent><name><two or more spaces><description>``; its indent (2 spaces per level) says which
    folder it sits in. Continuation lines (indent past the name column) are skipped.
    """
    section = text[text.index("## 5. Package layout"):text.index("## 6.")]
    block = section.split("```")[1]
    paths: set[str] = set()
    stack: list[str] = []
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+?)(?:\s{2,}|$)", line)
        if not m or len(m.group(1)) > 2 * (len(stack) + 1):
            continue
        depth = len(m.group(1)) // 2
        name = m.group(2)
        del stack[depth:]
        path = "/".join([*stack, name.rstrip("/")])
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
            paths.add(path + "/")
        else:
            paths.add(path)
    return paths


def package_modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def test_design_map_names_every_module_of_the_package():
    mapped = mapped_paths((ROOT / "docs" / "design.md").read_text())
    modules = package_modules()
    assert modules, "no modules found: the test is looking in the wrong place"
    missing = sorted(modules - mapped)
    gone = sorted(p for p in mapped if p.startswith("seco_labels/") and p.endswith(".py") and p not in modules)
    assert not missing, f"docs/design.md §5 does not name these modules: {missing}"
    assert not gone, f"docs/design.md §5 names modules that no longer exist: {gone}"


def test_design_map_names_every_subpackage():
    mapped = mapped_paths((ROOT / "docs" / "design.md").read_text())
    folders = {p.parent.relative_to(ROOT).as_posix() + "/" for p in PACKAGE.rglob("__init__.py")} - {"seco_labels/"}
    assert not sorted(folders - mapped), f"docs/design.md §5 does not name these folders: {sorted(folders - mapped)}"


def test_the_map_parser_sees_nesting():
    # a module one level too shallow is reported as missing, not silently matched
    text = "## 5. Package layout\n```\nseco_labels/\n  method/\n  losses.py   x\n```\n## 6."
    assert mapped_paths(text) == {"seco_labels/", "seco_labels/method/", "seco_labels/losses.py"}


def test_no_module_sits_directly_in_the_package_but_the_shared_few():
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "errors.py", "io.py", "config.py", "config_io.py"}, (
        "a new module directly in seco_labels/: put it in the folder of its role (docs/design.md §5)")
