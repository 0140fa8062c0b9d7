"""The model families of a classification study, as its entry of `results.json` keeps them.

The classification study of `reproduce` trains the preset's own model in every mode (its run
summaries under `runs`, its name under `model`; the robustness and smoothing studies reuse these
runs) and, beside it, each other family of the preset (`families`: name -> the prefix of its run
folders and its summaries), so that claim 1 is tested on each. An entry written with one family has
no `model` or `families`: it reads as one family without a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A family's run folders are classification/<prefix><mode>-seed<k>: a prefix is one folder-name word
# and a dash ("" for the preset's own model), never a path (results.json is untrusted).
PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*-")


@dataclass(frozen=True)
class Family:
    """One model of a classification study: its name (the verdicts' scope), the prefix of its run
    folders and its run summaries by mode."""

    name: str
    prefix: str
    runs: dict[str, list[dict]]


def families_data(families: list[Family]) -> dict:
    """What results.json keeps of `families` (the preset's own model first)."""
    own, *others = families
    return {
        "runs": own.runs,
        "model": own.name,
        "families": {f.name: {"prefix": f.prefix, "runs": f.runs} for f in others},
    }


def classification_families(data: dict) -> list[Family]:
    """The families of a classification study's results.json data, the preset's own model first;
    a malformed family (untrusted file) is left out."""
    own = data.get("runs")
    model = data.get("model")
    found = [Family(model if isinstance(model, str) else "", "", own)] if isinstance(own, dict) else []
    others = data.get("families")
    for name, entry in (others if isinstance(others, dict) else {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("runs"), dict):
            continue
        prefix = entry.get("prefix")
        if isinstance(prefix, str) and prefix and PREFIX.fullmatch(prefix):
            found.append(Family(str(name), prefix, entry["runs"]))
    return found
