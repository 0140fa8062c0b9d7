"""Print the module map of docs/layout.md: every module, its length in lines and its first docstring line.

python scripts/layout.py    # paste between the ```text fences of docs/layout.md
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spatialmix"
TOP = ["__init__.py", "api.py", "version.py", "errors.py", "names.py", "options.py"]
ORDER = ["cli", "sweep", "studies", "report", "workflow", "analysis", "robustness", "engine", "data"]
ORDER += ["models", "core", "accel", "io", "ui"]


def line(path: Path, indent: str) -> str:
    text = path.read_text()
    doc = (ast.get_docstring(ast.parse(text)) or "").strip().splitlines()
    first = doc[0].rstrip(".:") if doc else ""
    name = f"{indent}{path.name}"
    return f"{name:<26}{len(text.splitlines()):>7}  {first}".rstrip()


def main() -> None:
    for name in TOP:
        print(line(PACKAGE / name, ""))
    for package in ORDER:
        modules = sorted(p for p in (PACKAGE / package).glob("*.py") if p.name != "__init__.py")
        total = sum(len(p.read_text().splitlines()) for p in modules)
        print(f"{package + '/':<26}{total:>7}")
        for module in modules:
            print(line(module, "    "))


if __name__ == "__main__":
    main()
