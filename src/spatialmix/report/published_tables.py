"""The Markdown of published results: verdict tables, study tables, their stamps, and how the verdicts
move between CPU kinds. Each function reads `spatialmix.report.published.PublishedRun` objects
only, so a table in the documentation is a function of the files in `results/`."""

from __future__ import annotations

from spatialmix.report.published import PublishedRun, PublishedTable

# Verdict columns the documentation leaves out: the claim's words join its id, "how" is the long
# description of each interval (printed by `reproduce`, kept in verdicts.json).
_LEFT_OUT = ("paper", "how")
_DECIDED = ("supports", "contradicts")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the verdicts


def _continued_effect(effect: str, first: str) -> str:
    """`... at eps 4/255` for a line that repeats its claim's first effect but for its ending."""
    words, firsts = effect.split(" "), first.split(" ")
    same = 0
    while same < min(len(words), len(firsts)) and words[same] == firsts[same]:
        same += 1
    if same == 0 or same == len(words):
        return effect
    at = max((i for i in range(same) if words[i] == "at"), default=same)
    return "... " + " ".join(words[at:])


def verdict_markdown(run: PublishedRun) -> str:
    """The verdict table of one published run, as `reproduce` printed it (the claim's words beside its
    id on its first line, a decided word in bold)."""
    scoped = any(v["shown"].get("scope", "-") not in ("-", "") for v in run.verdicts)
    columns = [(k, h) for k, h in run.columns if k not in _LEFT_OUT and (scoped or k != "scope")]
    rows, group, first_effect = [], None, ""
    for line in run.verdicts:
        shown, fields = line["shown"], line["fields"]
        first = (fields["claim"], fields.get("scope")) != group
        if first:
            group, first_effect = (fields["claim"], fields.get("scope")), shown.get("effect", "")
        row = []
        for key, _ in columns:
            value = shown.get(key, "")
            if key == "claim" and first:
                value = f"{value} {shown.get('paper', '')}".strip()
            elif key == "effect" and not first:
                value = _continued_effect(value, first_effect)
            elif key == "interval" and "level in how" in dict(columns)["interval"]:
                level = (fields.get("estimate") or {}).get("level")
                value += f" ({100 * level:.3g}%)" if isinstance(level, float) and value != "-" else ""
            elif key == "verdict" and value in _DECIDED:
                value = f"**{value}**"
            row.append(value)
        rows.append(row)
    return markdown_table([h for _, h in columns], rows)


# --------------------------------------------------------------------------- the stamp


def duration(seconds: float) -> str:
    """`45 s`, `5 min 32 s`, `1 h 04 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _cpu(run: PublishedRun) -> str:
    cpu = run.machine["cpu"]
    return f"{cpu['model']} ({cpu['capability']})"


def stamp_line(run: PublishedRun) -> str:
    """One line under a published table: the command, the CPU, processes and threads, the commit and
    torch version, the wall time per study, the date and the folder it was rendered from."""
    m, stamp = run.machine, run.stamp
    where = f"on {_cpu(run)}" if m.get("recorded", True) else f"CPU not recorded (published on {_cpu(run)})"
    parallel = ""
    if m.get("processes"):
        threads = m.get("threads")
        parallel = f", {_count(m['processes'], 'process', 'processes')} x " + (
            _count(threads, "thread", "threads") if threads else "torch's default threads"
        )
    commit = (m.get("commit") or "unknown")[:10] + (" with local changes" if m.get("dirty") else "")
    times = ", ".join(
        f"{name} {duration(entry['time_s'])}"
        for name, entry in stamp["studies"].items()
        if entry.get("time_s") is not None
    )
    date = str(m.get("date") or "")[:10]
    note = f" **Note**: {stamp['note'].rstrip('.')}." if stamp.get("note") else ""
    return (
        f"*`{stamp['command']}` {where}{parallel}; commit {commit}, torch {m['versions'].get('torch')}; "
        f"wall time {duration(stamp['wall_s'])} ({times}); {date}; rendered from "
        f"`results/{run.preset}/{run.tag}/`.*{note}"
    )


def _heading(run: PublishedRun, several: bool) -> list[str]:
    return [f"**{_cpu(run)}** (`{run.tag}`):", ""] if several else []


def verdicts_region(runs: list[PublishedRun]) -> str:
    """Every CPU kind's verdict table with its stamp, then how the verdicts move between them."""
    parts = []
    for run in runs:
        parts.append("\n".join([*_heading(run, len(runs) > 1), verdict_markdown(run), "", stamp_line(run)]))
    if len(runs) > 1:
        parts.append(cpus_region(runs))
    return "\n\n".join(parts)


def study_region(runs: list[PublishedRun], study: str) -> str:
    """The tables a study printed, per CPU kind, each CPU's with its stamp."""
    parts = []
    for run in runs:
        tables: list[PublishedTable] = run.tables.get(study, [])
        if not tables:
            parts.append(
                f"The published `{run.tag}` results of the {run.preset} preset hold no {study} study."
            )
            continue
        body = "\n\n".join(f"*{t.title}*\n\n{markdown_table(t.headers, t.cells)}" for t in tables)
        parts.append("\n".join([*_heading(run, len(runs) > 1), body, "", stamp_line(run)]))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- between CPU kinds


def _line_key(fields: dict) -> tuple:
    return fields["claim"], fields.get("scope") or "", fields["effect"]


def cpus_region(runs: list[PublishedRun]) -> str:
    """Per verdict line: each CPU kind's estimate, interval and word, the largest difference between
    their estimates, and whether the words agree."""
    if len(runs) < 2:
        tags = ", ".join(f"`{r.tag}`" for r in runs) or "none"
        return f"One CPU kind is published for this preset ({tags}): nothing to compare."
    keys = list(dict.fromkeys(_line_key(v["fields"]) for run in runs for v in run.verdicts))
    by_run = [{_line_key(v["fields"]): v for v in run.verdicts} for run in runs]
    rows = []
    for key in keys:
        lines = [found.get(key) for found in by_run]
        cells, values, words = [], [], set()
        for line in lines:
            if line is None:
                cells.append("-")
                continue
            shown = line["shown"]
            cells.append(
                f"{shown.get('estimate', '-')} {shown.get('interval', '')} {line['fields']['verdict']}"
            )
            words.add(line["fields"]["verdict"])
            value = (line["fields"].get("estimate") or {}).get("value")
            if isinstance(value, (int, float)):
                values.append(value)
        unit = next((ln["shown"].get("estimate", "").partition(" ")[2] for ln in lines if ln), "")
        moved = f"{max(values) - min(values):.2f} {unit}".strip() if len(values) > 1 else "-"
        same = "yes" if len(words) == 1 and None not in lines else "**no**"
        rows.append([key[0], key[2] + (f" ({key[1]})" if key[1] else ""), *cells, moved, same])
    headers = ["claim", "effect", *[f"`{r.tag}`" for r in runs], "largest difference", "same verdict"]
    return "How the verdicts move between CPU kinds:\n\n" + markdown_table(headers, rows)
