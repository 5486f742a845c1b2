"""Drawing documents with Pillow: printed and hand-filled text, stamps, signatures, and scan artefacts.

Fonts come with the installed packages, nothing is downloaded: the DejaVu family in matplotlib's package data and
Pillow's own scalable default font (Aileron, Pillow >= 10.1). Every drawing call returns the pixel box of what it
drew, so the generator can record where each field is; `scan` moves those boxes with the page when it rotates it.
"""
from __future__ import annotations

import io
import math
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Box = list[int]   # [x0, y0, x1, y1], pixels, x1 / y1 exclusive

PRINTED_FAMILIES = ("sans", "serif", "mono", "pillow")
HAND_FAMILIES = ("sans-oblique", "serif-italic", "mono-oblique")
_DEJAVU = {"sans": "DejaVuSans.ttf", "sans-bold": "DejaVuSans-Bold.ttf", "serif": "DejaVuSerif.ttf",
           "serif-bold": "DejaVuSerif-Bold.ttf", "mono": "DejaVuSansMono.ttf", "sans-oblique": "DejaVuSans-Oblique.ttf",
           "serif-italic": "DejaVuSerif-Italic.ttf", "mono-oblique": "DejaVuSansMono-Oblique.ttf"}
INKS = {"blue": (28, 52, 150), "black": (30, 30, 38), "dark blue": (18, 30, 96)}
STAMP_COLORS = ((190, 30, 40), (40, 60, 170), (110, 40, 140))


def _dejavu_dir() -> Path:
    import matplotlib
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=256)
def font(family: str, size: int) -> ImageFont.FreeTypeFont:
    """A scalable font by family name ("sans", "serif-bold", "pillow", ...) at `size` pixels."""
    if family == "pillow":
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(_dejavu_dir() / _DEJAVU[family]), size)


def bold_of(family: str) -> str:
    return {"serif": "serif-bold"}.get(family, "sans-bold")


def fit_size(text: str, family: str, size: int, max_width: float, min_size: int = 8) -> int:
    """The largest size <= `size` at which `text` fits in `max_width` pixels (never below min_size)."""
    while size > min_size and font(family, size).getlength(text) > max_width:
        size -= 1
    return size


def union(boxes) -> Box:
    boxes = [b for b in boxes if b]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


class Canvas:
    """A page and a pen. Text is placed by its left end on the baseline (Pillow anchor "ls")."""

    def __init__(self, width: int, height: int, paper: tuple[int, int, int]):
        self.image = Image.new("RGB", (width, height), paper)
        self.draw = ImageDraw.Draw(self.image)
        self.paper = paper

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def text(self, x: float, baseline: float, text: str, family: str, size: int, fill=(20, 20, 24)) -> Box:
        f = font(family, size)
        self.draw.text((x, baseline), text, font=f, fill=fill, anchor="ls")
        return list(self.draw.textbbox((x, baseline), text, font=f, anchor="ls"))

    def hand(self, x: float, baseline: float, text: str, family: str, size: int, ink, rng: random.Random,
             slant: float = 0.0, cell: float | None = None) -> Box:
        """Hand-filled text: each character is drawn on its own, slanted and turned a little, shifted off the
        line and spaced unevenly, like a person filling a form. `cell`: one character per comb cell of that width
        (the box-per-letter fields of printed forms)."""
        f = font(family, size)
        boxes, pen = [], x
        for char in text:
            advance = f.getlength(char)
            if char.strip():
                glyph = _hand_glyph(char, f, slant + rng.uniform(-0.08, 0.08), rng.uniform(-6, 6))
                left = pen + (cell - advance) / 2 if cell else pen
                dx, dy = round(left + rng.uniform(-0.7, 0.7)), round(baseline + rng.uniform(-1.2, 1.2))
                ox, oy = glyph.info["origin"]
                self.image.paste(Image.new("RGB", glyph.size, ink), (dx - ox, dy - oy), glyph)
                inner = glyph.getbbox()
                if inner:
                    boxes.append([dx - ox + inner[0], dy - oy + inner[1], dx - ox + inner[2], dy - oy + inner[3]])
            pen += cell if cell else advance * rng.uniform(0.98, 1.12)
        return union(boxes)

    def rect(self, box, outline=(70, 70, 80), width: int = 1, fill=None):
        self.draw.rectangle(box, outline=outline, width=width, fill=fill)

    def line(self, x0, y0, x1, y1, fill=(90, 90, 100), width: int = 1):
        self.draw.line((x0, y0, x1, y1), fill=fill, width=width)

    def dotted(self, x0, y, x1, fill=(120, 120, 130), step: int = 3):
        for x in range(int(x0), int(x1), step):
            self.draw.point((x, y), fill=fill)


def _hand_glyph(char: str, f: ImageFont.FreeTypeFont, shear: float, angle: float) -> Image.Image:
    """One character as an alpha mask, sheared (slant) and rotated about its baseline origin; the origin's
    position inside the mask is kept in .info["origin"]."""
    size = int(f.size * 2.2)
    mask = Image.new("L", (size, size), 0)
    origin = (size // 4, int(size * 0.7))
    ImageDraw.Draw(mask).text(origin, char, font=f, fill=255, anchor="ls")
    # shear around the baseline: x' = x + shear * (origin_y - y)
    mask = mask.transform(mask.size, Image.AFFINE, (1, shear, -shear * origin[1], 0, 1, 0), resample=Image.BILINEAR)
    mask = mask.rotate(angle, resample=Image.BILINEAR, center=origin)
    mask.info["origin"] = origin
    return mask


def signature(canvas: Canvas, box, ink, rng: random.Random) -> Box:
    """A scribbled signature inside `box`: a wavy stroke made of a few sines, with a loop or two."""
    x0, y0, x1, y1 = box
    n = 60
    width, height = (x1 - x0) * rng.uniform(0.6, 0.9), (y1 - y0) * 0.8
    waves = [(rng.uniform(0.15, 0.45), rng.uniform(3, 12), rng.uniform(0, 6.3)) for _ in range(3)]
    cy = (y0 + y1) / 2
    points = []
    for i in range(n):
        t = i / (n - 1)
        y = cy + height / 2 * sum(a * math.sin(f * t * 2 * math.pi / 4 + p) for a, f, p in waves)
        x = x0 + 4 + t * width + 3 * math.sin(t * rng.uniform(10, 25))
        points.append((x, min(max(y, y0 + 1), y1 - 2)))
    canvas.draw.line(points, fill=ink, width=rng.choice((1, 2)), joint="curve")
    if rng.random() < 0.6:   # an underline flourish
        yy = cy + height * 0.35
        canvas.draw.line((x0 + 2, yy, x0 + width * rng.uniform(0.7, 1.0), yy - rng.uniform(-3, 3)), fill=ink, width=1)
    return union([[int(min(p[0] for p in points)), int(min(p[1] for p in points)),
                   int(max(p[0] for p in points)) + 2, int(max(p[1] for p in points)) + 2]])


def stamp(canvas: Canvas, center, radius: int, words: tuple[str, ...], rng: random.Random) -> None:
    """A rubber stamp: a ring (or a frame) with words, in red, blue or violet ink, half-transparent and tilted."""
    size = radius * 2 + 8
    layer = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(layer)
    if rng.random() < 0.5:
        d.ellipse((3, 3, size - 4, size - 4), outline=255, width=2)
        d.ellipse((8, 8, size - 9, size - 9), outline=255, width=1)
    else:
        d.rectangle((3, size // 4, size - 4, size - size // 4), outline=255, width=2)
    lines = [w for w in words if w]
    for i, word in enumerate(lines):
        f = font("sans-bold", fit_size(word, "sans-bold", max(8, radius // 3), size * 0.7))
        y = size / 2 + (i - (len(lines) - 1) / 2) * f.size * 1.15
        d.text((size / 2, y), word, font=f, fill=255, anchor="mm")
    layer = layer.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR)
    opacity = rng.uniform(0.55, 0.8)
    alpha = layer.point(lambda v: int(v * opacity))
    x, y = int(center[0] - size / 2), int(center[1] - size / 2)
    canvas.image.paste(Image.new("RGB", layer.size, rng.choice(STAMP_COLORS)), (x, y), alpha)


# -----------------------------------------------------------------------------
# the scanner

def scan(image: Image.Image, boxes: dict, rng: random.Random, strength: float = 1.0) -> tuple[bytes, dict]:
    """Make a clean page look scanned: uneven lighting, a small rotation, blur, sensor noise and JPEG compression.
    Returns the JPEG bytes and `boxes` ({name: box}) moved with the rotation. strength 0 gives a clean page
    (still JPEG-encoded, at high quality)."""
    np_rng = np.random.default_rng(rng.getrandbits(64))
    w, h = image.size
    page = np.asarray(image, dtype=np.float32)
    # uneven lighting: a linear falloff from a random side plus a soft vignette
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = ((xx / w - 0.5) * math.cos(direction) + (yy / h - 0.5) * math.sin(direction))
    vignette = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2)
    light = 1.0 - strength * (rng.uniform(0, 0.22) * (ramp + 0.5) + rng.uniform(0, 0.25) * vignette)
    page = page * light[..., None]
    page = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))

    angle = strength * rng.uniform(-1.5, 1.5)
    if angle:
        page = page.rotate(angle, resample=Image.BILINEAR, fillcolor=(200, 200, 196))
        boxes = {name: _rotate_box(box, angle, w, h) for name, box in boxes.items()}
    radius = strength * rng.uniform(0.0, 0.7)
    if radius > 0.15:
        page = page.filter(ImageFilter.GaussianBlur(radius))
    noise = strength * rng.uniform(0, 6)
    if noise > 0.5:
        pixels = np.asarray(page, dtype=np.float32) + np_rng.normal(0, noise, (h, w, 1)).astype(np.float32)
        page = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    page.save(buffer, format="JPEG", quality=int(95 - strength * rng.uniform(0, 35)))
    return buffer.getvalue(), boxes


def _rotate_box(box, angle: float, w: int, h: int) -> Box:
    """Where a box lands after Image.rotate(angle) about the page centre: the bounding box of its corners."""
    a = math.radians(angle)
    cx, cy = w / 2, h / 2
    xs, ys = [], []
    for x, y in ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])):
        # Pillow turns the picture counter-clockwise for a positive angle (y grows downwards)
        dx, dy = x - cx, y - cy
        xs.append(cx + dx * math.cos(a) + dy * math.sin(a))
        ys.append(cy - dx * math.sin(a) + dy * math.cos(a))
    return [max(0, math.floor(min(xs))), max(0, math.floor(min(ys))), min(w, math.ceil(max(xs))),
            min(h, math.ceil(max(ys)))]
