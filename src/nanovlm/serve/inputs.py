"""Request inputs the server checks before any model work: images (format, pixel count before decoding, base64 /
data URLs), prompt lengths and generation parameters against the server's caps. Every problem is an APIError
that becomes a 4xx JSON answer saying what was wrong."""
from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, ImageOps

from ..config import ConfigError
from ..images import to_rgb
from ..sampling import GenerationConfig

MIN_TEMPERATURE = 0.01
ALLOWED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}


class APIError(Exception):
    """An answer other than 200, with the message the client sees."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def decode_base64_image(text: str, param: str = "image") -> bytes:
    """Raw base64 or a data URL (data:image/png;base64,...) -> bytes."""
    if not isinstance(text, str) or not text.strip():
        raise bad_request(f"{param} is empty: send the image as base64 or a data: URL", param)
    text = text.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise bad_request(f"{param}: a data URL must look like data:image/png;base64,<data>", param)
    elif text.startswith(("http://", "https://", "file:")):
        raise bad_request(f"{param}: this server does not fetch URLs; send the image itself as a base64 data: URL",
                          param)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param} is not valid base64", param) from None


def open_image_bytes(data: bytes, max_pixels: int, min_size: int | None = None, param: str = "image") -> Image.Image:
    """Bytes -> RGB PIL image. The format and the pixel count come from the header and are checked before
    anything is decoded, so a decompression bomb costs microseconds."""
    if not data:
        raise bad_request(f"{param} is empty (0 bytes)", param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))          # reads the header only
            if image.format not in ALLOWED_FORMATS:
                raise APIError(415, f"{param}: {image.format} images are not accepted; send "
                                    f"{', '.join(ALLOWED_FORMATS.values())}", param)
            width, height = image.size
            if width < 1 or height < 1:
                raise bad_request(f"{param}: the header says {width} x {height} pixels; the file is broken", param)
            if width * height > max_pixels:
                raise APIError(413, f"{param}: {width} x {height} = {width * height:,} pixels is more than this "
                                    f"server's cap of {max_pixels:,} pixels (checked before decoding); send a "
                                    f"smaller image", param)
            if min_size:
                image.draft("RGB", (min_size, min_size))   # JPEG: decode at a smaller scale when it is big
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except APIError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise APIError(413, f"{param}: the image has too many pixels (checked before decoding)", param) from None
    except Image.UnidentifiedImageError:
        raise APIError(415, f"{param}: not an image this server can read; send "
                            f"{', '.join(ALLOWED_FORMATS.values())}", param) from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
        raise bad_request(f"{param}: the image is damaged or truncated ({type(e).__name__}: {e})", param) from None


def check_text(value, name: str, max_chars: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string", name)
    if len(value) > max_chars:
        raise bad_request(f"{name} is {len(value):,} characters; this server takes at most {max_chars:,}", name)
    if "\x00" in value:
        raise bad_request(f"{name} contains a NUL character", name)
    return value


def generation_config(params, max_new_tokens_cap: int, default_max_new_tokens: int) -> GenerationConfig:
    """Per-request parameters -> a range-checked GenerationConfig within the server's caps."""
    max_tokens = params.max_tokens if params.max_tokens is not None else min(default_max_new_tokens,
                                                                               max_new_tokens_cap)
    if max_tokens > max_new_tokens_cap:
        raise bad_request(f"max_tokens {max_tokens} is above this server's cap of {max_new_tokens_cap}",
                          "max_tokens")
    if 0 < (params.temperature or 0) < MIN_TEMPERATURE:
        # logits / 1e-200 overflow to inf and the sampler's probabilities become NaN
        raise bad_request(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {params.temperature}",
                          "temperature")
    stop = params.stop
    if isinstance(stop, str):
        stop = [stop]
    stop = [s for s in (stop or []) if s]
    if len(stop) > 8 or any(len(s) > 64 for s in stop):
        raise bad_request("stop: at most 8 strings of at most 64 characters each", "stop")
    try:
        return GenerationConfig(max_new_tokens=max_tokens, temperature=params.temperature or 0.0,
                                top_k=params.top_k, top_p=params.top_p, seed=params.seed, stop=tuple(stop))
    except ConfigError as e:
        raise bad_request(str(e)) from None
