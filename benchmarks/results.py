"""The results schema, where result files go, and the INDEX.md generated from them.

A result file is JSON (``SCHEMA`` = 1)::

    {"schema": 1, "suite": "models",
     "provenance": {"commit", "dirty", "dirty_paths", "commit_from", "command", "date",
                    "environment", "backfilled"},
     "machine": {"cpu", "isa", "isa_flags", "torch_cpu_capability", "cores", "threads",
                 "gpu", "torch", "python", "platform", "libraries", ...},
     "settings": {...the suite's options...},
     "records": [...one per measurement, the suite's own fields...],
     "summary": [...flat rows for INDEX.md...],
     "finished": true, "wall_s": 812.4}

Files written before the schema (``tools/*.py``) keep their own fields and gain
``schema``, ``suite``, ``legacy_tool`` and a ``provenance`` whose commit is the one that added
the file (``git log --follow --diff-filter=A``), with ``"backfilled": true``.

Folders: ``benchmarks/results/<machine>/<suite>/`` (``provenance.machine_slug``), one
``<date>-<commit>.json`` and ``.md`` per run, and an INDEX.md listing every JSON file below
the folder. ``--quick`` runs check a tool, they are not results: they go to
``out/benchmarks/<machine>/<suite>/``, which git ignores.
"""

from __future__ import annotations

import datetime
import json
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .provenance import REPO, describe_machine, describe_run, machine_slug

__all__ = [
    "ROOT",
    "SCHEMA",
    "SCRATCH",
    "ResultFile",
    "backfill",
    "command_line",
    "load",
    "markdown_table",
    "write_index",
    "write_indexes",
]

SCHEMA = 1
ROOT = Path(__file__).resolve().parent / "results"
SCRATCH = REPO / "out" / "benchmarks"


def command_line(suite: str, argv: Sequence[str], module: str | None = None) -> str:
    """The command that reruns this suite (or the experiment ``module``) with these arguments."""
    head = ["python -m", module] if module else ["python -m benchmarks", suite]
    return " ".join([*head, *map(shlex.quote, argv)])


def load(path: Path) -> dict[str, Any]:
    """A result file; a legacy file whose top level is a list comes back as {"records": ...}."""
    data = json.loads(Path(path).read_text())
    return data if isinstance(data, dict) else {"records": data}


def _write_json(data: Any, path: Path) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1, default=str) + "\n")
    partial.replace(path)  # a reader never sees half a file


class ResultFile:
    """One run's result file, saved after every record so that a run cut short (a device
    machine's time limit) keeps what it measured.

        >>> result = ResultFile("layers", ["--quick"], {"runs": 3}, threads=2, quick=True)
        >>> result.add({"layer": "conv", "dense_ms": 1.0})
        >>> result.finish(summary=[{"layer": "conv"}], table="| layer |\\n|---|\\n| conv |\\n")
    """

    def __init__(
        self,
        suite: str,
        argv: Sequence[str],
        settings: dict[str, Any],
        *,
        threads: int,
        device: str = "cpu",
        out: Path | None = None,
        quick: bool = False,
        module: str | None = None,
    ) -> None:
        self.started = time.perf_counter()
        machine = describe_machine(threads)
        provenance = describe_run(command_line(suite, argv, module))
        self.data: dict[str, Any] = {
            "schema": SCHEMA,
            "suite": suite,
            "provenance": provenance,
            "machine": machine,
            "settings": settings,
            "records": [],
            "summary": [],
            "finished": False,
        }
        self.folder = (
            Path(out)
            if out
            else (SCRATCH if quick else ROOT) / machine_slug(machine, device) / suite
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.fromisoformat(provenance["date"]).strftime("%Y%m%d-%H%M%S")
        commit = (provenance["commit"] or "nocommit")[:7] + ("-dirty" * bool(provenance["dirty"]))
        self.path = self.folder / f"{stamp}-{commit}.json"

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.data["records"]

    def add(self, record: dict[str, Any]) -> None:
        self.data["records"].append(record)
        self.save()

    def save(self) -> None:
        self.data["wall_s"] = round(time.perf_counter() - self.started, 1)
        _write_json(self.data, self.path)

    def finish(self, summary: list[dict[str, Any]], table: str) -> Path:
        """Write the summary, the Markdown table beside the JSON, and the folder's INDEX.md."""
        self.data["summary"] = summary
        self.data["finished"] = True
        self.save()
        provenance = self.data["provenance"]
        header = (
            f"`{provenance['command']}` at {_commit_text(provenance)}, {provenance['date']}; "
            f"{_machine_text(self.data)}.\n\n"
        )
        self.path.with_suffix(".md").write_text(header + table)
        write_index(self.folder)
        return self.path


# ---------------------------------------------------------------------------------------------
# INDEX.md


def _commit_text(provenance: dict[str, Any]) -> str:
    commit = provenance.get("commit")
    if not commit:
        return "an unknown commit"
    text = commit[:7]
    if provenance.get("backfilled"):
        text += " (backfilled: the commit that added the file)"
    elif provenance.get("dirty"):
        text += " + uncommitted changes"
    return text


def _machine_text(data: dict[str, Any]) -> str:
    machine = data.get("machine") or {}
    if machine.get("gpu"):
        where = f"{machine['gpu']['name']}"
    elif machine.get("cpu"):
        isa = machine.get("isa") or "ISA not recorded"
        where = f"{machine['cpu']} ({isa})"
    else:
        where = "machine not recorded"
    if machine.get("threads"):
        where += f", {machine['threads']} threads"
    if machine.get("torch"):
        where += f", torch {machine['torch']}"
    return where


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows of dicts as a Markdown table, the columns in the order they first appear."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        return []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def write_index(folder: Path) -> Path:
    """``folder/INDEX.md``: every result JSON below ``folder`` (newest first) with its commit,
    command, machine and date, then each finished run's summary table."""
    folder = Path(folder)
    entries = []
    for path in sorted(folder.rglob("*.json")):
        data = load(path)
        provenance = data.get("provenance") or {}
        entries.append((provenance.get("date") or "", path.relative_to(folder).as_posix(), data))
    entries.sort(key=lambda entry: entry[0], reverse=True)
    lines = [
        f"# {folder.parent.name} / {folder.name}",
        "",
        (
            "Generated from the JSON files below this folder by `python -m benchmarks index`; "
            "do not edit. Backfilled files were written before the results schema: their commit "
            "is the one that added them."
        ),
        "",
        "| file | date | commit | machine | command |",
        "|---|---|---|---|---|",
    ]
    for date, name, data in entries:
        provenance = data.get("provenance") or {}
        command = provenance.get("command")
        lines.append(
            f"| [{name}]({name}) | {date[:10]} | {_commit_text(provenance)} | "
            f"{_machine_text(data)} | {f'`{command}`' if command else 'not recorded'} |"
        )
    for date, name, data in entries:
        if data.get("summary"):
            lines += ["", f"## {name}", ""] + markdown_table(data["summary"])
    others = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix not in (".json", ".partial") and p.name != "INDEX.md"
    )
    if others:
        lines += ["", "Other files: " + ", ".join(f"[{name}]({name})" for name in others) + "."]
    path = folder / "INDEX.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_indexes(root: Path = ROOT) -> list[Path]:
    """INDEX.md in every ``<machine>/<suite>/`` folder of ``root``, and ``root/INDEX.md``
    linking them."""
    written = []
    lines = [
        "# Benchmark results",
        "",
        "One folder per machine and suite; generated by `python -m benchmarks index`.",
        "",
        "| machine | suite | runs |",
        "|---|---|---|",
    ]
    for folder in sorted(p for p in Path(root).glob("*/*") if p.is_dir()):
        written.append(write_index(folder))
        runs = len(list(folder.rglob("*.json")))
        link = folder.relative_to(root).as_posix()
        lines.append(f"| {folder.parent.name} | [{folder.name}]({link}/INDEX.md) | {runs} |")
    index = Path(root) / "INDEX.md"
    index.write_text("\n".join(lines) + "\n")
    return [*written, index]


# ---------------------------------------------------------------------------------------------
# backfill


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def _legacy_machine(data: dict[str, Any]) -> dict[str, Any]:
    """What a legacy file says of its machine; the ISA was never recorded."""
    found = data.get("machine") or (data.get("meta") or {}).get("machine") or {}
    settings = data.get("settings") or {}
    environment = data.get("environment") or {}
    machine = {
        "cpu": found.get("cpu") or settings.get("cpu"),
        "isa": None,
        "cores": found.get("cores") or settings.get("cpus"),
        "threads": found.get("threads") or settings.get("threads"),
        "torch": found.get("torch") or settings.get("torch") or environment.get("torch")
        or (data.get("meta") or {}).get("torch"),
        "gpu": {"name": environment["gpu"]} if environment.get("gpu") else None,
    }  # fmt: skip
    return {key: value for key, value in machine.items() if value is not None} | {"isa": None}


def _legacy_command(data: dict[str, Any]) -> str | None:
    # tools/bench.py --merge files hold several runs: each cell names its own command
    commands = list(dict.fromkeys(c["command"] for c in data.get("cells", []) if "command" in c))
    if commands:
        return "; ".join(commands)
    for holder in (data.get("settings"), data.get("meta")):
        if isinstance(holder, dict) and holder.get("command"):
            return holder["command"]
    return None


def _origin(repo: Path, relative: str) -> tuple[str, str, list[str]]:
    """(commit, its author date, the file's names newest first) of the commit that added the
    file, following exact renames back (``git log --follow`` guesses among similar files)."""
    paths = [relative]
    while True:
        added = _git(repo, "log", "--diff-filter=A", "--format=%H %aI", "--", paths[-1])
        if not added:
            raise ValueError(f"{paths[-1]} has no commit that added it (not committed yet?)")
        commit, date = added.splitlines()[0].split()
        changes = _git(repo, "show", "--format=", "--name-status", "-M100%", commit)
        sources = [
            fields[1]
            for fields in (line.split("\t") for line in changes.splitlines())
            if fields[0].startswith("R") and fields[2] == paths[-1]
        ]
        if not sources:
            return commit, date, paths
        paths.append(sources[0])


def backfill(path: Path, suite: str, legacy_tool: str, repo: Path = REPO) -> bool:
    """Give a legacy result file the schema's provenance, its commit from git history (the
    commit that added the file, followed across renames). Returns False when the file has a
    provenance already. A file whose top level is a list is wrapped as {"records": [...]}."""
    path = Path(path)
    data = load(path)
    if "provenance" in data:
        return False
    commit, date, paths = _origin(repo, path.resolve().relative_to(repo.resolve()).as_posix())
    # the last commit that changed its content, under any of its names (renames are not changes)
    last = _git(repo, "log", "-1", "--diff-filter=AM", "--format=%H", "--", *paths)
    head = {
        "schema": SCHEMA,
        "suite": suite,
        "legacy_tool": legacy_tool,
        "provenance": {
            "commit": commit,
            "dirty": None,
            "commit_from": "git log --diff-filter=A, through exact renames (the commit that "
            "added the file)",
            "last_changed_in": last,
            "command": _legacy_command(data),
            "date": date,
            "date_from": "the author date of that commit",
            "backfilled": True,
        },
        "machine": _legacy_machine(data),
    }
    # the file's own fields stay as they were; its machine gains the schema's (unknown) ISA
    _write_json({**head, **data, "machine": {**head["machine"], **data.get("machine", {})}}, path)
    return True
