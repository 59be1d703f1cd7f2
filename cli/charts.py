"""Self-contained HTML reports with inline SVG charts (``stoker plan --html``, ``stoker report dead-time
--html``): no script, no stylesheet or font from elsewhere, so the page opens anywhere, offline."""

from __future__ import annotations

import html
import math

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
WIDTH, HEIGHT = 860, 340
LEFT, RIGHT, TOP, BOTTOM = 70, 250, 40, 50


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e9:
        return f"{value / 1e9:g}G"
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _frame(title: str, xlabel: str, ylabel: str, body: list[str]) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
            f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15" font-family="sans-serif">'
            f"{escape(title)}</text>",
            f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 10}" text-anchor="middle" '
            f'font-size="12" font-family="sans-serif">{escape(xlabel)}</text>',
            f'<text x="16" y="{TOP + (HEIGHT - TOP - BOTTOM) / 2}" text-anchor="middle" font-size="12" '
            f'font-family="sans-serif" transform="rotate(-90 16 {TOP + (HEIGHT - TOP - BOTTOM) / 2})">'
            f"{escape(ylabel)}</text>",
            *body,
            "</svg>",
        ]
    )


def _axes(xticks: list[tuple[float, str]], yticks: list[tuple[float, str]]) -> list[str]:
    """Grid lines and labels; positions are already in pixels."""
    out = []
    for y, label in yticks:
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'font-family="sans-serif">{escape(label)}</text>'
        )
    for x, label in xticks:
        out.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
            f'font-family="sans-serif">{escape(label)}</text>'
        )
    bottom = HEIGHT - BOTTOM
    out.append(f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="#333"/>')
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>')
    return out


def _legend(names: list[str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        y = TOP + 10 + i * 18
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{y - 9}" width="12" height="12" fill="{color}"/>')
        short = name if len(name) <= 36 else name[:35] + "…"
        out.append(
            f'<text x="{WIDTH - RIGHT + 30}" y="{y + 1}" font-size="11" font-family="sans-serif">'
            f"<title>{escape(name)}</title>{escape(short)}</text>"
        )
    return out


def line_chart(
    series: list[tuple[str, list[tuple[float, float]]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    markers: bool = False,
) -> str:
    """Lines, one per named series of (x, y) points; with ``markers`` a dot on each point too (a series of
    one point is then still seen)."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return _frame(title, xlabel, ylabel, [_no_data()])
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    xt, yt = _nice_ticks(x_lo, x_hi), _nice_ticks(y_lo, y_hi)
    x_lo, x_hi, y_lo, y_hi = min(xt[0], x_lo), max(xt[-1], x_hi), min(yt[0], y_lo), max(yt[-1], y_hi)

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / ((x_hi - x_lo) or 1) * (WIDTH - LEFT - RIGHT)

    def py(y: float) -> float:
        return HEIGHT - BOTTOM - (y - y_lo) / ((y_hi - y_lo) or 1) * (HEIGHT - TOP - BOTTOM)

    body = _axes([(px(x), _fmt(x)) for x in xt], [(py(y), _fmt(y)) for y in yt])
    for i, (_, pts) in enumerate(series):
        if not pts:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        color = PALETTE[i % len(PALETTE)]
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{path}"/>')
        if markers:
            body += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>' for x, y in pts]
    body += _legend([name for name, _ in series])
    return _frame(title, xlabel, ylabel, body)


def bar_chart(
    groups: list[str], stacks: list[tuple[str, list[float]]], *, title: str, ylabel: str, xlabel: str = ""
) -> str:
    """Bars, one per group; with more than one stack, each bar is stacked from them (same order)."""
    totals = [sum(values[i] for _, values in stacks) for i in range(len(groups))]
    if not groups or max(totals, default=0) <= 0:
        return _frame(title, xlabel, ylabel, [_no_data()])
    yt = _nice_ticks(0.0, max(totals))
    y_hi = max(yt[-1], max(totals))

    def py(y: float) -> float:
        return HEIGHT - BOTTOM - y / y_hi * (HEIGHT - TOP - BOTTOM)

    slot = (WIDTH - LEFT - RIGHT) / len(groups)
    body = _axes([], [(py(y), _fmt(y)) for y in yt])
    for g, group in enumerate(groups):
        x = LEFT + g * slot + slot * 0.15
        base = 0.0
        for s, (_, values) in enumerate(stacks):
            v = values[g]
            if v > 0:
                top = py(base + v)
                body.append(
                    f'<rect x="{x:.1f}" y="{top:.1f}" width="{slot * 0.7:.1f}" '
                    f'height="{py(base) - top:.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                    f"<title>{escape(group)}: {_fmt(v)}</title></rect>"
                )
            base += v
        label = group if len(group) <= 14 else group[:13] + "…"
        body.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="10" '
            f'font-family="sans-serif"><title>{escape(group)}</title>{escape(label)}</text>'
        )
    body += _legend([name for name, _ in stacks] if len(stacks) > 1 else [])
    return _frame(title, xlabel, ylabel, body)


def _no_data() -> str:
    return (
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="14" '
        'font-family="sans-serif" fill="#888">no data</text>'
    )


def table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """A whole HTML page: a heading, then each (heading, HTML) section."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
        "figure{margin:12px 0}</style>",
        f"</head><body><h1>{escape(title)}</h1>",
    ]
    for heading, content in sections:
        parts.append(f"<section><h2>{escape(heading)}</h2>{content}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def figure(svg: str) -> str:
    return f"<figure>{svg}</figure>"
