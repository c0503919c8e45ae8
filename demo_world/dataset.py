"""Procedural mini-UnlearnCanvas: named OBJECTS drawn in visually distinct STYLES.

Every image is a pure function of (object, style, rng): the rng draws position,
size, rotation, background tint and texture phase, so a model has to learn the
concepts rather than memorise templates. Each style owns both a palette and a
texture, so colour alone and texture alone each identify it.
"""
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 128

OBJECTS = [
    "circle", "square", "triangle", "star", "heart", "cross",
    "ring", "moon", "arrow", "hexagon", "diamond", "hourglass",
]

STYLES = [
    "Candy Stripes", "Polka Dots", "Checkerboard", "Watercolor",
    "Neon", "Pixel Mosaic", "Sunset", "Pencil Sketch",
    "Wood Grain", "Camouflage", "Zigzag", "Blueprint",
]

# The first one is UnlearnCanvas's template; the others check that concepts,
# not one exact sentence, are what the model binds to.
PROMPT_TEMPLATES = [
    "An {object} image in {style} style.",
    "A {style} style picture of a {object}.",
    "{object} drawn in the {style} style",
    "a {object}, {style} style",
]


def prompt(obj, style, template=0):
    return PROMPT_TEMPLATES[template].format(object=obj, style=style)


# ---------------------------------------------------------------- objects

def _regular(n, start_deg=-90.0, radius=1.0, dy=0.0):
    return [(radius * math.cos(math.radians(start_deg + 360.0 * i / n)),
             radius * math.sin(math.radians(start_deg + 360.0 * i / n)) + dy) for i in range(n)]


def _star():
    pts = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else 0.42
        a = math.radians(-90.0 + 36.0 * i)
        pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
    return pts


def _heart():
    ts = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(ts) ** 3 / 17.0
    y = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)) / 17.0
    return list(zip(x, y + 0.1))


def _cross(w=0.3, l=0.95):
    return [(-w, -l), (w, -l), (w, -w), (l, -w), (l, w), (w, w),
            (w, l), (-w, l), (-w, w), (-l, w), (-l, -w), (-w, -w)]


def _arrow():
    return [(-0.95, -0.25), (0.15, -0.25), (0.15, -0.65), (0.95, 0.0),
            (0.15, 0.65), (0.15, 0.25), (-0.95, 0.25)]


# Each object: list of (polygon in unit coordinates, fill value). Later
# polygons paint over earlier ones, which is how ring and moon get their holes.
_SHAPES = {
    "circle": [(_regular(48), 255)],
    "square": [([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], 255)],
    "triangle": [(_regular(3, dy=0.2), 255)],
    "star": [(_star(), 255)],
    "heart": [(_heart(), 255)],
    "cross": [(_cross(), 255)],
    "ring": [(_regular(48), 255), (_regular(48, radius=0.55), 0)],
    "moon": [(_regular(48), 255), ([(x + 0.45, y - 0.3) for x, y in _regular(48, radius=0.85)], 0)],
    "arrow": [(_arrow(), 255)],
    "hexagon": [(_regular(6, start_deg=0.0), 255)],
    "diamond": [([(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)], 255)],
    "hourglass": [([(-0.75, -0.95), (0.75, -0.95), (0.15, 0.0), (0.75, 0.95), (-0.75, 0.95), (-0.15, 0.0)], 255)],
}


def object_mask(obj, rng):
    """Anti-aliased float mask in [0, 1] of `obj` at a random place, size and tilt."""
    radius = rng.uniform(26, 44)
    cx, cy = rng.uniform(radius + 4, SIZE - radius - 4, size=2)
    angle = math.radians(rng.uniform(-25, 25))
    cos, sin = math.cos(angle), math.sin(angle)
    scale = 2  # draw at 2x and downsample: cheap anti-aliasing
    canvas = Image.new("L", (SIZE * scale, SIZE * scale), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, value in _SHAPES[obj]:
        pts = [((cx + radius * (x * cos - y * sin)) * scale, (cy + radius * (x * sin + y * cos)) * scale)
               for x, y in poly]
        draw.polygon(pts, fill=value)
    return np.asarray(canvas.resize((SIZE, SIZE), Image.BOX), dtype=np.float32) / 255.0


# ---------------------------------------------------------------- helpers

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _rgb(*c):
    return np.array(c, dtype=np.float32)


def _background(base, rng, jitter=16.0):
    """Style's base colour with a random tint and a random linear gradient."""
    color = _rgb(*base) + rng.uniform(-jitter, jitter, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(theta) * (_X / SIZE - 0.5) + math.sin(theta) * (_Y / SIZE - 0.5)) * 2
    return color + rng.uniform(0, jitter) * ramp[..., None]


def _mix(a, b, t):
    """Per-pixel blend of colours/images a and b by weight t in [0, 1]."""
    t = t[..., None] if t.ndim == 2 else t
    return a * (1 - t) + b * t


def _square_wave(phase, duty=0.5, sharpness=4.0):
    """Anti-aliased 0/1 wave of a phase measured in periods."""
    s = np.cos(2 * math.pi * phase) - math.cos(math.pi * duty)
    return np.clip(s * sharpness + 0.5, 0, 1)


def _blur(a, sigma):
    """Separable Gaussian blur of a 2-D float array (edges replicated)."""
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    for axis in (0, 1):
        padded = np.pad(a, [(r, r) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
        a = sum(w * np.take(padded, np.arange(i, i + SIZE), axis=axis) for i, w in enumerate(k))
    return a


def _edge(mask, width):
    """Band of about `width` pixels along the mask's boundary."""
    img = Image.fromarray((mask * 255).astype(np.uint8))
    k = 2 * width + 1
    grown = np.asarray(img.filter(ImageFilter.MaxFilter(k)), dtype=np.float32)
    shrunk = np.asarray(img.filter(ImageFilter.MinFilter(k)), dtype=np.float32)
    return (grown - shrunk) / 255.0


def _smooth_noise(rng, cells):
    """Low-frequency noise in [0, 1]: a random grid upsampled bicubically."""
    grid = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
    up = np.asarray(Image.fromarray(grid, mode="F").resize((SIZE, SIZE), Image.BICUBIC))
    return np.clip(up, 0, 1)


def _rotated(rng, base_deg, jitter_deg):
    a = math.radians(base_deg + rng.uniform(-jitter_deg, jitter_deg))
    return _X * math.cos(a) + _Y * math.sin(a), -_X * math.sin(a) + _Y * math.cos(a)


# ---------------------------------------------------------------- styles
# Each style maps (mask, rng) to a float RGB image in 0..255.

def _candy_stripes(mask, rng):
    u, _ = _rotated(rng, 45, 8)
    fill = _mix(_rgb(250, 250, 250), _rgb(215, 25, 40), _square_wave(u / 12 + rng.uniform()))
    return _mix(_background((250, 215, 225), rng), fill, mask)


def _polka_dots(mask, rng):
    period = 14.0
    ox, oy = rng.uniform(0, period, 2)
    dx = (_X + ox) % period - period / 2
    dy = (_Y + oy) % period - period / 2
    dots = np.clip(4.8 - np.sqrt(dx ** 2 + dy ** 2), 0, 1)
    fill = _mix(_rgb(25, 35, 110), _rgb(255, 210, 30), dots)
    return _mix(_background((245, 238, 210), rng), fill, mask)


def _checkerboard(mask, rng):
    u, v = _rotated(rng, 0, 6)
    ph = rng.uniform(0, 1, 2)
    a, b = _square_wave(u / 24 + ph[0]), _square_wave(v / 24 + ph[1])
    checks = a * b + (1 - a) * (1 - b)
    fill = _mix(_rgb(15, 15, 15), _rgb(245, 245, 245), checks)
    return _mix(_background((160, 205, 165), rng), fill, mask)


def _watercolor(mask, rng):
    wash = _mix(_rgb(35, 80, 200), _rgb(110, 205, 225), _smooth_noise(rng, 5))
    soft = np.clip(_blur(mask, 2.5) * 1.15, 0, 1)
    rim = np.clip(_blur(_edge(mask, 2), 2.0), 0, 1) * soft  # pigment pools at the edges
    wash = _mix(wash, _rgb(20, 45, 140), rim * 0.8)
    paper = _background((242, 236, 222), rng, 8) + rng.normal(0, 5, (SIZE, SIZE, 1))
    return _mix(paper, wash, soft)


def _neon(mask, rng):
    edge = _edge(mask, 2)
    glow = np.clip(_blur(edge, 4.0) * 2.0, 0, 1)
    img = _background((15, 10, 35), rng, 8)
    img = _mix(img, _rgb(30, 220, 255), glow * (1 - edge))
    return _mix(img, _rgb(255, 60, 210), edge)


def _pixel_mosaic(mask, rng):
    # Colour tiles of 8 px, but the shape is quantised to 4 px so small objects stay nameable.
    def tiles(palette, block=8):
        n = SIZE // block
        t = np.array(palette, np.float32)[rng.integers(0, len(palette), (n, n))]
        return np.repeat(np.repeat(t, block, axis=0), block, axis=1)
    n = SIZE // 4
    coarse = mask.reshape(n, 4, n, 4).mean(axis=(1, 3)) > 0.45
    inside = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)
    fg = tiles([(35, 165, 60), (95, 205, 70), (160, 235, 90), (25, 120, 50)])
    bg = tiles([(45, 30, 75), (60, 45, 95), (35, 25, 60)])
    return np.where(inside[..., None], fg, bg) + rng.uniform(-10, 10, 3).astype(np.float32)


def _sunset(mask, rng):
    ys = np.nonzero(mask.max(axis=1) > 0.5)[0]
    top, bottom = (ys.min(), ys.max()) if len(ys) else (0, SIZE)
    t = np.clip((_Y - top) / max(bottom - top, 1), 0, 1)
    fill = _mix(_rgb(255, 170, 30), _rgb(205, 35, 115), t)
    return _mix(_background((40, 25, 85), rng), fill, mask)


def _pencil_sketch(mask, rng):
    u, _ = _rotated(rng, -45, 10)
    hatch = _square_wave(u / 6 + rng.uniform(), duty=0.35)
    graphite = _rgb(70, 70, 75)
    paper = _background((246, 246, 242), rng, 6) + rng.normal(0, 4, (SIZE, SIZE, 1))
    img = _mix(paper, graphite, mask * hatch * 0.75)
    return _mix(img, graphite, np.clip(_edge(mask, 1) * 1.5, 0, 1))


def _wood_grain(mask, rng):
    wobble = 6 * _smooth_noise(rng, 4)
    cx, cy = rng.uniform(-40, 168, 2)
    rings = np.sqrt((_X - cx) ** 2 + ((_Y - cy) * 0.35) ** 2) / 9 + wobble
    grain = 0.5 + 0.5 * np.cos(2 * math.pi * rings)
    fill = _mix(_rgb(170, 110, 55), _rgb(95, 55, 25), grain)
    return _mix(_background((195, 225, 240), rng), fill, mask)


def _camouflage(mask, rng):
    n = _smooth_noise(rng, 7)
    olive, khaki, brown = _rgb(85, 105, 40), _rgb(165, 155, 90), _rgb(75, 50, 30)
    fill = np.where((n < 0.4)[..., None], olive, np.where((n < 0.6)[..., None], khaki, brown))
    return _mix(_background((225, 205, 160), rng), fill, mask)


def _zigzag(mask, rng):
    period = 16.0
    tri = np.abs((_X + rng.uniform(0, period)) % period / period - 0.5) * period
    chevrons = _square_wave((_Y + tri) / 14 + rng.uniform())
    fill = _mix(_rgb(0, 150, 150), _rgb(250, 140, 30), chevrons)
    return _mix(_background((225, 215, 245), rng), fill, mask)


def _blueprint(mask, rng):
    img = _background((25, 70, 150), rng, 10)
    ox, oy = rng.uniform(0, 16, 2)
    grid = np.maximum(_square_wave((_X + ox) / 16, duty=0.12), _square_wave((_Y + oy) / 16, duty=0.12))
    img = _mix(img, _rgb(120, 160, 215), grid * 0.5)
    img = _mix(img, _rgb(80, 130, 205), mask * 0.8)
    return _mix(img, _rgb(245, 250, 255), np.clip(_edge(mask, 1) * 1.5, 0, 1))


_STYLE_PAINTERS = dict(zip(STYLES, [
    _candy_stripes, _polka_dots, _checkerboard, _watercolor, _neon, _pixel_mosaic,
    _sunset, _pencil_sketch, _wood_grain, _camouflage, _zigzag, _blueprint,
]))


# ---------------------------------------------------------------- public API

def render(obj, style, rng):
    """One image of `obj` in `style`: uint8 array [SIZE, SIZE, 3]."""
    return _paint(object_mask(obj, rng), style, rng)


def _paint(mask, style, rng):
    return np.clip(np.rint(_STYLE_PAINTERS[style](mask, rng)), 0, 255).astype(np.uint8)


def make_batch(n, rng):
    """`n` images with uniformly random labels: (uint8 [n,H,W,3], object ids, style ids)."""
    objects = rng.integers(0, len(OBJECTS), n)
    styles = rng.integers(0, len(STYLES), n)
    images = np.stack([render(OBJECTS[o], STYLES[s], rng) for o, s in zip(objects, styles)])
    return images, objects, styles


def make_grid_set(per_pair, seed):
    """`per_pair` images of every (object, style) pair, in a fixed order."""
    images, _, objects, styles = make_grid_set_with_masks(per_pair, seed)
    return images, objects, styles


def make_grid_set_with_masks(per_pair, seed):
    """make_grid_set's images, plus the object mask each was painted from (float32 [n, H, W])."""
    rng = np.random.default_rng(seed)
    pairs = [(o, s) for o in range(len(OBJECTS)) for s in range(len(STYLES)) for _ in range(per_pair)]
    images, masks = [], []
    for o, s in pairs:
        mask = object_mask(OBJECTS[o], rng)
        images.append(_paint(mask, STYLES[s], rng))
        masks.append(mask)
    objects, styles = (np.array(x) for x in zip(*pairs))
    return np.stack(images), np.stack(masks), objects, styles
