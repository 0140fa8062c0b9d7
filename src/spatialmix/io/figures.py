"""The one place a matplotlib figure becomes a PNG.

Every plot of spatialmix (attack curves, study figures, the report's own figures) goes through
`save_png`, so they are all written the same way: rendered in memory, written atomically
(a crash never leaves half a PNG for the report to embed), and the figure released at once
(a study draws dozens; pyplot would keep each one alive).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from spatialmix.io.storage import atomic_write_bytes


def save_png(fig, path: str | Path | None = None, *, dpi: float | None = None) -> bytes:
    """The PNG of ``fig``; also written atomically to ``path`` when given. Closes the figure.

    ``dpi`` defaults to the figure's own. Works for a bare ``matplotlib.figure.Figure`` (no
    pyplot, no canvas needed) as well as for one made by ``pyplot``.
    """
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi if dpi is not None else "figure")
    finally:
        _close(fig)
    png = buffer.getvalue()
    if path is not None:
        atomic_write_bytes(Path(path), png)
    return png


def _close(fig) -> None:
    """Release ``fig``: pyplot keeps the figures it made until they are closed; others need nothing."""
    pyplot = sys.modules.get("matplotlib.pyplot")  # never import pyplot just to close a figure
    if pyplot is not None:
        pyplot.close(fig)
