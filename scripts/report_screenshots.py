"""Render a report.html in headless Chromium, at a desktop and a narrow window width, and check its layout.

Writes one screenshot per width (the top of the page, ``--height`` pixels tall) and, with ``--full``, the
whole page cut into tiles of ``--height`` pixels, and says whether the page is wider than the window
(horizontal overflow) and how many tables are cropped (wider than their scrolling wrapper). The report
itself holds no script: the check renders a copy of it with one line of script added that writes
``scrollWidth <= innerWidth`` and the cropped tables into the page, read back with ``--dump-dom``.

    python scripts/report_screenshots.py runs/reproduce/report.html -o /tmp/shots
    python scripts/report_screenshots.py report.html --widths 1400 800 --full

Needs a Chromium on PATH (``apt-get install chromium``); exits 2 with one line when there is none.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless in a container: no sandbox (root), no GPU, no scroll bars in the picture, a clean profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run")
# A table is cropped when its scrolling wrapper has to scroll, or when it reaches past the window.
PROBE = (
    "<script>addEventListener('load', () => { const e = document.documentElement; "
    "const cropped = [...document.querySelectorAll('table')].filter(t => "
    "t.parentElement.scrollWidth > t.parentElement.clientWidth "
    "|| t.getBoundingClientRect().right > innerWidth).length; "
    "const p = document.createElement('pre'); p.id = 'layout-probe'; "
    "p.textContent = `fits=${e.scrollWidth <= innerWidth} scrollWidth=${e.scrollWidth} "
    "innerWidth=${innerWidth} scrollHeight=${e.scrollHeight} croppedTables=${cropped}`; "
    "document.body.append(p); });</script>"
)
PROBE_LINE = re.compile(
    r"fits=(true|false) scrollWidth=(\d+) innerWidth=(\d+) scrollHeight=(\d+) croppedTables=(\d+)"
)


@dataclass
class Layout:
    fits: bool  # no horizontal overflow: the page is no wider than the window
    scroll_width: int
    inner_width: int
    scroll_height: int
    cropped_tables: int  # tables wider than their place: scrolled inside their wrapper or past the window


def find_browser() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _run(browser: str, args: list[str], profile: Path, timeout: float) -> str:
    command = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(browser).name} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def measure(browser: str, page: Path, width: int, height: int = 3000, timeout: float = 120) -> Layout:
    """How ``page`` lays out in a window ``width`` x ``height``: a probed copy, rendered with --dump-dom."""
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / "probed.html"
        probed.write_text(page.read_text().replace("</body>", PROBE + "</body>", 1))
        dom = _run(
            browser,
            [f"--window-size={width},{height}", "--dump-dom", probed.as_uri()],
            Path(tmp) / "profile",
            timeout,
        )
    found = PROBE_LINE.search(dom)
    if found is None:
        raise RuntimeError(f"the layout probe did not run in {page}")
    fits, scroll_width, inner_width, scroll_height, cropped = found.groups()
    return Layout(fits == "true", int(scroll_width), int(inner_width), int(scroll_height), int(cropped))


def screenshot(browser: str, page: Path, out: Path, width: int, height: int, timeout: float = 120) -> Path:
    """A PNG of the top ``height`` pixels of ``page`` in a window ``width`` pixels wide."""
    with tempfile.TemporaryDirectory() as tmp:
        _run(
            browser,
            [f"--window-size={width},{height}", f"--screenshot={out.resolve()}", page.resolve().as_uri()],
            Path(tmp) / "profile",
            timeout,
        )
    if not out.is_file():
        raise RuntimeError(f"no screenshot was written for {page} at {width} px")
    return out


def tiles(full: Path, height: int) -> list[Path]:
    """``full`` cut into pieces ``height`` pixels tall (named -1, -2, ...), small enough to look at."""
    from PIL import Image

    image = Image.open(full)
    pieces = []
    for i, top in enumerate(range(0, image.height, height), start=1):
        piece = full.with_name(f"{full.stem}-{i}.png")
        image.crop((0, top, image.width, min(top + height, image.height))).save(piece)
        pieces.append(piece)
    return pieces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the report.html to render")
    parser.add_argument("-o", "--out", type=Path, default=Path("."), help="folder for the PNGs")
    parser.add_argument("--widths", type=int, nargs="+", default=[1400, 800], help="window widths (px)")
    parser.add_argument("--height", type=int, default=3000, help="window height, and tile height (px)")
    parser.add_argument("--full", action="store_true", help="also the whole page, cut into tiles")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(
            "report_screenshots: no Chromium on PATH; install one (apt-get install chromium)", file=sys.stderr
        )
        return 2
    if not args.report.is_file():
        print(f"report_screenshots: {args.report} is not a file", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    all_fit = True
    for width in args.widths:
        layout = measure(browser, args.report, width, args.height)
        all_fit &= layout.fits and not layout.cropped_tables
        shot = screenshot(
            browser, args.report, args.out / f"{args.report.stem}-{width}.png", width, args.height
        )
        print(
            f"{width} px: {shot} (page {layout.scroll_width} x {layout.scroll_height} px, "
            f"{'no horizontal overflow' if layout.fits else 'WIDER THAN THE WINDOW'}, "
            f"{layout.cropped_tables or 'no'} table(s) cropped)"
        )
        if args.full:
            # Chromium draws at most about 16,000 px in one picture
            whole = args.out / f"{args.report.stem}-{width}-full.png"
            screenshot(browser, args.report, whole, width, min(layout.scroll_height, 16000))
            print(f"  whole page in {len(tiles(whole, args.height))} tiles: {whole.stem}-N.png")
    return 0 if all_fit else 1


if __name__ == "__main__":
    sys.exit(main())
