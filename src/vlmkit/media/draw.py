"""Draw grounding boxes on images: `vlmkit infer --draw DIR`.

Boxes come in original-image pixels (`vlmkit.media.grounding.parse_reply`); each predicted box is outlined in
a colour of `PALETTE` (in turn) with its label written in a filled tag above its top-left corner. The
reference boxes of a dataset row (its `objects`) are drawn too, all in `REFERENCE_COLOUR` with thinner
lines, and a legend in the bottom-left corner says which is which.

Labels are written with a font that has CJK glyphs when the system has one (Debian/Ubuntu:
`fonts-noto-cjk` or `fonts-wqy-microhei`; macOS and Windows ship one), else with Pillow's default font,
which draws CJK as empty boxes: then vlmkit warns once (one `warning:` line on stderr), naming the package to install.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from vlmkit.media.images import load_image

PALETTE = [(255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 160, 0), (200, 0, 200), (0, 200, 200)]
REFERENCE_COLOUR = (255, 255, 0)  # not in PALETTE
# Fonts with CJK glyphs where their packages put them (Debian/Ubuntu fonts-noto-cjk, fonts-wqy-microhei,
# fonts-wqy-zenhei; macOS; Windows). Any other is found through fontconfig's `fc-list :lang=zh`.
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)


def _has_cjk_glyphs(font) -> bool:
    """Two different CJK characters render differently (a font without them draws the same empty box)."""
    return bytes(font.getmask("中")) != bytes(font.getmask("国"))


@functools.cache
def cjk_font_path() -> str | None:
    """The first font file found with CJK glyphs, or None."""
    candidates = [path for path in CJK_FONTS if Path(path).is_file()]
    if shutil.which("fc-list"):
        try:
            listed = subprocess.run(
                ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            listed = ""
        candidates += sorted(line.split(":")[0].strip() for line in listed.splitlines() if line.strip())
    for path in candidates:
        try:
            if _has_cjk_glyphs(ImageFont.truetype(path, 16)):
                return path
        except OSError:
            continue
    return None


def _is_cjk(text: str) -> bool:
    return any(
        "\u2e80" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" or "\uf900" <= c <= "\ufaff" or "\uff00" <= c <= "\uffef"
        for c in text
    )


@functools.cache
def _warn_no_cjk_font() -> None:
    # One `warning:` line on stderr, like vlmkit's other warnings (a Python warning would show this file's path
    # and source line to the user).
    print(
        "warning: no font with CJK glyphs found: CJK labels are drawn as empty boxes; install one "
        "(Debian/Ubuntu: apt-get install fonts-noto-cjk)",
        file=sys.stderr,
        flush=True,
    )


def label_font(size: int, text: str = ""):
    """A font of `size` px for labels: one with CJK glyphs when the system has one, else Pillow's default
    (with a one-time warning when `text` needs CJK glyphs)."""
    path = cjk_font_path()
    if path is not None:
        return ImageFont.truetype(path, size)
    if _is_cjk(text):
        _warn_no_cjk_font()
    return ImageFont.load_default(size)


def _label(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, colour, font) -> None:
    """`text` in white on a tag of `colour`, above (x, y) when it fits, else just below it."""
    left, top, right, bottom = draw.textbbox((x, y), text, font=font)
    shift = bottom - y + 2 if y - (bottom - y + 2) >= 0 else 0
    draw.rectangle([left - 1, top - shift - 1, right + 2, bottom - shift + 1], fill=colour)
    draw.text((x + 1, y - shift), text, fill=(255, 255, 255), font=font)


def draw_boxes(
    image: Image.Image, objects: list[dict[str, Any]], reference: list[dict[str, Any]] | None = None
) -> Image.Image:
    """A copy of `image` (RGB) with each `{"ref", "bbox": [x1, y1, x2, y2]}` of `objects` (the prediction)
    outlined and labelled in the palette's colours, and each of `reference` (the row's own boxes) in
    `REFERENCE_COLOUR`, with a legend when there are reference boxes."""
    image = image.convert("RGB")  # a copy
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 150))
    size = max(11, round(min(image.size) / 30))
    labels = "".join(str(o.get("ref") or "") for o in [*objects, *(reference or [])])
    font = label_font(size, labels)
    for obj in reference or []:
        x1, y1, x2, y2 = obj["bbox"]
        draw.rectangle([x1, y1, x2, y2], outline=REFERENCE_COLOUR, width=max(1, width // 2))
        if obj.get("ref"):
            _label(draw, x1, y2 + size + 4, str(obj["ref"]), (90, 90, 0), font)  # below, off the prediction's tag
    for k, obj in enumerate(objects):
        colour = PALETTE[k % len(PALETTE)]
        x1, y1, x2, y2 = obj["bbox"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        if obj.get("ref"):
            _label(draw, x1, y1, str(obj["ref"]), colour, font)
    if reference:
        _legend(draw, image.size, font, size)
    return image


def _legend(draw: ImageDraw.ImageDraw, image_size: tuple[int, int], font, size: int) -> None:
    """`predicted` / `reference` with their line colours, in the bottom-left corner."""
    rows = [("predicted", PALETTE[0]), ("reference", REFERENCE_COLOUR)]
    line = size + 4
    top = image_size[1] - line * len(rows) - 4
    right = max(draw.textbbox((0, 0), text, font=font)[2] for text, _ in rows) + size + 12
    draw.rectangle([0, top - 2, right, image_size[1]], fill=(0, 0, 0))
    for i, (text, colour) in enumerate(rows):
        y = top + i * line
        draw.rectangle([4, y + 2, 4 + size, y + size - 2], outline=colour, width=2)
        draw.text((size + 8, y), text, fill=(255, 255, 255), font=font)


def save_drawn(
    images: list[Any],
    objects: list[dict[str, Any]],
    out_dir: Path,
    stem: str,
    reference: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """Save each of `images` (any source `load_image` opens) with its objects (by `image_id`) drawn, and
    its `reference` objects beside them, as `out_dir/{stem}_image{k}.png`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, source in enumerate(images):
        image = load_image(source, where=f"{stem}: image {k + 1}")
        path = out_dir / f"{stem}_image{k}.png"
        mine = [o for o in objects if o.get("image_id", 0) == k]
        theirs = [o for o in reference or [] if o.get("image_id", 0) == k]
        draw_boxes(image, mine, theirs).save(path)
        paths.append(path)
    return paths
