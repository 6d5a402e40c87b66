"""The same pruned models compiled by several commits of groupsparse, timed side by side: the
"no behaviour change" check of a refactor (issue 22: figures before and after agree within
noise).

    python -m benchmarks.experiments.before_after REV [REV ...] [--models resnet50 vgg16]
        [--sparsity 0.75] [--group-size 64] [--threads 2] [--rounds 6] [--calls 10] [--quick | --out DIR]

Each REV (a commit, or ``.`` for the working tree) is extracted with ``git archive`` into a
temporary folder and gets its own worker process (``before_after_child.py``), which imports
that tree's groupsparse (its C++ kernels are built on first use and cached by their sources),
builds each model from seed 0 (a registered model name, or one layer: ``conv:512,14`` is a
3x3 "same" conv of 512 channels on a 14x14 image, ``linear:768,768,128`` a linear on 128
tokens), prunes it group-wise and compiles it with ``compile_sparse``'s
defaults. The workers stay alive and take turns: each round, every worker times a block of
``--calls`` calls while the others wait, the order reversed every other round, so that drift
in the machine's speed falls on all alike. The workers' first outputs must agree (relative
difference below 1e-4 in float32): the commits compute the same thing.

The result goes to ``benchmarks/results/<machine>/before_after/``; the ratio column is the
first REV's median over each other's (above 1: the later one is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checks import relative_error
from ..provenance import REPO
from ..results import ResultFile, markdown_table
from ..timing import Stats

CHILD = Path(__file__).with_name("before_after_child.py")
AGREE = 1e-4  # relative difference of the workers' first outputs, float32


class Worker:
    """One tree's worker process."""

    def __init__(self, rev: str, tree: Path) -> None:
        self.rev = rev
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD.read_text()],
            cwd=tree,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={
                **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                "PYTHONPATH": str(tree),
            },
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        raise RuntimeError(f"the worker for {self.rev} ended (exit {self.process.wait()})")

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.close()
            self.process.wait()


def _tree(rev: str, scratch: Path) -> tuple[Path, str]:
    """(the source tree of ``rev``, its commit): ``.`` is the working tree as it is."""
    if rev == ".":
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        return REPO, head + " (working tree)"
    found = subprocess.run(["git", "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
                           check=False, cwd=REPO, capture_output=True, text=True)  # fmt: skip
    if found.returncode:
        raise SystemExit(f"before_after: {rev!r} is not a commit of {REPO}")
    commit = found.stdout.strip()
    tree = scratch / commit
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree, commit


def _relative_difference(a: list[float], b: list[float]) -> float:
    """The harness's relative error (``checks.relative_error``) of b against a."""
    return relative_error(torch.tensor(b), torch.tensor(a))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revs", nargs="+", help="commits to compare, '.' for the working tree")
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16", "bert-base"])
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument(
        "--quick", action="store_true", help="a check of the tool: out/, not results"
    )
    parser.add_argument("--out", help="write the result here instead")
    args = parser.parse_args(argv)
    settings = {k: v for k, v in vars(args).items()}
    result = ResultFile("before_after", sys.argv[1:] if argv is None else argv, settings,
                        threads=args.threads, quick=args.quick, out=args.out,
                        module=__spec__.name if __spec__ else __name__)  # fmt: skip
    summary = []
    with tempfile.TemporaryDirectory() as scratch:
        trees = [_tree(rev, Path(scratch)) for rev in args.revs]
        labels = [commit if [c for _, c in trees].count(commit) == 1 else f"{commit} #{i + 1}"
                  for i, (_, commit) in enumerate(trees)]  # fmt: skip
        workers = [Worker(label, tree) for (tree, _), label in zip(trees, labels, strict=True)]
        try:
            for model in args.models:
                request = {"model": model, "sparsity": args.sparsity,
                           "group_size": args.group_size, "threads": args.threads}  # fmt: skip
                loaded = [worker.ask(request) for worker in workers]  # one at a time
                for worker, info in zip(workers[1:], loaded[1:], strict=True):
                    difference = _relative_difference(loaded[0]["head"], info["head"])
                    if difference > AGREE:
                        raise SystemExit(f"{model}: {worker.rev}'s output differs from "
                                         f"{workers[0].rev}'s by {difference:.2e}")  # fmt: skip
                samples: dict[str, list[float]] = {w.rev: [] for w in workers}
                for turn in range(args.rounds):
                    for worker in workers if turn % 2 == 0 else workers[::-1]:
                        samples[worker.rev] += worker.ask({"time": args.calls})["ms"]
                row: dict[str, Any] = {"model": model, "sparsity": args.sparsity}
                first = Stats.from_ms(samples[workers[0].rev]).median_ms
                for worker, info in zip(workers, loaded, strict=True):
                    stats = Stats.from_ms(samples[worker.rev])
                    result.add({"model": model, "commit": worker.rev, **stats.as_dict(),
                                **{k: v for k, v in info.items() if k != "head"}})  # fmt: skip
                    row[f"{worker.rev} ms"] = round(stats.median_ms, 2)
                    row[f"{worker.rev} rewritten"] = f"{info['rewritten']}/{info['layers']}"
                    if worker is not workers[0]:
                        row[f"{workers[0].rev} / {worker.rev}"] = round(first / stats.median_ms, 3)
                summary.append(row)
                print(json.dumps(row), flush=True)
        finally:
            for worker in workers:
                worker.close()
    path = result.finish(summary, "\n".join(markdown_table(summary)) + "\n")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
