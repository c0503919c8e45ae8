"""Small charts as ComfyUI IMAGE tensors ([1, H, W, 3] floats), drawn with Pillow alone."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, MARGIN = 720, 400, 48


def _to_image(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _canvas(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    draw.text((MARGIN, 12), title, fill="black", font=ImageFont.load_default())
    return img, draw


def line_chart(title: str, series: dict[str, tuple[list[float], list[float]]], x_label: str) -> torch.Tensor:
    """One or more (x, y) series on shared axes, each scaled to the common range."""
    img, draw = _canvas(title)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]
    xs = [x for x_values, _ in series.values() for x in x_values] or [0.0, 1.0]
    ys = [y for _, y_values in series.values() for y in y_values] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > min(0.0, min(ys)) else 1.0
    left, top, right, bottom = MARGIN, 36, WIDTH - 16, HEIGHT - MARGIN

    def point(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text((left - 40, top), f"{y1:.3g}", fill="black")
    draw.text((left - 40, bottom - 10), f"{y0:.3g}", fill="black")
    draw.text((left, bottom + 6), f"{x0:.4g}", fill="black")
    draw.text((right - 40, bottom + 6), f"{x1:.4g}", fill="black")
    draw.text(((left + right) // 2 - 30, bottom + 22), x_label, fill="black")
    for i, (name, (x_values, y_values)) in enumerate(series.items()):
        color = colors[i % len(colors)]
        if len(x_values) > 1:
            draw.line([point(x, y) for x, y in zip(x_values, y_values)], fill=color, width=2)
        draw.text((right - 220, top + 14 * i), name, fill=color)
    return _to_image(img)


def bar_heatmap(title: str, labels: list[str], values: list[float], selected: set[str]) -> torch.Tensor:
    """One row per label, its bar length and colour by value; selected rows marked with '*'."""
    row_height = 12
    height = max(HEIGHT, 48 + row_height * len(labels))
    img = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 8), title, fill="black")
    top = max(values) if values and max(values) > 0 else 1.0
    bar_left, bar_right = 330, WIDTH - 12
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 32 + i * row_height
        heat = value / top
        color = (int(255 * heat), int(80 * (1 - heat)), int(255 * (1 - heat)))
        draw.rectangle([bar_left, y + 1, bar_left + heat * (bar_right - bar_left), y + row_height - 2], fill=color)
        mark = "* " if label in selected else "  "
        draw.text((8, y), (mark + label)[-54:], fill="black")
    return _to_image(img)


def image_grid(rows: list[list[torch.Tensor]], row_labels: list[str], column_labels: list[str]) -> torch.Tensor:
    """rows of [H, W, 3] images with a label strip on top of each column and left of each row."""
    cell_h, cell_w = rows[0][0].shape[0], rows[0][0].shape[1]
    label_w, label_h = 220, 20
    img = Image.new("RGB", (label_w + cell_w * len(column_labels), label_h + cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    for c, label in enumerate(column_labels):
        draw.text((label_w + c * cell_w + 4, 4), label, fill="black")
    for r, (label, cells) in enumerate(zip(row_labels, rows)):
        draw.text((4, label_h + r * cell_h + cell_h // 2 - 6), label[:36], fill="black")
        for c, cell in enumerate(cells):
            pixels = (cell.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            img.paste(Image.fromarray(pixels), (label_w + c * cell_w, label_h + r * cell_h))
    return _to_image(img)
