"""Draw grounding boxes on images: `vlmkit infer --draw DIR`.

Boxes come in original-image pixels (`vlmkit.grounding.parse_reply`); each is outlined in a colour of
`PALETTE` (in turn) with its label written in a filled tag above its top-left corner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from vlmkit.media import load_image

PALETTE = [(255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 160, 0), (200, 0, 200), (0, 200, 200)]


def draw_boxes(image: Image.Image, objects: list[dict[str, Any]]) -> Image.Image:
    """A copy of `image` (RGB) with each `{"ref", "bbox": [x1, y1, x2, y2]}` outlined and labelled."""
    image = image.convert("RGB")  # a copy
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 150))
    font = ImageFont.load_default()
    for k, obj in enumerate(objects):
        colour = PALETTE[k % len(PALETTE)]
        x1, y1, x2, y2 = obj["bbox"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        if obj.get("ref"):
            left, top, right, bottom = draw.textbbox((x1, y1), obj["ref"], font=font)
            shift = bottom - top + 2 if y1 - (bottom - top + 2) >= 0 else 0  # above the box when it fits
            draw.rectangle([left, top - shift, right + 2, bottom - shift], fill=colour)
            draw.text((x1 + 1, y1 - shift), obj["ref"], fill=(255, 255, 255), font=font)
    return image


def save_drawn(images: list[Any], objects: list[dict[str, Any]], out_dir: Path, stem: str) -> list[Path]:
    """Save each of `images` (any source `load_image` opens) with its objects (by `image_id`) drawn, as
    `out_dir/{stem}_image{k}.png`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, source in enumerate(images):
        image = load_image(source, where=f"{stem}: image {k + 1}")
        path = out_dir / f"{stem}_image{k}.png"
        draw_boxes(image, [o for o in objects if o.get("image_id", 0) == k]).save(path)
        paths.append(path)
    return paths
