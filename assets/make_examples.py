"""Draw the example images the app ships (`python assets/make_examples.py`).

Nothing is downloaded: every picture is drawn here with PIL and numpy, so the examples are
reproducible and free of licence questions. The PNGs/JPEG are committed beside this script.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent


def font(size):
    return ImageFont.load_default(size=size)  # Pillow's bundled font: same glyphs everywhere


def landscape(size=(512, 384)):
    """A sunny countryside: sky gradient, hills, a house with a red roof, a tree, a sun."""
    w, h = size
    sky = np.linspace([90, 160, 235], [200, 230, 255], h // 2 + 40).astype(np.uint8)
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[: len(sky)] = sky[:, None, :]
    img = Image.fromarray(pixels)
    d = ImageDraw.Draw(img)
    d.ellipse((400, 30, 470, 100), fill=(255, 215, 60))  # sun
    d.ellipse((-120, 190, 330, 520), fill=(80, 160, 70))  # hills
    d.ellipse((200, 210, 700, 560), fill=(60, 140, 60))
    d.rectangle((0, 300, w, h), fill=(70, 150, 65))
    d.rectangle((250, 200, 370, 300), fill=(235, 225, 200), outline=(90, 70, 50), width=3)  # house
    d.polygon([(240, 205), (310, 145), (380, 205)], fill=(190, 40, 40))  # roof
    d.rectangle((295, 245, 325, 300), fill=(110, 70, 40))  # door
    d.rectangle((262, 220, 287, 245), fill=(150, 200, 240), outline=(90, 70, 50))  # window
    d.rectangle((75, 215, 95, 305), fill=(110, 75, 40))  # tree trunk
    d.ellipse((35, 140, 135, 240), fill=(40, 110, 45))
    for x in (150, 185, 220):  # a fence
        d.rectangle((x, 270, x + 6, 310), fill=(240, 240, 240))
    d.rectangle((145, 280, 232, 286), fill=(240, 240, 240))
    return img.filter(ImageFilter.SMOOTH)


def shapes(size=(384, 384)):
    """Three primary-colour shapes on white: a counting / colour / position question."""
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.ellipse((30, 40, 160, 170), fill=(220, 40, 40))  # red circle, top left
    d.rectangle((220, 50, 340, 170), fill=(40, 80, 210))  # blue square, top right
    d.polygon([(120, 340), (190, 210), (260, 340)], fill=(40, 170, 70))  # green triangle, bottom
    return img


def chart(size=(512, 384)):
    """A labelled bar chart: fruit sold per month."""
    data = {"Jan": 12, "Feb": 19, "Mar": 7, "Apr": 24, "May": 15}
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((w // 2, 24), "Apples sold per month", fill="black", font=font(22), anchor="mm")
    left, bottom, top = 60, h - 50, 60
    d.line((left, top, left, bottom), fill="black", width=2)
    d.line((left, bottom, w - 20, bottom), fill="black", width=2)
    for tick in range(0, 26, 5):
        y = bottom - (bottom - top) * tick / 25
        d.line((left - 5, y, left, y), fill="black")
        d.text((left - 10, y), str(tick), fill="black", font=font(14), anchor="rm")
    bar_w = (w - left - 40) // len(data)
    for i, (month, value) in enumerate(data.items()):
        x0 = left + 15 + i * bar_w
        y0 = bottom - (bottom - top) * value / 25
        d.rectangle((x0, y0, x0 + bar_w - 25, bottom - 1), fill=(70, 130, 180))
        d.text((x0 + (bar_w - 25) // 2, bottom + 15), month, fill="black", font=font(16), anchor="mm")
    return img


def sign(size=(512, 288)):
    """A street sign with text: an OCR-style question."""
    img = Image.new("RGB", size, (120, 170, 210))
    d = ImageDraw.Draw(img)
    d.rectangle((36, 60, size[0] - 36, 220), fill=(20, 110, 60), outline="white", width=6)
    d.text((size[0] // 2, 115), "OPEN VINO AVE", fill="white", font=font(40), anchor="mm")
    d.text((size[0] // 2, 175), "Speed limit 30", fill="white", font=font(26), anchor="mm")
    d.rectangle((size[0] // 2 - 8, 220, size[0] // 2 + 8, size[1]), fill=(90, 90, 90))
    return img


def main():
    landscape().save(HERE / "landscape.png", optimize=True)
    shapes().save(HERE / "shapes.png", optimize=True)
    chart().save(HERE / "chart.png", optimize=True)
    sign().save(HERE / "sign.jpg", quality=90)  # one JPEG, to exercise that path too


if __name__ == "__main__":
    main()
