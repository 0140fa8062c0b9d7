"""`spatialmix render-docs`: every published table of README.md and docs/*.md, rendered from `results/`.

A table lies between two markers; everything between them is rewritten, everything around them is
left as it is:

```text
<!-- results:quick-verdicts -->
(rendered: the verdict table of each CPU kind, its stamp, and how the verdicts move between them)
<!-- /results -->
```

A region is named `PRESET-verdicts`, `PRESET-cpus` (only the comparison between CPU kinds) or
`PRESET-STUDY` (the tables a study printed, e.g. `quick-classification`). `render_docs`
rewrites the files; with `check=True` it writes nothing and reports the regions that differ from
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
    """What `render_docs` found: the regions rendered and, per file, those whose text changed
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
    """The Markdown of the region `name` (`quick-verdicts`, `quick-cpus`, `quick-classification`)."""
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


@dataclass(frozen=True)
class Region:
    """One marked region of a file: its name, the line of its opening marker (from 1), and the
    lines (indices) of its two markers."""

    name: str
    line: int
    opening: int
    closing: int


def find_regions(lines: list[str], where: str = "") -> list[Region]:
    """The regions of a file's `lines`. A marker counts alone on its line and outside a fenced code
    block, so the documentation can show one (`<!-- results:NAME -->` in a sentence or an example)."""
    regions, fence, opened = [], None, None
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = None if fence and stripped.startswith(fence) else fence or stripped[:3]
            continue
        if fence:
            continue
        match = _OPEN.fullmatch(stripped)
        if match:
            if opened is not None:
                raise SpatialmixError(
                    f"{where}{opened[1] + 1}: <!-- results:{opened[0]} --> has no closing {CLOSE} before "
                    f"the next region; add it"
                )
            opened = (match.group(1), n)
        elif stripped == CLOSE:
            if opened is None:
                raise SpatialmixError(
                    f"{where}{n + 1}: {CLOSE} closes no region; remove it or add its opening"
                )
            regions.append(Region(opened[0], opened[1] + 1, opened[1], n))
            opened = None
    if opened is not None:
        raise SpatialmixError(
            f"{where}{opened[1] + 1}: <!-- results:{opened[0]} --> has no closing {CLOSE}; add it"
        )
    return regions


def render_text(text: str, results_root: Path, where: str = "") -> tuple[str, list[str]]:
    """`text` with every region rendered, and the names of the regions whose text changed."""
    lines = text.splitlines(keepends=True)
    out, changed, at = [], [], 0
    for region in find_regions(lines, where):
        body = render_region(region.name, results_root, f"{where}{region.line}: ") + "\n"
        out += [*lines[at : region.opening + 1], body]
        if "".join(lines[region.opening + 1 : region.closing]) != body:
            changed.append(region.name)
        at = region.closing
    return "".join(out + lines[at:]), changed


def render_docs(
    root: str | Path = ".", results_root: str | Path | None = None, check: bool = False
) -> RenderOutcome:
    """Render every region of README.md and docs/*.md below `root` from `results_root` (default
    `root/results`); rewrite the files that change, or with `check` only report them."""
    root = Path(root)
    results_root = Path(results_root) if results_root is not None else root / "results"
    files = document_files(root)
    if not files:
        raise SpatialmixError(f"{root} holds no README.md or docs/*.md; run it in the repository's root")
    outcome, rewritten = RenderOutcome(), {}
    for path in files:  # every file rendered before any is written: a bad region leaves all as they were
        relative = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        outcome.regions += len(find_regions(text.splitlines(), f"{relative}:"))
        rendered, changed = render_text(text, results_root, f"{relative}:")
        if changed:
            outcome.changed[relative], rewritten[path] = changed, rendered
    if not check:
        for path, rendered in rewritten.items():
            storage.atomic_write_bytes(path, rendered.encode("utf-8"))
    return outcome
