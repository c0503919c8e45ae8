"""The forget/retain trade-off plot, drawn with Pillow (ComfyUI's dependencies have no matplotlib)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def tradeoff_png(path, points: dict[str, tuple[float, float]], curve: list[tuple[float, float, float]],
                 title: str, size=(760, 560)) -> None:
    """points: method -> (UA, mean(IRA, CRA)); curve: SPARE's (strength, UA, retain) in strength order."""
    width, height = size
    left, top, right, bottom = 70, 50, width - 200, height - 60
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((left, 15), title, fill="black", font=font)
    values = [p for p in points.values()] + [(u, r) for _, u, r in curve]
    lo_x = min([0.0] + [u for u, _ in values])
    lo_y = min([r for _, r in values] + [1.0]) - 0.05
    lo_y = max(0.0, min(lo_y, 0.9))

    def xy(u, r):
        return (left + (u - lo_x) / (1.0 - lo_x) * (right - left),
                bottom - (r - lo_y) / (1.0 - lo_y) * (bottom - top))

    draw.rectangle([left, top, right, bottom], outline="black")
    for i in range(6):
        u = lo_x + i * (1.0 - lo_x) / 5
        r = lo_y + i * (1.0 - lo_y) / 5
        x, _ = xy(u, lo_y)
        _, y = xy(lo_x, r)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 12, bottom + 8), f"{u:.0%}", fill="black", font=font)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((left - 40, y - 6), f"{r:.0%}", fill="black", font=font)
    draw.text(((left + right) // 2 - 120, height - 25), "UA (forgetting, higher is better)", fill="black", font=font)
    draw.text((8, top - 18), "mean(IRA, CRA) (retention)", fill="black", font=font)
    if curve:
        line = [xy(u, r) for _, u, r in curve]
        draw.line(line, fill=COLORS[0], width=2)
        for (s, u, r), (x, y) in zip(curve, line):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=COLORS[0])
            draw.text((x + 5, y + 2), f"{s:g}", fill=COLORS[0], font=font)
    for i, (name, (u, r)) in enumerate(points.items()):
        color = COLORS[i % len(COLORS)]
        x, y = xy(u, r)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=color)
        ly = top + 10 + 16 * i
        draw.ellipse([right + 15, ly, right + 25, ly + 10], fill=color)
        draw.text((right + 32, ly - 1), name, fill="black", font=font)
    if curve:
        ly = top + 10 + 16 * len(points)
        draw.line([right + 12, ly + 5, right + 28, ly + 5], fill=COLORS[0], width=2)
        draw.text((right + 32, ly - 1), "SPARE strength curve", fill="black", font=font)
    img.save(path)
