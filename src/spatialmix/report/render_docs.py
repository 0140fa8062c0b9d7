"""``spatialmix render-docs``: every published table of README.md and docs/*.md, rendered from ``results/``.

A table lies between two markers; everything between them is rewritten, everything around them is
left as it is:

```text
<!-- results:quick-verdicts -->
(rendered: the verdict table of each CPU kind, its stamp, and how the verdicts move between them)
<!-- /results -->
```

A region is named ``PRESET-verdicts``, ``PRESET-cpus`` (only the comparison between CPU kinds) or
``PRESET-STUDY`` (the tables a study printed, e.g. ``quick-classification``). :func:`render_docs`
rewrites the files; with ``check=True`` it writes nothing and reports the regions that differ from
what the stored results render (the test suite's guard against a typed or stale number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from spatialmix.errors import SpatialmixError
from spatialmix.io import storage
from spatialmix.io.study_results import SECTIONS
from spatialmix.report.published import published_runs
from spatialmix.report.published_tables import cpus_region, study_region, verdicts_region

_OPEN = re.compile(r"<!-- results:([A-Za-z0-9_-]*) -->")
CLOSE = "<!-- /results -->"
_NAME = re.compile(r"([a-z0-9]+)-([a-z0-9_]+)")


@dataclass
class RenderOutcome:
    """What :func:`render_docs` found: the regions rendered and, per file, those whose text changed
    (in check mode: would change)."""

    regions: int = 0
    changed: dict[str, list[str]] = field(default_factory=dict)  # file (relative) -> region names

    def summary(self) -> str:
        """One line: which regions differ from the stored results."""
        if not self.changed:
            return f"{self.regions} published region(s) match results/"
        count = sum(len(v) for v in self.changed.values())
        listed = "; ".join(f"{name} ({', '.join(regions)})" for name, regions in self.changed.items())
        return f"{count} of {self.regions} published region(s) differ from what results/ renders: {listed}"


def document_files(root: str | Path) -> list[Path]:
    """README.md and every page of docs/: the files whose regions are rendered."""
    root = Path(root)
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def render_region(name: str, results_root: Path, where: str = "") -> str:
    """The Markdown of the region ``name`` (``quick-verdicts``, ``quick-cpus``, ``quick-classification``)."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise SpatialmixError(
            f"{where}region {name!r} is not PRESET-verdicts, PRESET-cpus or PRESET-STUDY "
            "(e.g. quick-verdicts)"
        )
    preset, kind = match.groups()
    runs = published_runs(results_root, preset)
    if not runs:
        return (
            f"No results of the {preset} preset are published: run `spatialmix reproduce --preset {preset} "
            f"--out runs/{preset}`, then `spatialmix publish runs/{preset}` and `spatialmix render-docs`."
        )
    if kind == "verdicts":
        return verdicts_region(runs)
    if kind == "cpus":
        return cpus_region(runs)
    known = {s for run in runs for s in run.tables}
    if kind not in known and kind not in SECTIONS:  # a study that may be published later is no typo
        raise SpatialmixError(
            f"{where}region {name!r} names no study; name one of verdicts, cpus, "
            f"{', '.join(sorted(known | set(SECTIONS) - {'other'}))}"
        )
    return study_region(runs, kind)


def render_text(text: str, results_root: Path, where: str = "") -> tuple[str, list[str]]:
    """``text`` with every region rendered, and the regions' names in order."""
    out, names, at = [], [], 0
    for match in _OPEN.finditer(text):
        if match.start() < at:
            continue  # a marker inside a region being replaced
        line = text.count("\n", 0, match.start()) + 1
        end = text.find(CLOSE, match.end())
        following = _OPEN.search(text, match.end())
        if end < 0 or (following is not None and following.start() < end):
            raise SpatialmixError(
                f"{where}{line}: {match.group()} has no closing {CLOSE} before the next region; add it"
            )
        name = match.group(1)
        body = render_region(name, results_root, f"{where}{line}: ")
        out += [text[at : match.end()], "\n", body, "\n"]
        names.append(name)
        at = end
    out.append(text[at:])
    return "".join(out), names


def render_docs(
    root: str | Path = ".", results_root: str | Path | None = None, check: bool = False
) -> RenderOutcome:
    """Render every region of README.md and docs/*.md below ``root`` from ``results_root`` (default
    ``root/results``); rewrite the files that change, or with ``check`` only report them."""
    root = Path(root)
    results_root = Path(results_root) if results_root is not None else root / "results"
    files = document_files(root)
    if not files:
        raise SpatialmixError(f"{root} holds no README.md or docs/*.md; run it in the repository's root")
    outcome = RenderOutcome()
    for path in files:
        relative = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        rendered, names = render_text(text, results_root, f"{relative}:")
        outcome.regions += len(names)
        if rendered == text:
            continue
        old_bodies = _bodies(text)
        new_bodies = _bodies(rendered)
        outcome.changed[relative] = [n for n, old, new in zip(names, old_bodies, new_bodies) if old != new]
        if not check:
            storage.atomic_write_bytes(path, rendered.encode("utf-8"))
    return outcome


def _bodies(text: str) -> list[str]:
    return [text[m.end() : text.find(CLOSE, m.end())] for m in _OPEN.finditer(text)]
