"""The module map of docs/layout.md: every module, its length in lines and its first docstring line.

python scripts/layout.py            # print it
python scripts/layout.py --write    # write it into docs/layout.md, with the total line count
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "spatialmix"
PAGE = ROOT / "docs" / "layout.md"
TOP = ["__init__.py", "api.py", "version.py", "errors.py", "names.py", "options.py"]
ORDER = ["cli", "sweep", "studies", "report", "workflow", "analysis", "robustness", "engine", "data"]
ORDER += ["models", "core", "accel", "io", "ui"]
# The module map is the page's only ```text block; the total follows it.
MAP_BLOCK = re.compile(r"```text\n.*?```\n", re.DOTALL)
TOTAL = re.compile(r"In all [\d,]+ lines of Python and C\.")


def line(path: Path, indent: str) -> str:
    text = path.read_text()
    doc = (ast.get_docstring(ast.parse(text)) or "").strip().splitlines()
    first = doc[0].rstrip(".:") if doc else ""
    name = f"{indent}{path.name}"
    return f"{name:<26}{len(text.splitlines()):>7}  {first}".rstrip()


def module_map() -> list[str]:
    lines = [line(PACKAGE / name, "") for name in TOP]
    for package in ORDER:
        modules = sorted(p for p in (PACKAGE / package).glob("*.py") if p.name != "__init__.py")
        total = sum(len(p.read_text().splitlines()) for p in modules)
        lines.append(f"{package + '/':<26}{total:>7}")
        lines += [line(module, "    ") for module in modules]
    return lines


def total_lines() -> int:
    files = [p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".c", ".h") and p.is_file()]
    return sum(len(p.read_text().splitlines()) for p in files)


def write_page() -> None:
    page = PAGE.read_text()
    if len(MAP_BLOCK.findall(page)) != 1 or not TOTAL.search(page):
        raise SystemExit(f"{PAGE}: expected one ```text block and an 'In all N lines' sentence")
    block = "```text\n" + "\n".join(module_map()) + "\n```\n"
    page = MAP_BLOCK.sub(lambda _: block, page)
    page = TOTAL.sub(f"In all {total_lines():,} lines of Python and C.", page)
    PAGE.write_text(page)


def main() -> None:
    if sys.argv[1:] == ["--write"]:
        write_page()
    else:
        print("\n".join(module_map()))


if __name__ == "__main__":
    main()
