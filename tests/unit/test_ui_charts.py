"""The web UI's SVG geometry (pure): the metric chart's scale and marks, the lineage layout."""

from __future__ import annotations

from datetime import UTC, datetime

from registry.adapters.schemas import LineageNodeOut, LineageOut, VersionRefOut
from registry.ui.charts import NODE_W, lineage_graph, metric_chart


def test_metric_chart_scales_points_inside_the_plot():
    chart = metric_chart([(1, 0.5), (2, 0.9), (5, 0.7)], holders={5: ["production"]},
                         base_value=0.2)
    xs = [p.x for p in chart.points]
    assert xs == sorted(xs) and xs[0] == chart.left and xs[-1] == chart.right
    ys = {p.version: p.y for p in chart.points}
    assert chart.top <= ys[2] < ys[5] < ys[1] <= chart.bottom  # higher value, higher up
    assert chart.base_y is not None and ys[1] < chart.base_y <= chart.bottom
    assert [p.aliases for p in chart.points] == [[], [], ["production"]]
    assert chart.line.count(",") == 3
    assert [t.label for t in chart.x_ticks] == ["1", "2", "5"]


def test_metric_chart_of_one_point_or_equal_values():
    one = metric_chart([(3, 1.0)], holders={}, base_value=None)
    assert one.points[0].x == (one.left + one.right) / 2
    assert one.top < one.points[0].y < one.bottom and one.base_y is None
    flat = metric_chart([(1, 0.0), (2, 0.0)], holders={}, base_value=0.0)
    assert flat.points[0].y == flat.points[1].y == flat.base_y


def node(name: str, version: int, depth: int, parent: tuple[str, int] | None) -> LineageNodeOut:
    return LineageNodeOut(name=name, version=version, ref=f"{name}:{version}", status="registered",
                          peft_type="LORA", base_model=None, depth=depth,
                          created_at=datetime.now(UTC),
                          parent=VersionRefOut(name=parent[0], version=parent[1])
                          if parent else None)


def test_lineage_graph_columns_edges_and_forks():
    lineage = LineageOut(
        ref="a:2", version=node("a", 2, 0, ("a", 1)),
        ancestors=[node("a", 1, 1, None)],
        descendants=[node("a", 3, 1, ("a", 2)), node("b", 1, 1, ("a", 2)),
                     node("b", 2, 2, ("b", 1))],
        truncated=False)
    graph = lineage_graph(lineage)
    where = {n.ref: n for n in graph.nodes}
    assert [where[r].kind for r in ("a:1", "a:2", "a:3", "b:1", "b:2")] == [
        "same", "current", "same", "fork", "fork"]
    assert where["a:1"].x < where["a:2"].x < where["a:3"].x == where["b:1"].x < where["b:2"].x
    assert where["a:3"].y != where["b:1"].y
    assert len(graph.edges) == 4 and [e.fork for e in graph.edges].count(True) == 1
    for e in graph.edges:
        assert e.x2 - e.x1 > 0
    assert graph.width >= where["b:2"].x + NODE_W


def test_lineage_graph_leaves_out_edges_to_unlisted_parents():
    lineage = LineageOut(ref="a:5", version=node("a", 5, 0, ("a", 4)), ancestors=[],
                         descendants=[], truncated=True)
    graph = lineage_graph(lineage)
    assert len(graph.nodes) == 1 and graph.edges == [] and graph.truncated
