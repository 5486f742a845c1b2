"""Page layouts: where the labels and values of a document go. Each layout draws the body of the page on a Canvas
and returns the pixel box of every value it wrote; the header (issuer, title) and the footer (signature, stamp)
are shared by all layouts.

- label-left:  "Name:  Priya Sharma", one row per field (two columns when there are many)
- label-above: a grid of cells, a small label over each value
- boxes:       a grid of framed boxes; short codes (PAN, ISIN) written one character per comb cell
- table:       a ruled table of label | value rows
A model trained on some layouts can be tested on another (`--layouts`) to measure generalisation.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .kinds import Document, Entry
from .render import (HAND_FAMILIES, INKS, PRINTED_FAMILIES, Box, Canvas, bold_of, fit_size, font, signature,
                     stamp)

LAYOUTS = ("label-left", "label-above", "boxes", "table")
MARGIN = 12
FOOTER = 46          # pixels kept at the bottom for the signature and the stamp
LABEL_GREY = (70, 70, 82)


@dataclass
class Look:
    """The typography of one document, drawn once per page."""
    label_family: str
    label_size: int
    value_family: str
    value_size: int
    hand: bool
    ink: tuple
    slant: float
    rule: tuple       # colour of lines and frames

    @classmethod
    def draw(cls, doc: Document, rng: random.Random, height: int) -> "Look":
        scale = height / 256
        hand = doc.hand_filled
        return cls(label_family=rng.choice(PRINTED_FAMILIES), label_size=round(rng.uniform(10, 12) * scale),
                   value_family=rng.choice(HAND_FAMILIES if hand else PRINTED_FAMILIES),
                   value_size=round(rng.uniform(12, 14) * scale), hand=hand,
                   ink=INKS[rng.choice(tuple(INKS))] if hand else (18, 18, 22),
                   slant=rng.uniform(-0.1, 0.3) if hand else 0.0,
                   rule=rng.choice(((80, 80, 92), (60, 90, 140), (120, 120, 120))))


def write_value(canvas: Canvas, look: Look, x: float, baseline: float, text: str, max_width: float,
                rng: random.Random, size: int | None = None) -> Box:
    """Write a field's value, shrinking the font until it fits max_width (hand-written text runs ~10% wider)."""
    size = fit_size(text, look.value_family, size or look.value_size, max_width / (1.12 if look.hand else 1.0))
    if look.hand:
        return canvas.hand(x, baseline, text, look.value_family, size, look.ink, rng, slant=look.slant)
    return canvas.text(x, baseline, text, look.value_family, size, fill=look.ink)


def write_label(canvas: Canvas, look: Look, x: float, baseline: float, text: str, max_width: float,
                size: int | None = None) -> Box:
    size = fit_size(text, look.label_family, size or look.label_size, max_width)
    return canvas.text(x, baseline, text, look.label_family, size, fill=LABEL_GREY)


def _grid(region, n: int, columns: int):
    """Split region into cells (row-major) for n items: [(x0, y0, x1, y1), ...]."""
    x0, y0, x1, y1 = region
    rows = -(-n // columns)
    w, h = (x1 - x0) / columns, (y1 - y0) / rows
    return [(x0 + (i % columns) * w, y0 + (i // columns) * h, x0 + (i % columns + 1) * w, y0 + (i // columns + 1) * h)
            for i in range(n)]


def _columns_for(n: int, region, min_row_height: float, max_columns: int = 3) -> int:
    """The fewest columns (at least 2 for cell layouts) whose rows are still min_row_height tall."""
    rows_that_fit = max(1, int((region[3] - region[1]) // min_row_height))
    return min(max_columns, max(-(-n // rows_that_fit), 1))


# -----------------------------------------------------------------------------
# the four layouts: (canvas, entries, region, look, rng) -> {key: value box}

def label_left(canvas, entries: list[Entry], region, look: Look, rng) -> dict[str, Box]:
    columns = _columns_for(len(entries), region, 18 * look.value_size / 13, max_columns=2)
    cells = _grid(region, len(entries), columns)
    # one label column per page column, as wide as its longest label (at most 45% of the column)
    widest = max(font(look.label_family, look.label_size).getlength(e.label + ":") for e in entries)
    boxes = {}
    for entry, (x0, y0, x1, y1) in zip(entries, cells):
        label_width = min(widest + 8, (x1 - x0) * 0.45)
        baseline = y0 + (y1 - y0) * 0.72
        write_label(canvas, look, x0, baseline, entry.label + ":", label_width - 4)
        if look.hand:
            canvas.dotted(x0 + label_width, baseline + 2, x1 - 6)
        boxes[entry.key] = write_value(canvas, look, x0 + label_width, baseline, entry.value, x1 - x0 - label_width - 8, rng)
    return boxes


def label_above(canvas, entries: list[Entry], region, look: Look, rng) -> dict[str, Box]:
    columns = max(2, _columns_for(len(entries), region, 2.1 * look.value_size))
    boxes = {}
    for entry, (x0, y0, x1, y1) in zip(entries, _grid(region, len(entries), columns)):
        h = y1 - y0
        write_label(canvas, look, x0, y0 + h * 0.38, entry.label, x1 - x0 - 6, size=max(8, look.label_size - 1))
        baseline = y0 + h * 0.86
        if look.hand:
            canvas.line(x0, baseline + 2, x1 - 8, baseline + 2, fill=look.rule)
        boxes[entry.key] = write_value(canvas, look, x0 + 2, baseline, entry.value, x1 - x0 - 10, rng)
    return boxes


def boxed(canvas, entries: list[Entry], region, look: Look, rng) -> dict[str, Box]:
    columns = max(2, _columns_for(len(entries), region, 2.3 * look.value_size))
    boxes = {}
    for entry, (x0, y0, x1, y1) in zip(entries, _grid(region, len(entries), columns)):
        frame = (round(x0) + 1, round(y0) + 1, round(x1) - 3, round(y1) - 2)
        canvas.rect(frame, outline=look.rule)
        h = frame[3] - frame[1]
        write_label(canvas, look, frame[0] + 3, frame[1] + h * 0.36, entry.label, frame[2] - frame[0] - 6,
                    size=max(8, look.label_size - 2))
        baseline = frame[1] + h * 0.86
        width = frame[2] - frame[0] - 8
        cell = look.value_size * 0.95
        if entry.comb and look.hand and cell * len(entry.value) <= width:
            # one character per comb cell, the cells ruled under the text
            top = baseline - look.value_size * 0.95
            for i in range(len(entry.value) + 1):
                x = frame[0] + 4 + i * cell
                canvas.line(x, top, x, baseline + 3, fill=look.rule)
            canvas.line(frame[0] + 4, baseline + 3, frame[0] + 4 + cell * len(entry.value), baseline + 3, fill=look.rule)
            size = fit_size("W", look.value_family, look.value_size, cell * 0.9)
            boxes[entry.key] = canvas.hand(frame[0] + 4, baseline, entry.value, look.value_family, size, look.ink,
                                           rng, slant=look.slant, cell=cell)
        else:
            boxes[entry.key] = write_value(canvas, look, frame[0] + 4, baseline, entry.value, width, rng)
    return boxes


def table(canvas, entries: list[Entry], region, look: Look, rng) -> dict[str, Box]:
    pairs = _columns_for(len(entries), region, 18 * look.value_size / 13, max_columns=2)
    x0, y0, x1, y1 = region
    per = -(-len(entries) // pairs)
    row_h = (y1 - y0) / per
    boxes = {}
    for p in range(pairs):
        left = x0 + p * (x1 - x0) / pairs
        right = x0 + (p + 1) * (x1 - x0) / pairs - (6 if pairs > 1 else 0)
        split = left + (right - left) * 0.4
        chunk = entries[p * per:(p + 1) * per]
        canvas.rect((round(left), round(y0), round(right), round(y0 + row_h * len(chunk))), outline=look.rule)
        canvas.rect((round(left) + 1, round(y0) + 1, round(split), round(y0 + row_h * len(chunk)) - 1),
                    fill=(234, 236, 240))
        canvas.line(split, y0, split, y0 + row_h * len(chunk), fill=look.rule)
        for i, entry in enumerate(chunk):
            top = y0 + i * row_h
            if i:
                canvas.line(left, top, right, top, fill=look.rule)
            baseline = top + row_h * 0.74
            write_label(canvas, look, left + 4, baseline, entry.label, split - left - 8)
            boxes[entry.key] = write_value(canvas, look, split + 4, baseline, entry.value, right - split - 10, rng)
    return boxes


DRAW = {"label-left": label_left, "label-above": label_above, "boxes": boxed, "table": table}


# -----------------------------------------------------------------------------
# the whole page

def header(canvas: Canvas, doc: Document, look: Look, rng) -> int:
    """Issuer and title; returns the y where the body starts."""
    scale = canvas.height / 256
    bold = bold_of(look.label_family if look.label_family in ("serif",) else "sans")
    issuer_size = round(10 * scale)
    canvas.text(MARGIN, MARGIN + issuer_size, doc.issuer, bold, issuer_size, fill=(40, 60, 120))
    title_size = fit_size(doc.title, bold, round(rng.uniform(14, 17) * scale), canvas.width * 0.6)
    title_w = font(bold, title_size).getlength(doc.title)
    x = (canvas.width - title_w) / 2 if rng.random() < 0.5 else canvas.width - MARGIN - title_w
    baseline = MARGIN + issuer_size + title_size + 2
    canvas.text(x, baseline, doc.title, bold, title_size)
    canvas.line(MARGIN, baseline + 5, canvas.width - MARGIN, baseline + 5, fill=look.rule)
    # the date format the form prescribes; the date-format check compares the written date with it
    note_size = max(8, look.label_size - 1)
    note = rng.choice(("Dates: {}", "Date format: {}", "Write dates as {}")).format(doc.date_format)
    canvas.text(MARGIN if x > canvas.width / 3 else canvas.width - MARGIN - font("sans", note_size).getlength(note),
                baseline + 7 + note_size, note, "sans", note_size, fill=LABEL_GREY)
    return baseline + 10 + note_size


def transactions(canvas: Canvas, doc: Document, region, look: Look) -> list[dict]:
    """A statement's transaction table (always ruled); returns each row's cells with their boxes."""
    x0, y0, x1, y1 = region
    columns, rows = doc.table["columns"], doc.table["rows"]
    widths = (0.24, 0.38, 0.19, 0.19)
    edges = [x0]
    for w in widths:
        edges.append(edges[-1] + w * (x1 - x0))
    row_h = (y1 - y0) / (len(rows) + 1)
    size = max(8, round(row_h * 0.62))
    canvas.rect((round(x0), round(y0), round(x1), round(y0 + row_h)), fill=(230, 233, 240), outline=look.rule)
    for name, left, right in zip(columns, edges, edges[1:]):
        canvas.text(left + 3, y0 + row_h * 0.75, name, bold_of("sans"), fit_size(name, "sans-bold", size, right - left - 6))
    out = []
    for i, row in enumerate(rows, start=1):
        top = y0 + i * row_h
        canvas.line(x0, top + row_h, x1, top + row_h, fill=look.rule)
        cells = []
        for value, left, right in zip(row, edges, edges[1:]):
            box = None
            if value:
                box = canvas.text(left + 3, top + row_h * 0.76, value, look.value_family if not look.hand else "sans",
                                  fit_size(value, "sans" if look.hand else look.value_family, size, right - left - 6))
            cells.append({"value": value, "box": box})
        out.append({"date": cells[0], "description": cells[1], "debit": cells[2], "credit": cells[3]})
    for x in edges:
        canvas.line(x, y0, x, y1, fill=look.rule)
    return out


def footer(canvas: Canvas, doc: Document, look: Look, rng) -> Box:
    """The signature line and label at the bottom right, the signature if signed, the stamp if any; returns the
    signature box (the space where a signature belongs)."""
    w, h = canvas.width, canvas.height
    sig = [round(w * 0.58), h - FOOTER + 4, w - MARGIN, h - 18]
    canvas.line(sig[0], sig[3], sig[2], sig[3], fill=look.rule)
    write_label(canvas, look, sig[0], h - 7, doc.signer_label, sig[2] - sig[0])
    if doc.signed:
        signature(canvas, sig, INKS[rng.choice(("blue", "black"))], rng)
    if doc.stamp_words:
        stamp(canvas, (rng.uniform(w * 0.25, w * 0.45), h - FOOTER / 2), round(FOOTER * 0.45), doc.stamp_words, rng)
    return sig


def draw_page(doc: Document, layout: str, width: int, height: int, rng: random.Random):
    """Draw a whole page. Returns (canvas, {field key: box}, transaction rows or None, signature box)."""
    paper = tuple(rng.randint(238, 255) - d for d in (0, 2, rng.randint(4, 12)))   # white to cream
    canvas = Canvas(width, height, paper)
    look = Look.draw(doc, rng, height)
    top = header(canvas, doc, look, rng)
    bottom = height - FOOTER - 4
    rows = None
    if doc.table:
        split = top + (bottom - top) * 0.46
        boxes = DRAW[layout](canvas, doc.entries, (MARGIN, top, width - MARGIN, split), look, rng)
        rows = transactions(canvas, doc, (MARGIN, split + 4, width - MARGIN, bottom), look)
    else:
        boxes = DRAW[layout](canvas, doc.entries, (MARGIN, top, width - MARGIN, bottom), look, rng)
    sig_box = footer(canvas, doc, look, rng)
    return canvas, boxes, rows, sig_box
