"""images.py: safe loading of any image source and the reference (JanusImageProcessorPil) preprocessing."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers import JanusImageProcessorPil
from transformers.image_transforms import convert_to_rgb

from janus_ov import images
from janus_ov.errors import InvalidInputError
from janus_ov.model_info import ModelInfo

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _info(**kw) -> ModelInfo:
    base = dict(prompt_style="pro", system_prompt="", bos_id=0, eos_id=1, pad_id=2, image_id=3, boi_id=4,
                eoi_id=5, hidden_size=64, vocab_size=400, codebook_size=256)
    return ModelInfo(**{**base, **kw})


def _reference(info: ModelInfo) -> JanusImageProcessorPil:
    return JanusImageProcessorPil(size={"height": info.image_size, "width": info.image_size},
                                  image_mean=info.image_mean, image_std=info.image_std, min_size=info.min_size,
                                  do_normalize=info.do_normalize, rescale_factor=info.rescale_factor)


def _noise(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    a = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode)


# ------------------------------------------------------------------------------------ preprocess

SIZES = [(384, 384), (640, 480), (480, 640), (1000, 7), (7, 1000), (100, 100), (33, 77), (385, 384),
         (2000, 1999), (1, 1), (383, 1)]


@pytest.mark.parametrize("w,h", SIZES)
def test_preprocess_identical_to_reference(w, h):
    info = _info()
    im = _noise(w, h, seed=w * h)
    expected = _reference(info)(im, return_tensors="np")["pixel_values"]
    got = images.preprocess([im], info)
    assert got.shape == (1, 3, 384, 384) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_preprocess_batch_and_checkpoint_params():
    """Several images in one buffer; CLIP mean/std (background = int(mean * 255), as the reference)."""
    info = _info(image_mean=CLIP_MEAN, image_std=CLIP_STD, background_color=[int(m * 255) for m in CLIP_MEAN])
    ref = _reference(info)
    assert list(ref.background_color) == info.background_color
    batch = [_noise(640, 480, seed=1), _noise(50, 300, seed=2), _noise(384, 384, seed=3)]
    expected = ref(batch, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(images.preprocess(batch, info), expected)


def test_preprocess_without_normalize():
    info = _info(do_normalize=False)
    im = _noise(300, 200, seed=4)
    expected = _reference(info)(im, return_tensors="np")["pixel_values"]
    got = images.preprocess([im], info)
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= 0 and got.max() <= 1


def test_preprocess_pads_with_background_centred():
    info = _info()
    got = images.preprocess([Image.new("RGB", (384, 100), (255, 255, 255))], info)[0]
    top = (384 - 100) // 2
    np.testing.assert_array_equal(got[:, top:top + 100], 1.0)  # white image, normalised
    np.testing.assert_allclose(got[:, :top], 127 / 255 * 2 - 1, rtol=0, atol=1e-6)  # background 127
    np.testing.assert_allclose(got[:, top + 100:], 127 / 255 * 2 - 1, rtol=0, atol=1e-6)


def test_preprocess_rejects_non_rgb():
    with pytest.raises(InvalidInputError, match="load_image"):
        images.preprocess([Image.new("L", (10, 10))], _info())


def test_resized_size_matches_reference_rule():
    assert images.resized_size(640, 480, 384, 14) == (384, 288)
    assert images.resized_size(1000, 7, 384, 14) == (384, 14)  # min_size floor
    assert images.resized_size(1000, 999, 384, 14) == (384, round(999 * 0.384))


# ----------------------------------------------------------------------------- colour modes

def _save(im, path, **kw):
    im.save(path, **kw)
    return path


def _alpha_image(mode):
    a = np.zeros((8, 12, 4), dtype=np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 10, 200, 30
    a[:, :4, 3], a[:, 4:8, 3], a[:, 8:, 3] = 0, 128, 255  # transparent, half, opaque
    rgba = Image.fromarray(a, "RGBA")
    return rgba if mode == "RGBA" else rgba.convert("LA")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_white_like_transformers(tmp_path, mode):
    path = _save(_alpha_image(mode), tmp_path / "a.png")
    got = images.load_image(path)
    assert got.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(got), convert_to_rgb(Image.open(path), return_numpy=True))
    assert (np.asarray(got)[:, :4] == 255).all()  # fully transparent -> white, not black
    # And the whole path equals the reference processor given the raw file with do_convert_rgb.
    info = _info()
    ref = _reference(info)(Image.open(path), do_convert_rgb=True, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(images.preprocess([got], info), ref)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (6, 4))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.paste(1, (3, 0, 6, 4))  # right half index 1 (blue), left half index 0 (red)
    path = _save(p, tmp_path / "p.png", transparency=0)  # index 0 transparent
    got = np.asarray(images.load_image(path))
    assert (got[:, :3] == 255).all() and (got[:, 3:] == [0, 0, 255]).all()
    np.testing.assert_array_equal(got, convert_to_rgb(Image.open(path), return_numpy=True))


@pytest.mark.parametrize("mode,ext", [("L", "png"), ("1", "png"), ("P", "gif"), ("CMYK", "tiff"), ("CMYK", "jpg"),
                                      ("YCbCr", "jpg"), ("RGB", "webp"), ("RGB", "bmp")])
def test_plain_modes_convert_like_pil(tmp_path, mode, ext):
    im = _noise(20, 10, seed=5).convert(mode)
    path = _save(im, tmp_path / f"x.{ext}", **({"lossless": True} if ext == "webp" else {}))
    got = images.load_image(path)
    assert got.mode == "RGB" and got.size == (20, 10)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(Image.open(path).convert("RGB")))


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    got = np.asarray(images.load_image(path))
    np.testing.assert_array_equal(got[0, :, 0], [0, 1, 128, 255])  # PIL's convert would give 0,255,255,255
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


def test_32_bit_int_and_float_grey(tmp_path):
    i32 = _save(Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), "I"), tmp_path / "i.tiff")
    np.testing.assert_array_equal(np.asarray(images.load_image(i32))[0, :, 0], [0, 4, 255])
    f = _save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F"), tmp_path / "f.tiff")
    np.testing.assert_array_equal(np.asarray(images.load_image(f))[0, :, 0], [0, 128, 255])


# ------------------------------------------------------------------------ orientation, animation

def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 40), (255, 0, 0))
    im.paste((0, 0, 255), (30, 0, 60, 40))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(im, tmp_path / "o.png", exif=exif)
    got = images.load_image(path)
    assert got.size == (40, 60)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(im.transpose(Image.Transpose.ROTATE_270)))
    # Same through a PIL image and through bytes.
    np.testing.assert_array_equal(np.asarray(images.load_image(Image.open(path))), np.asarray(got))
    np.testing.assert_array_equal(np.asarray(images.load_image(path.read_bytes())), np.asarray(got))
    with open(path, "rb") as f:
        np.testing.assert_array_equal(np.asarray(images.load_image(f)), np.asarray(got))


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    assert (np.asarray(images.load_image(path)) == [255, 0, 0]).all()


# ------------------------------------------------------------------------------- input types

def test_array_inputs():
    rgb = np.asarray(_noise(5, 4, seed=6))
    np.testing.assert_array_equal(np.asarray(images.load_image(rgb)), rgb)
    np.testing.assert_array_equal(np.asarray(images.load_image(np.moveaxis(rgb, -1, 0))), rgb)  # CHW
    np.testing.assert_array_equal(np.asarray(images.load_image(rgb.astype(np.float32) / 255)), rgb)
    np.testing.assert_array_equal(np.asarray(images.load_image(rgb[..., 0]))[..., 2], rgb[..., 0])  # grey
    assert (np.asarray(images.load_image(np.ones((3, 3), dtype=bool))) == 255).all()
    np.testing.assert_array_equal(np.asarray(images.load_image(rgb.astype(np.uint16) * 257)), rgb)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 3, 4, 5), dtype=np.uint8), "shape"),
    (np.zeros((4, 4, 2), dtype=np.uint8), "shape"),
    (np.full((4, 4), np.nan, dtype=np.float32), "NaN"),
    (np.full((4, 4), 300.0), "0..1"),
    (np.zeros((0, 4, 3), dtype=np.uint8), "empty size"),
    (np.zeros((4, 4), dtype=np.complex64), "dtype"),
    (12345, "unsupported image type"),
    (None, "unsupported image type"),
    (b"", "empty"),
    ("", "empty"),
])
def test_bad_inputs(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        images.load_image(bad)


def test_pil_input_is_not_modified():
    im = _noise(10, 10, "RGBA", seed=7)
    before = np.asarray(im).copy()
    out = images.load_image(im)
    assert out.mode == "RGB" and im.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(im), before)


# ------------------------------------------------------------------- broken and hostile files

def test_missing_and_directory(tmp_path):
    with pytest.raises(InvalidInputError, match="not found: .*nope.png"):
        images.load_image(tmp_path / "nope.png")
    with pytest.raises(InvalidInputError, match="not a file"):
        images.load_image(tmp_path)


@pytest.mark.parametrize("content", [b"this is not an image at all" * 10, b"\x89PNG\r\n\x1a\n" + b"\0" * 50, b"",
                                     b"P6\n60 4"],
                         ids=["text", "png-signature-only", "empty", "ppm-header-cut"])
def test_corrupt_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match="broken.png"):
        images.load_image(path)
    with pytest.raises(InvalidInputError):
        images.load_image(content or b"\0")
    with open(path, "rb") as f, pytest.raises(InvalidInputError, match="broken.png"):
        images.load_image(f)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_truncated_file_names_the_file(tmp_path, fmt):
    buf = io.BytesIO()
    _noise(300, 200, seed=8).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InvalidInputError, match=f"cut.{fmt.lower()}"):
        images.load_image(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about damaged TIFF/ICO, then decodes or fails
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "ICO"])
def test_damaged_files_give_clear_errors_only(fmt):
    """Random byte damage and cuts: every outcome is an RGB image or an InvalidInputError, nothing else."""
    rng = np.random.default_rng(11)
    buf = io.BytesIO()
    _noise(60, 40, seed=12).save(buf, fmt)
    data = buf.getvalue()
    for _ in range(60):
        damaged = bytearray(data)
        if rng.integers(2):
            damaged = damaged[: int(rng.integers(1, len(data)))]
        else:
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 10))):
                damaged[pos] = int(rng.integers(256))
        try:
            assert images.load_image(bytes(damaged)).mode == "RGB"
        except InvalidInputError as e:
            assert str(e)


def _png_bomb(w: int, h: int, rows: int | None = None) -> bytes:
    """A valid 1-bit greyscale PNG of w x h (zeros), written row by row so it stays a few KB in RAM;
    with `rows`, the pixel data stops early (a header that promises more than the file holds)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, out = zlib.compressobj(9), []
    row = b"\0" * (1 + (w + 7) // 8)
    block = row * 256
    for _ in range(0, rows if rows is not None else h, 256):
        out.append(comp.compress(block))
    out.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(out)) + chunk(b"IEND", b"")


def test_decompression_bomb_20000_square(tmp_path):
    data = _png_bomb(20000, 20000)
    assert len(data) < 1_000_000  # ~60 KB on disk, 400 MP (1.2 GB as RGB) decoded
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for src in (path, data):
        with pytest.raises(InvalidInputError, match="too large|megapixels"):
            images.load_image(src)


def test_size_checked_before_decoding(tmp_path):
    """72 MP: above our limit, below PIL's own warning. The file holds one row of pixel data, so a
    decoder would fail as 'truncated'; the size error proves nothing was decoded first."""
    path = tmp_path / "big.png"
    path.write_bytes(_png_bomb(9000, 8000, rows=1))
    with pytest.raises(InvalidInputError, match="9000x8000 = 72 megapixels, above the 64 MP limit"):
        images.load_image(path)


def test_max_pixels_applies_to_every_source():
    im = _noise(100, 100, seed=9)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    for src in (im, np.asarray(im), buf.getvalue()):
        with pytest.raises(InvalidInputError, match="megapixels"):
            images.load_image(src, max_pixels=5000)
        assert images.load_image(src).size == (100, 100)


# ------------------------------------------------------------------------------------- to_pil

def test_to_pil_equals_reference_postprocess():
    rng = np.random.default_rng(10)
    x = rng.uniform(-1.2, 1.2, size=(2, 3, 24, 24)).astype(np.float32)
    x[0, :, 0, 0] = [-1.0, 0.0, 1.0]
    ref = _reference(_info()).postprocess(list(x), return_tensors="PIL.Image.Image")["pixel_values"]
    got = images.to_pil(x, _info())
    assert len(got) == 2 and all(g.mode == "RGB" and g.size == (24, 24) for g in got)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    # Without info: the plain formula (x + 1) / 2 * 255, clipped, truncated to uint8.
    formula = np.clip((x + 1) / 2 * 255, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.stack([np.asarray(g) for g in images.to_pil(x)]), formula)
    assert np.asarray(got[0])[0, 0].tolist() == [0, 127, 255]


def test_to_pil_rejects_bad_shapes_and_survives_nan():
    with pytest.raises(InvalidInputError, match=r"\[N, 3, H, W\]"):
        images.to_pil(np.zeros((1, 4, 8, 8), dtype=np.float32))
    out = images.to_pil(np.full((1, 3, 4, 4), np.nan, dtype=np.float32))
    assert (np.asarray(out[0]) == 0).all()


def test_exif_transpose_is_idempotent_on_loaded_images(tmp_path):
    """Gradio and callers may have transposed already; a second pass must not rotate again."""
    im = Image.new("RGB", (60, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(im, tmp_path / "o.png", exif=exif)
    once = ImageOps.exif_transpose(Image.open(path))
    assert images.load_image(once).size == once.size == (40, 60)
