"""Opening images a user gives us: the one function every path goes through (datasets, `nanovlm generate`, the
server), so every image gets the same checks and the same conversion.

    image = open_image("photo.jpg", min_size=224)      # PIL RGB, at least 224 px on its shorter side

- What is not a readable image file (a folder, /dev/null, a FIFO, a symlink loop, an empty or unreadable file)
  gets its own message, and never blocks (a FIFO is refused before it is opened).
- The pixel count is checked from the header, before anything is decoded: a 20000 x 20000 PNG is refused in
  microseconds instead of taking gigabytes. Pillow's own decompression-bomb guard ends in the same error.
- Big images are made small while decoding (JPEG `draft` decodes at 1/2, 1/4 or 1/8 scale) or right after
  (a box `reduce`), so rotations and colour jitter never run on a 40-megapixel picture.
- 16-bit and 32-bit integer and float images keep their real range instead of being clipped to white;
  transparency is composited onto white; every other mode (CMYK, palette, ...) becomes RGB.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .config import ConfigError

DEFAULT_MAX_PIXELS = 40_000_000   # 40 megapixels: any camera photo, not a scanned poster (~160 MB as RGB)
_RGB_WHITE = (255, 255, 255)
# modes Image.reduce() handles and to_rgb() converts the same way after reducing
_REDUCIBLE_MODES = ("L", "LA", "La", "I", "F", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")


class ImageError(ValueError):
    """A file given as an image cannot be used. The message names the file and says why."""


def open_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               min_size: int | None = None) -> Image.Image:
    """Open `path` as an RGB PIL image.

    max_pixels: refuse images with more pixels than this (width x height from the header); None = no cap of ours
        (Pillow's own decompression-bomb limit still applies).
    min_size: the size the image will be resized to (the encoder's input side). Larger images are reduced while
        decoding so that their shorter side stays >= min_size; None keeps the full resolution.
    Raises ImageError with a one-line message naming the file.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ConfigError(f"max_pixels must be a whole number >= 1 (or None for no cap), got {max_pixels!r}")
    path = Path(path)
    _check_is_regular_file(path)
    try:
        # (catch_warnings is process-wide: another thread opening an image at the same moment may print Pillow's
        # warning instead of failing on it; our own pixel check below still refuses the image when the cap is
        # under Pillow's limit, as the default is)
        with warnings.catch_warnings():
            # Pillow's notes about odd but usable files ("Corrupt EXIF data") are not the user's business ...
            warnings.simplefilter("ignore", UserWarning)
            # ... but a warning about an image above its own pixel limit is our one clear error (as is its error)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:                 # reads the header only
                _check_pixel_count(path, image.size, max_pixels)
                if min_size:
                    # JPEG: decode at 1/2, 1/4 or 1/8 scale, the shorter side staying >= min_size
                    image.draft("RGB", (min_size, min_size))
                image.load()
                ImageOps.exif_transpose(image, in_place=True)   # phone photos store "rotate me" in EXIF
                if min_size:
                    image = _reduce(image, min_size)
                return to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's guard fires inside Image.open, before our own check can see the size
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(pixels.group(1)) if pixels else None
        if max_pixels is not None and max_pixels <= Image.MAX_IMAGE_PIXELS:
            raise ImageError(_too_many_pixels(path, pixels, max_pixels)) from None
        raise ImageError(f"{path}: {pixels / 1e6 if pixels else 'too many'} megapixels, more than Pillow's "
                         f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS / 1e6:.1f} megapixels "
                         f"(PIL.Image.MAX_IMAGE_PIXELS); downscale the image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied; make the file readable (chmod +r)") from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
        # (OSError for unknown or truncated files, SyntaxError for broken PNG chunks, ValueError, struct.error,
        # IndexError, EOFError ... depending on the plugin): all mean "this file is not a usable image".
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e)
        raise ImageError(f"{path}: cannot read the image ({reason}); use a valid PNG, JPEG, GIF, WebP or TIFF "
                         f"file") from None


def _check_is_regular_file(path: Path):
    """The reasons a path is not an image file, each with its own message (none is "not found" unless it is)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"{path}: broken symbolic link (it points to {os.readlink(path)}, which does not "
                             f"exist)") from None
        raise ImageError(f"{path}: image file not found; check the path") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied while looking up the file") from None
    except ValueError:   # os.stat refuses names with a NUL byte
        raise ImageError(f"{str(path)!r}: a file name cannot contain a NUL character") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError(f"{path}: symbolic link loop (the link points, directly or not, to itself)") from None
        if e.errno == errno.ENAMETOOLONG:
            raise ImageError(f"{path}: file name too long") from None
        if e.errno == errno.ENOTDIR:
            raise ImageError(f"{path}: a part of the path is a file, not a folder") from None
        raise ImageError(f"{path}: cannot look up the file ({e.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path}: is a folder, not an image file; name an image inside it")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "not a regular file")
        raise ImageError(f"{path}: is {kind}, not an image file")
    if info.st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes); it was probably cut off while copying or downloading")


def _check_pixel_count(path: Path, size: tuple[int, int], max_pixels: int | None):
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{path}: the header says the image is {width} x {height} pixels; the file is broken")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(_too_many_pixels(path, width * height, max_pixels, f"{width} x {height} = "))


def _too_many_pixels(path: Path, pixels: int | None, cap: int, size: str = "") -> str:
    count = f"{size}{pixels / 1e6:.1f} megapixels" if pixels else "too many pixels"
    return (f"{path}: {count}, more than the cap of {cap / 1e6:g} megapixels (checked before decoding); "
            f"downscale the image or raise the cap (max_pixels)")


def _reduce(image: Image.Image, min_size: int) -> Image.Image:
    """Shrink by an integer box filter so the shorter side stays >= min_size (keeps the aspect ratio; a box
    filter over whole pixel blocks is fast and does not alias). The final resize to the encoder's input happens
    later, after augmentation."""
    factor = min(image.size) // min_size
    if factor < 2:
        return image
    if image.mode not in _REDUCIBLE_MODES or "transparency" in image.info:
        image = to_rgb(image)   # palette, 1-bit and 16-bit images, colour-keyed transparency: convert first
    return image.reduce(factor)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB: high bit-depth greys keep their real range, transparency is composited onto white."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_depth_to_l(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, _RGB_WHITE + (255,))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey -> 8-bit grey. Pillow's own conversion clips every value above 255 to
    white, which turns an ordinary 16-bit PNG into a blank picture. The type's range is used when the values fit
    in it (16-bit: 0..65535, float: 0..1), so a dark image stays dark; anything else is stretched from its
    minimum to its maximum."""
    array = np.asarray(image).astype(np.float32)
    finite = array[np.isfinite(array)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode == "F" and 0.0 <= low and high <= 1.0:
        low, high = 0.0, 1.0
    elif image.mode != "F" and 0.0 <= low and high <= 255.0 and not image.mode.startswith("I;16"):
        low, high = 0.0, 255.0                # 32-bit ints that hold 8-bit values (some converters write these)
    elif image.mode != "F" and 0.0 <= low and high <= 65535.0:
        low, high = 0.0, 65535.0
    scale = 255.0 / (high - low) if high > low else 0.0
    array = np.nan_to_num(array, nan=low, posinf=high, neginf=low)
    grey = np.clip((array - low) * scale, 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey)   # uint8 (H, W) -> mode "L"
