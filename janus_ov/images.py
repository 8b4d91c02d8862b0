"""Images in and out: safe loading, the reference preprocessing, and pixels back to PIL.

Serving path: numpy + PIL only. `preprocess` reproduces the checkpoint's own processor bit for bit
(resize longest side with PIL bicubic, pad to a centred square, rescale, normalise): transformers'
JanusImageProcessor(Pil) for transformers-format repos, DeepSeek's VLMImageProcessor (which resizes
PIL images through torchvision, i.e. with PIL, and truncates the shorter side) for the original
ones. `to_pil` reproduces transformers' `postprocess`.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InvalidInputError

# Decompression-bomb guard: 64 megapixels is far above anything useful (every image is shrunk to
# 384 px anyway) and keeps the worst decoded RGBA/I;32 image around 256 MB.
MAX_PIXELS = 64_000_000
# Above this size an image is decoded by one thread for the whole process, one image at a time: a few
# simultaneous 64 MP uploads (a few hundred kB each as PNG) would otherwise take gigabytes. One thread,
# not merely a lock: the C allocator keeps a freed image's memory in the arena of the thread that
# decoded it, so images decoded in turn by different threads would still each keep their own.
LARGE_PIXELS = 16_000_000
_LARGE_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="janus-ov-large-image")

_ORIENTATION = 0x0112  # EXIF tag
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
# warnings.catch_warnings swaps a process-wide filter list; serialise our use of it.
_WARNINGS_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------- loading

def load_image(src, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Any image source -> an RGB PIL image, upright (EXIF orientation applied), first frame only.

    src: a file path (str / Path), encoded file bytes, a binary file object, a PIL image or an
    HxW / HxWxC numpy array.
    Files and bytes give their first frame; a PIL image gives its current frame. An RGB, upright
    PIL image is returned as is (not copied); nothing here modifies its input.
    Raises InvalidInputError (naming the file) for missing, unreadable, corrupt, truncated or
    oversized images; the size is checked from the header, before any pixel is decoded.
    """
    if isinstance(src, Image.Image):
        _check_size(src.size, "the image", max_pixels)
        return _finish(src, "the image")
    if isinstance(src, np.ndarray):
        return _finish(_from_array(src, max_pixels), "the image array")
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise InvalidInputError("the image data is empty (0 bytes)")
        return _decode(io.BytesIO(bytes(src)), "the image data", max_pixels)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if str(src).strip() == "":
            raise InvalidInputError("the image path is empty")
        if not path.exists():
            raise InvalidInputError(f"image file not found: {path}")
        if not path.is_file():
            raise InvalidInputError(f"image path is not a file: {path}")
        return _decode(path, f"image file {path}", max_pixels)
    if hasattr(src, "read"):  # an open binary file or stream
        return _decode(src, f"image {getattr(src, 'name', 'stream')}", max_pixels)
    raise InvalidInputError(
        f"unsupported image type {type(src).__name__}: pass a file path, bytes, a PIL image or a numpy array")


def _decode(fp, name: str, max_pixels: int) -> Image.Image:
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # PIL only warns between 89 and 179 MP; our own limit below is the real gate.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise InvalidInputError(f"{name} is too large to decode safely (over the {max_pixels / 1e6:.0f} MP limit, "
                                f"decompression-bomb protection; PIL says: {e}); downscale it first") from e
    except Image.UnidentifiedImageError as e:
        raise InvalidInputError(f"{name} is not a readable image (unknown or corrupt format)") from e
    except Exception as e:  # noqa: BLE001 - OSError, and ValueError/SyntaxError from damaged headers
        raise InvalidInputError(f"could not open {name}: {e}") from e
    with im:
        _check_size(im.size, name, max_pixels)  # header only: nothing decoded yet
        try:
            im.seek(0)  # animations (GIF/APNG/WebP/TIFF pages): the first frame
            im.load()
        except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, EOFError...
            raise InvalidInputError(f"{name} is corrupt or truncated and cannot be decoded: {e}") from e
        return _finish(im, name)


def _check_size(size, name: str, max_pixels: int):
    w, h = size
    if w <= 0 or h <= 0:
        raise InvalidInputError(f"{name} has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise InvalidInputError(
            f"{name} is {w}x{h} = {w * h / 1e6:.0f} megapixels, above the {max_pixels / 1e6:.0f} MP limit "
            "(decompression-bomb protection); downscale it first")


def _finish(im: Image.Image, name: str) -> Image.Image:
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - a lazily opened PIL image passed in by the caller
        raise InvalidInputError(f"{name} cannot be decoded: {e}") from e
    try:
        if im.getexif().get(_ORIENTATION, 1) != 1:  # skip exif_transpose's full copy when upright
            im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not reject a decodable image
        pass
    return _to_rgb(im, name)


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparency is composited over WHITE, as transformers' `convert_to_rgb` does (and as viewers
    show it). DeepSeek's original code calls `.convert("RGB")`, which drops alpha and exposes
    whatever colour hides under alpha=0 (often black): we deliberately do not follow it there.
    High-bit-depth greyscale is scaled to 8 bits, where PIL would clip at 255.
    """
    mode = im.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB", "1") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_grey_to_u8(np.asarray(im), mode), "L").convert("RGB")
    try:
        return im.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX...
    except (ValueError, OSError) as e:
        raise InvalidInputError(f"{name} has an unsupported colour mode {mode!r}") from e


def _grey_to_u8(a: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float greyscale -> uint8 (WHY: PIL's convert clips these at 255)."""
    if mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        amin, amax = float(a.min()), float(a.max())
        if mode == "F" and amin >= 0 and amax <= 1:
            lo, hi = 0.0, 1.0
        elif amin >= 0 and amax <= 255:
            lo, hi = 0.0, 255.0
        elif amin >= 0 and amax <= 65535:
            lo, hi = 0.0, 65535.0  # 16-bit data in a 32-bit container (TIFF, older PIL PNG)
        else:
            lo, hi = amin, max(amax, amin + 1e-12)  # arbitrary range: stretch it
    out = (a.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _from_array(a: np.ndarray, max_pixels: int) -> Image.Image:
    """HxW or HxWxC (C = 1, 3, 4; or CxHxW when unambiguous) array -> PIL image (L, RGB or RGBA)."""
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] > 4:  # channel-first (no image is <5 px wide)
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise InvalidInputError(
            f"image array has shape {a.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    _check_size((a.shape[1], a.shape[0]), "the image array", max_pixels)
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        u8 = _grey_to_u8(a, "I;16")
    elif np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise InvalidInputError("image array contains NaN or infinite values")
        amin, amax = float(a.min()), float(a.max())
        if np.issubdtype(a.dtype, np.floating) and amin >= 0 and amax <= 1:
            u8 = np.rint(a * 255.0).astype(np.uint8)
        elif amin >= 0 and amax <= 255:
            u8 = np.rint(a).astype(np.uint8)
        else:
            raise InvalidInputError(
                f"image array values span [{amin:g}, {amax:g}]; expected 0..1 (float) or 0..255")
    else:
        raise InvalidInputError(f"image array has unsupported dtype {a.dtype}")
    mode = "L" if u8.ndim == 2 else ("RGB" if u8.shape[-1] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(u8), mode)


# ---------------------------------------------------------------------------------- preprocessing

def resized_size(width: int, height: int, image_size: int, min_size: int,
                 rule: str = "transformers") -> tuple[int, int]:
    """(width, height) after scaling the longest side to image_size, with each reference's own float
    expression: transformers' JanusImageProcessor rounds `side * (size / longest)`; DeepSeek's
    VLMImageProcessor truncates `side / longest * size` (a 500x333 image: 256 vs 255 rows)."""
    longest = max(height, width)
    if rule == "deepseek":
        return (max(int(width / longest * image_size), min_size), max(int(height / longest * image_size), min_size))
    if rule != "transformers":
        raise InvalidInputError(f"unknown image resize rule {rule!r}; expected 'transformers' or 'deepseek'")
    delta = image_size / longest
    return max(round(width * delta), min_size), max(round(height * delta), min_size)


def _channel_luts(info) -> np.ndarray:
    """[3, 256] f32: every uint8 value rescaled then normalised with the reference's exact float ops.

    The reference computes (u8.astype(f64) * rescale).astype(f32), then (x - mean32) / std32 in f32;
    a table of those 256 results per channel gives identical numbers with one gather per pixel.
    """
    scaled = (np.arange(256, dtype=np.float64) * info.rescale_factor).astype(np.float32)
    if not info.do_normalize:
        return np.stack([scaled] * 3)
    mean = np.asarray(info.image_mean, dtype=np.float32)
    std = np.asarray(info.image_std, dtype=np.float32)
    return np.stack([(scaled - mean[c]) / std[c] for c in range(3)]).astype(np.float32)


def preprocess(images, info) -> np.ndarray:
    """RGB PIL images -> pixel_values f32 [N, 3, S, S] (S = info.image_size), exactly as the checkpoint's
    reference processor: longest side resized to S (PIL bicubic, antialiased), shorter side by
    `resized_size`'s rule (info.image_resize), centred on a square of info.background_color,
    rescaled and normalised."""
    images = list(images)
    size = int(info.image_size)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)  # the only big allocation
    luts = _channel_luts(info)
    background = [int(v) for v in info.background_color]
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image) or im.mode != "RGB":
            raise InvalidInputError("preprocess expects RGB PIL images; pass them through load_image first")
        w, h = resized_size(im.width, im.height, size, int(info.min_size), info.image_resize)
        if (w, h) != im.size:
            im = im.resize((w, h), resample=Image.BICUBIC)
        if max(w, h) != size:  # cannot happen for sane sizes; guards the fixed-size output buffer
            raise InvalidInputError(f"image resized to {w}x{h}, expected the longest side to be {size}")
        pixels = np.asarray(im)  # H, W, 3 uint8
        top, left = (size - h) // 2, (size - w) // 2  # reference: start = (max_dim - short) // 2
        for c in range(3):
            plane = out[i, c]
            if (w, h) != (size, size):
                plane.fill(luts[c, background[c]])
            np.take(luts[c], pixels[:, :, c], out=plane[top:top + h, left:left + w], mode="clip")
    return out


def to_pil(images, info=None) -> list[Image.Image]:
    """Decoded pixels f32 [N, 3, H, W] (about -1..1) -> RGB PIL images, as the reference postprocess:
    un-normalise with mean/std (0.5 -> (x + 1) / 2), scale by 255, clip, truncate to uint8."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError(f"to_pil expects [N, 3, H, W] pixels, got shape {images.shape}")
    mean = list(info.image_mean) if info is not None else [0.5, 0.5, 0.5]
    std = list(info.image_std) if info is not None else [0.5, 0.5, 0.5]
    scale = 1.0 / (info.rescale_factor if info is not None else 1 / 255)
    do_normalize = info.do_normalize if info is not None else True
    # Reference un-normalise = normalise with mean' = -m/s, std' = 1/s, in float32.
    rev_mean = np.array([-m / s for m, s in zip(mean, std)], dtype=np.float32)[:, None, None]
    rev_std = np.array([1 / s for s in std], dtype=np.float32)[:, None, None]
    result = []
    for x in images:
        if do_normalize:
            x = (x - rev_mean) / rev_std
        x = (x.astype(np.float64) * scale).astype(np.float32)
        x = np.nan_to_num(x, nan=0.0)  # NaN has no uint8 value; the reference's cast is undefined
        u8 = np.clip(x, 0, 255).astype(np.uint8)
        result.append(Image.fromarray(np.ascontiguousarray(u8.transpose(1, 2, 0)), "RGB"))
    return result


def upscale(images, size: int) -> list[Image.Image]:
    """The generated 384 px images at `size` px (LANCZOS); as they are when already that size."""
    return [im if im.width == size else im.resize((size, size), Image.Resampling.LANCZOS) for im in images]


class PixelCache:
    """Preprocessed pixels of recently seen image files and bytes, so the images of a conversation's
    history are decoded and resized once, not again at every turn. Files are known by path, size
    and modification time (an edited file is decoded anew), bytes by a hash of their content; PIL
    images and arrays (already decoded) are preprocessed each time. A few dozen entries of
    1.7 MB each: a bounded LRU, shared by all requests, safe because a key names its pixels."""

    def __init__(self, info, capacity: int = 32):
        from collections import OrderedDict

        self.info, self.capacity = info, capacity
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, sources) -> np.ndarray:
        """pixel_values f32 [N,3,S,S] of the sources, in order."""
        return np.stack([self.get(src) for src in sources])

    def get(self, src) -> np.ndarray:
        key = _source_key(src)
        with self._lock:
            if key is not None and key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        decode = lambda: preprocess([load_image(src)], self.info)[0]  # noqa: E731
        # Outside the cache's lock: decoding is the slow part.
        pixels = _LARGE_DECODER.submit(decode).result() if _header_pixels(src) > LARGE_PIXELS else decode()
        if key is not None:
            pixels.setflags(write=False)  # shared between requests
            with self._lock:
                self._entries[key] = pixels
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return pixels


def _header_pixels(src) -> int:
    """Width x height from a file's or bytes' header (nothing decoded); 0 if unknown or already decoded."""
    if not isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        return 0
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src if isinstance(src, (str, os.PathLike)) else io.BytesIO(bytes(src))) as im:
                return im.size[0] * im.size[1]
    except Exception:  # noqa: BLE001 - load_image reports what is wrong with it
        return 0


def _source_key(src):
    import hashlib

    if isinstance(src, (str, os.PathLike)):
        try:
            st = os.stat(src)
        except OSError:
            return None  # load_image reports it
        return ("file", os.path.realpath(src), st.st_size, st.st_mtime_ns)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return ("bytes", hashlib.blake2b(bytes(src), digest_size=16).digest())
    return None
