"""The per-layer report of a compilation: what was found, what was decided and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import fx

from ..passes import LayerPlan, SkippedLayer
from ..passes.common import META_PLAN, META_SKIPPED

__all__ = ["Report", "ReportRow"]


@dataclass(frozen=True)
class ReportRow:
    name: str
    op: str
    shape: tuple[int, int]  # (M, K) GEMM view
    pattern: str
    groups: int
    group_size: int
    kept_fraction: float
    flops_dense: int
    flops_sparse: int
    decision: str
    kernel: str
    reason: str
    dense_ms: float | None
    sparse_ms: float | None

    @classmethod
    def from_plan(cls, plan: LayerPlan) -> ReportRow:
        sparse = plan.decision == "sparse"
        return cls(
            name=plan.name, op=plan.kind, shape=(plan.rows, plan.columns), pattern=plan.pattern,
            groups=plan.groups, group_size=plan.group_size, kept_fraction=plan.kept_fraction,
            flops_dense=plan.flops_dense, flops_sparse=plan.flops_sparse if sparse else plan.flops_dense,
            decision=plan.decision, kernel=plan.kernel, reason=plan.reason,
            dense_ms=plan.dense_ms, sparse_ms=plan.sparse_ms,
        )  # fmt: skip

    @classmethod
    def from_skipped(cls, skipped: SkippedLayer) -> ReportRow:
        """A conv/linear call the compiler left as it is (excluded, or weights computed in
        forward): dense, with the reason; its FLOPs are not counted."""
        return cls(
            name=skipped.name, op=skipped.kind, shape=skipped.shape, pattern="-", groups=0,
            group_size=0, kept_fraction=skipped.kept_fraction, flops_dense=0, flops_sparse=0,
            decision="dense", kernel="dense", reason=skipped.reason, dense_ms=None, sparse_ms=None,
        )  # fmt: skip


def _flops(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


class Report:
    """One row per prunable layer; ``print(report)`` gives the table."""

    def __init__(self, rows: list[ReportRow], capture: str = "") -> None:
        self.rows = list(rows)
        self.capture = capture

    @classmethod
    def from_graph(cls, gm: fx.GraphModule, capture: str = "") -> Report:
        """A row for every conv/linear call of a compiled graph, in graph order: each planned
        layer, and each call the compiler left as it is with the reason."""
        rows = []
        for node in gm.graph.nodes:
            if META_PLAN in node.meta:
                rows.append(ReportRow.from_plan(node.meta[META_PLAN]))
            elif META_SKIPPED in node.meta:
                rows.append(ReportRow.from_skipped(node.meta[META_SKIPPED]))
        return cls(rows, capture=capture)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> ReportRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r}; layers: {[r.name for r in self.rows]}")

    @property
    def rewritten(self) -> list[str]:
        return [row.name for row in self.rows if row.decision == "sparse"]

    @property
    def flops_dense(self) -> int:
        return sum(row.flops_dense for row in self.rows)

    @property
    def flops_sparse(self) -> int:
        return sum(row.flops_sparse for row in self.rows)

    def to_dicts(self) -> list[dict]:
        return [asdict(row) for row in self.rows]

    def __str__(self) -> str:
        header = (
            "layer",
            "op",
            "M x K",
            "pattern",
            "groups",
            "kept",
            "FLOPs",
            "after",
            "decision",
            "reason",
        )
        lines = [header]
        for row in self.rows:
            groups = f"{row.groups}x{row.group_size}" if row.pattern == "group" else "-"
            lines.append((
                row.name, row.op, f"{row.shape[0]}x{row.shape[1]}", row.pattern, groups,
                f"{row.kept_fraction:.0%}", _flops(row.flops_dense), _flops(row.flops_sparse),
                row.decision if row.decision == "dense" else f"sparse ({row.kernel})", row.reason,
            ))  # fmt: skip
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
        text = [
            "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths))
            + "  "
            + str(line[-1])
            for line in lines
        ]
        text.insert(1, "-" * min(160, max(len(t) for t in text)))
        dense, sparse = self.flops_dense, self.flops_sparse
        ratio = f"{dense / sparse:.2f}x fewer" if sparse else "n/a"
        text.append(
            f"{len(self.rewritten)} of {len(self.rows)} layers rewritten; prunable-layer FLOPs "
            f"{_flops(dense)} -> {_flops(sparse)} ({ratio})"
        )
        return "\n".join(text)

    def __repr__(self) -> str:
        return f"Report({len(self.rows)} layers, {len(self.rewritten)} rewritten)"
