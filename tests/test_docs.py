"""Every fenced code block of README.md and docs/*.md runs, parses or loads.

* ``python`` blocks run, each file's blocks in order in one namespace, in a temporary folder;
* ``bash`` / ``console`` / ``sh`` blocks: a line that starts with ``spatialmix `` is parsed by the
  real command-line parser (it must not exit; ``[optional]`` parts, ``a|b`` alternatives and ``...``
  are sketches, not command lines), a ``make`` line must name targets of the Makefile,
  and any other line must name only repository files that exist;
* ``yaml`` blocks load with ``yaml.safe_load``;
* ``text`` blocks are shown as they are (illustrations, terminal output, file listings).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LANGUAGES = {"python", "bash", "console", "sh", "yaml", "text", "bibtex"}
SHELL = {"bash", "console", "sh"}
# Files whose python blocks together take more than 5 s: marked slow. On a 2-core CPU with one thread the
# heaviest of the others took 3.3 s (claims.md: four tiny trainings, a tiny study and its report) and 3.0 s
# (README.md, the first to import timm); the others 0.1-1.4 s. train-own-model.md trains a timm ConvNeXt
# three times and attacks it.
SLOW_PYTHON: set[str] = {"train-own-model.md"}
# A token naming one of these, or a path under one of these folders, must exist in the repository.
REPO_FOLDERS = ("benchmarks", "scripts", "src", "tests", "docs", ".ci")
REPO_FILES = ("Makefile", "pyproject.toml", "mkdocs.yml", "README.md", "constraints.txt")

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`{]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


@dataclass
class Block:
    path: Path
    line: int  # line of the opening fence, 1-based
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, dedented by their fence's indentation."""
    blocks, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, start = len(match["indent"]), match["fence"], i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{start + 1}: code block never closed")
        blocks.append(Block(path, start + 1, match["lang"].lower(), "\n".join(body) + "\n"))
        i += 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in fenced_blocks(path)]


def shell_commands(block: Block) -> list[tuple[int, list[str]]]:
    """``(line, words)`` of every command of a shell block: continuation lines joined, a ``$ `` prompt,
    comments and leading ``VAR=value`` assignments removed."""
    commands, pending, first = [], "", None
    for offset, raw in enumerate(block.code.splitlines()):
        line = raw.rstrip()
        if first is None:
            first = block.line + 1 + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending, number, first = "", first, None
        if text.startswith("$ "):
            text = text[2:]
        words = shlex.split(text, comments=True)
        while words and ENV_ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words:
            commands.append((number, words))
    return commands


def command_line_parser():
    """The real parser of the ``spatialmix`` command."""
    from spatialmix.cli.main import build_parser

    return build_parser()


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*:(?!=)", text, re.MULTILINE)}


def repository_paths(words: list[str]) -> list[str]:
    """The words that name a file or folder of the repository (relative paths into its folders)."""
    named = []
    for word in words:
        parts = [word]
        if "=" in word:  # --option=PATH, and ARGS="tests/x.py -q" of make
            parts += shlex.split(word.split("=", 1)[1])
        for part in parts:
            path = part.rstrip("/")
            if path in REPO_FILES or path.split("/")[0] in REPO_FOLDERS and "/" in path:
                named.append(path)
    return named


def test_the_documentation_files_exist():
    names = {p.name for p in DOC_FILES}
    for name in (
        "index.md",
        "claims.md",
        "robustness.md",
        "unshuffle.md",
        "init-study.md",
        "own-models.md",
        "train-own-model.md",
        "run-folders.md",
        "speed.md",
        "scale-out.md",
        "commands.md",
        "development.md",
        "layout.md",
        "api.md",
    ):
        assert name in names, f"docs/{name} is missing"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_every_block_names_a_known_language(block):
    assert block.lang in LANGUAGES, (
        f"{block.where}: code block language {block.lang!r}; use one of "
        f"{sorted(LANGUAGES)} (text for anything that cannot run)"
    )


SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL]


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: b.where)
def test_shell_blocks(block):
    parser, targets = command_line_parser(), makefile_targets()
    for line, words in shell_commands(block):
        where = f"{block.path.relative_to(ROOT)}:{line}"
        if words[0] == "spatialmix":
            sketchy = [w for w in words if w.startswith("[") or w.endswith("]") or "|" in w or w == "..."]
            assert not sketchy, (
                f"{where}: {sketchy} make `{shlex.join(words)}` a sketch, not a command line; "
                f"write a concrete example command"
            )
            try:
                parser.parse_args(words[1:])
            except SystemExit as exit_:
                pytest.fail(f"{where}: `{shlex.join(words)}` is not a valid command line (exit {exit_.code})")
        elif words[0] == "make":
            named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            assert named, f"{where}: `make` without a target"
            for target in named:
                assert target in targets, f"{where}: the Makefile has no target {target!r}"
            for word in words[1:]:  # ARGS="..." of `make reproduce` / `make test` are passed on
                if word.startswith("ARGS=") and named == ["reproduce"]:
                    try:
                        parser.parse_args(["reproduce", *shlex.split(word[5:])])
                    except SystemExit:
                        pytest.fail(f"{where}: {word} is not valid for `spatialmix reproduce`")
        for path in repository_paths(words):
            assert (ROOT / path).exists(), f"{where}: {path} does not exist in the repository"


YAML_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "yaml"]


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.where)
def test_yaml_blocks_load(block):
    yaml.safe_load(block.code)


def _python_param(path: Path):
    marks = [pytest.mark.slow] if path.name in SLOW_PYTHON else []
    return pytest.param(path, marks=marks, id=str(path.relative_to(ROOT)))


PYTHON_FILES = [_python_param(p) for p in DOC_FILES if any(b.lang == "python" for b in fenced_blocks(p))]


@pytest.mark.parametrize("path", PYTHON_FILES)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for block in fenced_blocks(path):
        if block.lang == "python":
            exec(compile(block.code, block.where, "exec"), namespace)


def test_the_mkdocs_configuration_names_every_page():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    pages = set()

    def walk(node):
        if isinstance(node, str):
            pages.add(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config["nav"])
    assert pages == {p.name for p in DOC_FILES if p.parent.name == "docs"}


DOCS_ENVIRONMENT = ROOT / ".venv-docs" / "bin" / "mkdocs"


@pytest.mark.skipif(not DOCS_ENVIRONMENT.exists(), reason="no .venv-docs (`make setup` creates it)")
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_the_docs_check_fails_on_a_dead_link(tmp_path):
    """`make docs` on a copy of the site with one link to a page that does not exist exits non-zero
    and names the link (mkdocs' --quiet would hide the warning and let the strict build pass)."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    for name in ("mkdocs.yml", "Makefile"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("src", ".venv-docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    # The API page's entries take most of the build, and the link check needs none of them.
    (tmp_path / "docs" / "api.md").write_text("# Python API\n")
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the lost page](no-such-page.md).\n")

    # -o setup: the environments exist already; check only the docs.
    built = subprocess.run(["make", "-o", "setup", "docs"], cwd=tmp_path, capture_output=True, text=True)

    assert built.returncode != 0, f"the docs check passed with a dead link:\n{built.stdout}{built.stderr}"
    assert "no-such-page.md" in built.stdout + built.stderr


# --------------------------------------------------------------------------- docstrings and the API page

SOURCE = ROOT / "src" / "spatialmix"
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|data|meth|attr|exc|obj|const):`")


def api_homes() -> dict[str, str]:
    """Public name -> the module `spatialmix/api.py` imports it from."""
    tree = ast.parse((SOURCE / "api.py").read_text(encoding="utf-8"))
    return {a.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names}


def module_tree(module: str) -> ast.Module:
    path = ROOT / "src" / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(path.read_text(encoding="utf-8"))


def documented_strings(tree: ast.Module):
    """`(line, text)` of every docstring of a module: its own, its classes' and functions', and the
    string under an assignment (an attribute's docstring, as mkdocstrings reads it)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for i, statement in enumerate(body):
            if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)):
                continue
            if not isinstance(statement.value.value, str):
                continue
            own = i == 0 and isinstance(node, DOCUMENTED)
            if own or i > 0 and isinstance(body[i - 1], (ast.Assign, ast.AnnAssign)):
                yield statement.lineno, statement.value.value


def attribute_docstring(module: str, name: str) -> str | None:
    """The docstring under the assignment of `name` in `module`, following `from X import name`."""
    body = module_tree(module).body
    for i, statement in enumerate(body):
        if isinstance(statement, ast.ImportFrom) and name in {a.name for a in statement.names}:
            return attribute_docstring(statement.module, name)
        targets = (
            statement.targets
            if isinstance(statement, ast.Assign)
            else [statement.target]
            if isinstance(statement, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            following = body[i + 1] if i + 1 < len(body) else None
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                return following.value.value
            return None
    return None


def test_no_docstring_holds_a_sphinx_role():
    """mkdocstrings renders docstrings as Markdown: a `:func:` role would show as raw text."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        for line, text in documented_strings(ast.parse(path.read_text(encoding="utf-8"))):
            found += [f"{path.relative_to(ROOT)}:{line}" for _ in SPHINX_ROLE.finditer(text)]
    assert not found, f"{len(found)} Sphinx roles (run scripts/convert_roles.py): {found[:10]}"


@pytest.mark.parametrize("name", ["__version__", *sorted(api_homes())])
def test_every_public_name_has_a_docstring(name):
    import spatialmix as sm

    value = getattr(sm, name)
    if inspect.isclass(value) or inspect.isroutine(value):
        doc = value.__doc__ or ""
        assert not doc.startswith(f"{name}("), f"{name}: only the signature dataclass writes in"
    else:
        doc = attribute_docstring("spatialmix.version" if name == "__version__" else api_homes()[name], name)
    assert doc and doc.strip(), f"sm.{name} has no docstring"


API_PAGE = ROOT / "docs" / "api.md"


def api_page_entries() -> list[str]:
    """The dotted paths of the `::: path` entries of docs/api.md, in page order."""
    return re.findall(r"^::: (\S+)$", API_PAGE.read_text(encoding="utf-8"), re.MULTILINE)


def test_the_api_page_shows_every_public_name_once_from_its_home_module():
    expected = sorted(f"{home}.{name}" for name, home in api_homes().items())
    assert sorted(api_page_entries()) == expected


def test_the_api_page_is_ordered_by_task():
    """Training and the Run first, then mixing, models, robustness, studies, statistics."""
    entries = [path.rsplit(".", 1)[1] for path in api_page_entries()]
    landmarks = ["train", "Run", "apply_mixing", "create_model", "evaluate_robustness", "reproduce"]
    landmarks.append("Estimate")
    assert [entries.index(name) for name in landmarks] == sorted(entries.index(name) for name in landmarks)
    assert entries[:2] == ["train", "Run"]


def _convert_roles_script():
    path = ROOT / "scripts" / "convert_roles.py"
    spec = importlib.util.spec_from_file_location("convert_roles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_roles_rewrites_the_docstrings_and_nothing_else():
    source = (
        '"""Train with :func:`spatialmix.engine.train.fit` into a :class:`~spatialmix.io.runs.Run`.\n'
        "\n"
        "See :meth:`the model <Run.model>` and :py:data:`MODES`; for example::\n"
        "\n"
        "    run = sm.train(...)\n"
        '"""\n'
        "\n"
        'PATTERN = ":func:`kept`"  # :class:`kept too` in a comment\n'
        '"""The pattern, as :data:`~a.b.PATTERN` says."""\n'
        "\n"
        "\n"
        "def f():\n"
        '    """One line with :attr:`x.y`.\n'
        "\n"
        "    ::\n"
        "\n"
        "        f()\n"
        '    """\n'
    )
    expected = (
        '"""Train with `spatialmix.engine.train.fit` into a `Run`.\n'
        "\n"
        "See `the model` and `MODES`; for example:\n"
        "\n"
        "    run = sm.train(...)\n"
        '"""\n'
        "\n"
        'PATTERN = ":func:`kept`"  # :class:`kept too` in a comment\n'
        '"""The pattern, as `PATTERN` says."""\n'
        "\n"
        "\n"
        "def f():\n"
        '    """One line with `x.y`.\n'
        "\n"
        "\n"
        "        f()\n"
        '    """\n'
    )
    convert = _convert_roles_script()
    assert convert.converted(source) == expected
    assert convert.converted(expected) == expected


def test_convert_roles_check_changes_nothing_and_lists_the_files(tmp_path, capsys):
    marked, clean = tmp_path / "marked.py", tmp_path / "clean.py"
    marked.write_text('"""See :func:`f`."""\n')
    clean.write_text('"""See `f`."""\n')
    convert = _convert_roles_script()
    assert convert.main([str(tmp_path), "--check"]) == 1
    assert marked.read_text() == '"""See :func:`f`."""\n'
    assert convert.main([str(tmp_path)]) == 0
    assert marked.read_text() == '"""See `f`."""\n' and clean.read_text() == '"""See `f`."""\n'
    assert convert.main([str(tmp_path), "--check"]) == 0
    assert "changed 1 of 2 files" in capsys.readouterr().out


def test_the_readme_is_a_short_product_page_that_lists_the_claims():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    claims = readme[readme.index("## The paper's claims") :]
    for claim in ("1. **Classification**", "2. **Robustness**", "3. **Un-shuffling**"):
        assert claim in claims
    assert readme.index("make reproduce") < readme.index("## The paper's claims")
    assert "runs/reproduce/" in readme and "report.html" in readme
