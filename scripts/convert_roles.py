"""Rewrite the Sphinx markup of docstrings as Markdown, which the API page (mkdocstrings) renders.

* a cross-reference role becomes a code span: ``:func:`spatialmix.engine.train.fit``` becomes
  `` `spatialmix.engine.train.fit` ``, ``:class:`~spatialmix.io.runs.Run``` (``~``: show the last part)
  becomes `` `Run` ``, and ``:meth:`the model <Run.model>``` becomes `` `the model` ``;
* a paragraph that ends in ``::`` to introduce an indented code block ends in ``:`` (an indented block
  after a blank line is already code in Markdown); a ``::`` alone on its line goes.

Only docstrings change (a module's, a class's, a function's, and the string under an assignment);
code, comments and other strings stay as they are.

    python scripts/convert_roles.py            # rewrite every .py file under src/
    python scripts/convert_roles.py --check    # list what would change; exit 1 if anything would
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:py:)?(?:func|class|mod|data|meth|attr|exc|obj|const):`(?P<target>[^`]+)`")
TITLED = re.compile(r"^(?P<title>.*?)\s*<[^<>]+>$", re.DOTALL)
LITERAL_BLOCK = re.compile(r"(?<=\S)::$")  # "text::" introduces a code block: "text:"
BARE_LITERAL_BLOCK = re.compile(r"^\s*::$")  # a "::" alone on its line


def code_span(match: re.Match) -> str:
    """The Markdown code span of one role: its title, the last part of a ``~`` target, or the target."""
    target = match["target"].strip()
    titled = TITLED.match(target)
    if titled and titled["title"]:
        return f"`{titled['title']}`"
    if target.startswith("~"):
        return f"`{target[1:].rsplit('.', 1)[-1]}`"
    return f"`{target}`"


def docstring_lines(tree: ast.Module) -> set[int]:
    """The 1-based numbers of the source lines that belong to a docstring."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for i, statement in enumerate(body):
            is_string = (
                isinstance(statement, ast.Expr)
                and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)
            )
            documents_something = (i == 0 and isinstance(node, DOCUMENTED)) or (
                i > 0 and isinstance(body[i - 1], (ast.Assign, ast.AnnAssign))
            )
            if is_string and documents_something:
                lines.update(range(statement.lineno, statement.end_lineno + 1))
    return lines


DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def converted(source: str) -> str:
    """``source`` with the Sphinx markup of its docstrings rewritten (see the module docstring)."""
    inside = docstring_lines(ast.parse(source))
    lines = source.splitlines(keepends=True)
    for number in sorted(inside):
        line = lines[number - 1]
        body, ending = line.rstrip("\r\n"), line[len(line.rstrip("\r\n")) :]
        body = ROLE.sub(code_span, body)
        if BARE_LITERAL_BLOCK.match(body):
            body, ending = "", ""
        else:
            body = LITERAL_BLOCK.sub(":", body)
        lines[number - 1] = body + ending
    return "".join(lines)


def unconverted_roles(source: str) -> int:
    """How many roles of ``source`` a line-by-line rewrite cannot reach (one split over two lines)."""
    return sum(1 for match in ROLE.finditer(source) if "\n" in match.group(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[ROOT / "src"], help="files or folders")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything would")
    args = parser.parse_args(argv)
    files = sorted({f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.py"))})
    changed = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        new = converted(source)
        if unconverted_roles(new):
            print(f"convert_roles: {path}: a role split over two lines; join it, run again", file=sys.stderr)
        if new != source:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "would change" if args.check else "changed"
    print(f"convert_roles: {verb} {len(changed)} of {len(files)} files")
    for path in changed:
        print(f"  {path}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
