"""Geometry of the server-rendered SVG (pure): a metric across versions, and a lineage graph.

The templates draw what these compute, so the pages need no JavaScript and no network, and the
layouts are unit-tested without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from registry.adapters.schemas import LineageNodeOut, LineageOut


def _fmt(value: float) -> str:
    return f"{value:.4g}"


@dataclass
class Point:
    x: float
    y: float
    version: int
    value: float
    label: str
    aliases: list[str] = field(default_factory=list)


@dataclass
class Tick:
    pos: float
    label: str


@dataclass
class MetricChart:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    points: list[Point]
    line: str
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    base_y: float | None
    base_label: str | None


def metric_chart(series: Sequence[tuple[int, float]], *, holders: Mapping[int, list[str]],
                 base_value: float | None, width: int = 760, height: int = 260) -> MetricChart:
    """Versions on x (in order, evenly spaced), values on y; the base's own score, when known,
    as a horizontal reference line inside the same scale."""
    left, right, top, bottom = 64, width - 16, 16, height - 36
    values = [v for _, v in series] + ([base_value] if base_value is not None else [])
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    else:
        pad = (hi - lo) * 0.08
        lo, hi = lo - pad, hi + pad

    def y_of(value: float) -> float:
        return round(bottom - (value - lo) / (hi - lo) * (bottom - top), 2)

    n = len(series)

    def x_of(i: int) -> float:
        return round(left + (right - left) * (0.5 if n == 1 else i / (n - 1)), 2)

    points = [Point(x=x_of(i), y=y_of(value), version=version, value=value,
                    label=_fmt(value), aliases=sorted(holders.get(version, [])))
              for i, (version, value) in enumerate(series)]
    step = max(1, n // 10)
    x_ticks = [Tick(pos=p.x, label=str(p.version)) for i, p in enumerate(points)
               if i % step == 0 or i == n - 1]
    y_ticks = [Tick(pos=y_of(lo + (hi - lo) * k / 4), label=_fmt(lo + (hi - lo) * k / 4))
               for k in range(5)]
    return MetricChart(
        width=width, height=height, left=left, right=right, top=top, bottom=bottom,
        points=points, line=" ".join(f"{p.x},{p.y}" for p in points), y_ticks=y_ticks,
        x_ticks=x_ticks, base_y=y_of(base_value) if base_value is not None else None,
        base_label=_fmt(base_value) if base_value is not None else None)


@dataclass
class GraphNode:
    ref: str
    name: str
    version: int
    status: str
    x: float
    y: float
    kind: str  # "current", "same" (this adapter) or "fork" (another adapter)


@dataclass
class GraphEdge:
    x1: float
    y1: float
    x2: float
    y2: float
    fork: bool


@dataclass
class LineageGraph:
    width: int
    height: int
    node_width: int
    node_height: int
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    truncated: bool


NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD = 150, 34, 48, 14, 12


def lineage_graph(lineage: LineageOut) -> LineageGraph:
    """Columns by generation: ancestors left (the root first), the version, then its
    descendants by depth; an edge from each parent shown to its child."""
    me = lineage.version
    ancestors = list(reversed(lineage.ancestors))
    columns: list[list[LineageNodeOut]] = [[a] for a in ancestors] + [[me]]
    by_depth: dict[int, list[LineageNodeOut]] = {}
    for d in lineage.descendants:
        by_depth.setdefault(d.depth, []).append(d)
    columns += [by_depth[k] for k in sorted(by_depth)]
    placed: dict[str, GraphNode] = {}
    parents: dict[str, str | None] = {}
    for col, members in enumerate(columns):
        for row, node in enumerate(members):
            kind = ("current" if node.ref == me.ref
                    else "same" if node.name == me.name else "fork")
            placed[node.ref] = GraphNode(
                ref=node.ref, name=node.name, version=node.version, status=node.status,
                x=PAD + col * (NODE_W + COL_GAP), y=PAD + row * (NODE_H + ROW_GAP), kind=kind)
            parents[node.ref] = (f"{node.parent.name}:{node.parent.version}"
                                 if node.parent else None)
    edges = []
    for ref, parent in parents.items():
        if parent is None or parent not in placed:
            continue
        a, b = placed[parent], placed[ref]
        edges.append(GraphEdge(x1=a.x + NODE_W, y1=a.y + NODE_H / 2, x2=b.x,
                               y2=b.y + NODE_H / 2, fork=a.name != b.name))
    rows = max(len(c) for c in columns)
    return LineageGraph(
        width=int(2 * PAD + len(columns) * NODE_W + (len(columns) - 1) * COL_GAP),
        height=int(2 * PAD + rows * NODE_H + (rows - 1) * ROW_GAP),
        node_width=NODE_W, node_height=NODE_H, nodes=list(placed.values()), edges=edges,
        truncated=lineage.truncated)
