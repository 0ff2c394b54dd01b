"""Small bar charts as server-rendered SVG (issue 17): no script, nothing the strict CSP
forbids (SVG presentation attributes are not CSS). Each bar carries a `<title>` with its
day and value, which browsers show on hover and screen readers read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

WIDTH = 600
HEIGHT = 120
LABEL_SPACE = 16


def bar_chart(
    title: str,
    points: Sequence[tuple[str, float | None]],
    show: Callable[[float], str] = lambda value: f"{value:,.0f}",
) -> Markup:
    """An SVG bar per (label, value); None is a gap ("no data"). The tallest bar is the
    chart's height; the largest value and the first and last labels are written out."""
    values = [value for _, value in points if value is not None]
    top = max(values, default=0) or 1
    count = max(len(points), 1)
    slot = WIDTH / count
    bar = max(slot * 0.8, 1)
    plot = HEIGHT - LABEL_SPACE
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}"'
        f' role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for index, (label, value) in enumerate(points):
        x = index * slot + (slot - bar) / 2
        if value is None:
            text = f"{label}: no data"
            height = 0.0
        else:
            text = f"{label}: {show(value)}"
            height = plot * value / top
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{plot - height:.1f}" width="{bar:.1f}"'
            f' height="{max(height, 0.0):.1f}" fill="#2563eb"><title>{escape(text)}</title></rect>'
        )
    parts.append(
        f'<line x1="0" y1="{plot}" x2="{WIDTH}" y2="{plot}" stroke="#94a3b8" stroke-width="1"/>'
    )
    if points:
        parts.append(
            f'<text x="0" y="{HEIGHT - 3}" font-size="11" fill="#475569">'
            f"{escape(points[0][0])}</text>"
        )
        parts.append(
            f'<text x="{WIDTH}" y="{HEIGHT - 3}" font-size="11" fill="#475569"'
            f' text-anchor="end">{escape(points[-1][0])}</text>'
        )
    largest = escape(show(max(values, default=0)))
    parts.append(f'<text x="0" y="11" font-size="11" fill="#475569">max {largest}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
