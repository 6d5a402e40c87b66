"""``python -m benchmarks <suite> [options]``; ``python -m benchmarks index``; ``python -m benchmarks report``;
``python -m benchmarks backfill SUITE TOOL FILE...``;
``python -m benchmarks vs_inductor GPU_RESULT.json...``. ``python -m benchmarks <suite> --help``
for a suite's options."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from . import SUITES

USAGE = f"""usage: python -m benchmarks SUITE [options]     (SUITE: {", ".join(SUITES)})
       python -m benchmarks index [FOLDER]        INDEX.md of every <machine>/<suite>/ folder
       python -m benchmarks report                docs/results.md from the newest runs
       python -m benchmarks backfill SUITE TOOL FILE...
                                                  give legacy result files their provenance
       python -m benchmarks vs_inductor GPU_RESULT.json...
                                                  issue 20's vs_inductor.json from gpu runs

Run from the repository root. Results go to benchmarks/results/<machine>/<suite>/ (--quick:
out/benchmarks/...). See benchmarks/README.md."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in SUITES:
        return importlib.import_module(f"benchmarks.suites.{command}").main(rest)
    if command == "index":
        from .results import ROOT, write_indexes

        for path in write_indexes(Path(rest[0]) if rest else ROOT):
            print("wrote", path)
        return 0
    if command == "report":
        from .report import write_results_doc

        print("wrote", write_results_doc())
        return 0
    if command == "backfill":
        from .results import backfill

        if len(rest) < 3:
            print("usage: python -m benchmarks backfill SUITE TOOL FILE...", file=sys.stderr)
            return 2
        suite, tool, *files = rest
        for name in files:
            done = backfill(Path(name), suite, tool)
            print(("backfilled" if done else "has a provenance already:"), name)
        return 0
    if command == "vs_inductor":
        from .vs_inductor import main as vs_inductor

        return vs_inductor(rest)
    print(f"benchmarks: unknown suite or command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
