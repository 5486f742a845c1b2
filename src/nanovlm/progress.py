"""Progress bars that suit where they are written: a live tqdm bar on a terminal, plain periodic lines in a log.

A tqdm bar redraws itself with carriage returns; written into a file (a job log, `2> train.log`, CI output) that
becomes one endless line of `\\r`-joined bars. Off a terminal, progress() prints a complete line every
`log_interval` seconds, and a last one when the work ends:

    scenes (short, 64px): 4100/48000 (9%) [00:30<05:21, 136.51img/s]
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
# no bar graphic in a log: numbers only, the same fields a terminal bar shows
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
PLAIN_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}]{postfix}"


def progress(iterable=None, total: int | None = None, desc: str | None = None, unit: str = "it",
             enabled: bool = True, initial: int = 0, file=None, log_interval: float = LOG_INTERVAL_S) -> tqdm:
    """A tqdm bar over `iterable` (or updated by hand when it is None) that knows whether it writes to a terminal.

    enabled=False shows nothing (the bar still counts). file defaults to stderr."""
    file = file if file is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    common = dict(total=total, desc=desc, unit=unit, initial=initial)
    if not enabled:
        return tqdm(iterable, disable=True, **common)
    if _is_terminal(file):
        return tqdm(iterable, file=file, dynamic_ncols=True, **common)
    return tqdm(iterable, file=PlainLines(file), mininterval=log_interval, maxinterval=log_interval, ascii=True,
                bar_format=PLAIN_FORMAT if total else PLAIN_FORMAT_NO_TOTAL, **common)


def _is_terminal(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):   # no isatty, or a closed file
        return False


class PlainLines:
    """A text stream for tqdm that turns each redraw ("\\r" + bar + padding) into one line of its own and drops
    the cursor moves and blank writes tqdm uses to erase a bar."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str):
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):   # encoding, fileno, ... of the stream underneath
        return getattr(self.stream, name)
