"""The InternVL prompt format and tiling (InternVL2.5 / InternVL3 `-hf` checkpoints).

Rendering follows the checkpoints' chat template (`chat_template.jinja`; no default
system prompt; an image is `<IMG_CONTEXT>\\n`, a video `<video>\\n`). As transformers'
`InternVLProcessor` does, each image is cut into square tiles (`tile_grid`: the grid of
at most `max_tiles` tiles whose aspect ratio is closest to the image's, plus a
thumbnail of the whole image when there is more than one tile) and its placeholder
becomes `<img>` + `tokens_per_tile` `<IMG_CONTEXT>` per tile + `</img>`. A video
becomes `Frame1: <img>...</img>\\nFrame2: ...`, one tile per frame.

`pixel_values` is (total tiles, 3, tile_size, tile_size). `tokens_per_tile` is
(tile_size / patch_size)**2 * downsample_ratio**2 (256 for 448 px tiles, 14 px patches,
pixel shuffle 0.5), read from the checkpoint's config.

Shared code (data/check.py, train/finetune.py) passes a per-row resolution limit back
into `encode` / `count_tokens` as `limit` and reads its bounds as `min_limit` /
`max_limit` (`vlmkit.families.interface.Template`); for this family that limit is the
most tiles per image (`min_tiles` / `max_tiles`), and `fit_limit` lowers it until a row
fits a token budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmkit.errors import DataError, VlmkitError
from vlmkit.families.encoding import IGNORE_INDEX, Segment, collate_tokens, mark_text, tokenize_segments
from vlmkit.families.internvl.boxes import BOX_FORMAT
from vlmkit.media.grounding import needs_boxes, write_for_family
from vlmkit.media.images import load_image, read_image_size
from vlmkit.media.video import FrameSampling
from vlmkit.sample import Sample, as_sample, refuse_requested_sizes
from vlmkit.settings import read_settings

IMAGE_START, IMAGE_END, IMAGE_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
VIDEO = "<video>"


def tile_grid(height: int, width: int, tile_size: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of the tile grid for an image of height x width.

    Candidates are the grids with min_tiles..max_tiles tiles, in order of tile count; the
    one whose width/height ratio is closest to the image's wins. On a tie the grid with
    more tiles wins while the image's area is over half the area the tiles cover.
    """
    grids = sorted(
        (
            (columns, rows)
            for columns in range(1, max_tiles + 1)
            for rows in range(1, max_tiles + 1)
            if min_tiles <= columns * rows <= max_tiles
        ),
        key=lambda grid: grid[0] * grid[1],
    )
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for columns, rows in grids:
        diff = abs(aspect - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


# How a turn ends: `<|im_end|>\n` in the -hf checkpoints (and OpenGVLab's internvl2_5 conversation);
# `<|im_end|>` alone in the internlm2-chat / Hermes-2 conversations of InternVL-Chat-V1.5 and InternVL2.
TURN_END = "<|im_end|>\n"


def _turn(role: str, body: str, turn_end: str = TURN_END) -> list[Segment]:
    """`<|im_start|>role\\n...` + turn_end; assistant text and its end token are supervised."""
    end_token = turn_end.rstrip("\n")
    segments = [Segment(f"<|im_start|>{role}\n"), Segment(body + end_token, role == "assistant")]
    return segments + ([Segment(turn_end[len(end_token) :])] if turn_end != end_token else [])


def render_internvl(
    messages: list[dict],
    add_generation_prompt: bool,
    media_text: dict[str, str] | None = None,
    turn_end: str = TURN_END,
    bos: str | None = None,
) -> list[Segment]:
    """The chat template's text as segments. `media_text` overrides the text of a media part
    by id(part) (encode puts one `<IMG_CONTEXT>` per video frame there); `bos` (InternLM2's `<s>`)
    goes first, where the original tokenizer puts it."""
    media_text = media_text or {}
    segments: list[Segment] = [Segment(bos)] if bos else []
    for message in messages:
        body = []
        for part in message["content"]:
            if part["type"] == "text":
                body.append(part["text"])
            else:
                default = IMAGE_CONTEXT if part["type"] == "image" else VIDEO
                body.append(media_text.get(id(part), default) + "\n")
        segments += _turn(message["role"], "".join(body), turn_end)
    if add_generation_prompt:
        segments.append(Segment("<|im_start|>assistant\n"))
    return segments


class InternVLTemplate:
    """Encodes `Sample`s for an InternVL checkpoint; see the module docstring for shapes."""

    box_format = BOX_FORMAT  # grounding text, 0-1000 of the original image (`vlmkit.media.grounding`)
    limit_option = "--max-tiles"  # what `min_limit` / `max_limit` count here (tiles), as users set it
    compact_images = False  # the encode cache stores `encode`'s own output

    def __init__(
        self,
        tokenizer,
        *,
        tile_size: int,
        tokens_per_tile: int,
        image_mean: list[float],
        image_std: list[float],
        min_tiles: int,
        max_tiles: int,
        system: str | None = None,
        fps: float | None = None,
        nframes: int | None = 8,
        max_frames: int = 32,
        turn_end: str = TURN_END,
        bos: str | None = None,
    ):
        if min_tiles < 1 or max_tiles < 1:
            raise VlmkitError(f"--min-tiles {min_tiles} / --max-tiles {max_tiles}: both must be at least 1")
        if min_tiles > max_tiles:
            raise VlmkitError(f"--min-tiles {min_tiles} is larger than --max-tiles {max_tiles}")
        self.tokenizer = tokenizer
        self.tile_size = tile_size
        self.tokens_per_tile = tokens_per_tile
        self.mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        self.min_tiles = int(min_tiles)
        self.max_tiles = int(max_tiles)
        self.system = system
        self.fps = fps
        self.nframes = nframes
        self.max_frames = max_frames
        self.turn_end = turn_end
        self.bos = bos
        vocab = tokenizer.get_vocab()
        self.image_token_id = vocab[IMAGE_CONTEXT]
        self.image_start_id = vocab[IMAGE_START]
        self.image_end_id = vocab[IMAGE_END]
        self.video_token_id = None  # video frames are images here (<IMG_CONTEXT> runs)
        # Qwen2 tokenizers end a text with <|endoftext|>; InternLM2's has none (its eos is </s>).
        ends = [t for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab[ends[-1]]
        self.stop_token_ids = [vocab[t] for t in ends]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.stop_token_ids:
            self.stop_token_ids.append(tokenizer.eos_token_id)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        tokenizer,
        min_tiles: int | None = None,
        max_tiles: int | None = None,
        system: str | None = None,
        fps: float | None = None,
        nframes: int | None = None,
        max_frames: int | None = None,
    ) -> InternVLTemplate:
        """Numbers from the checkpoint's preprocessor_config.json and config.json (or, in a checkpoint
        folder without config.json, processor_config.json's image_seq_length). Tile limits, system prompt
        and video sampling from the arguments (given options over the saved vlmkit.json:
        `Family.load_template`), else the preprocessor config (tiles) or InternVL's own demo (8 frames per
        video, at most 32).
        Options of other families (min_pixels, video_max_pixels, ...) are refused by `Family.load_template`."""
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "preprocessor_config.json").read_text())
        saved = read_settings(model_dir)  # the prompt format of a converted checkpoint (not encoding settings)
        size = config.get("size") or {}
        tile_size = size.get("height", 448)
        if size.get("width", tile_size) != tile_size:
            raise VlmkitError(f"{model_dir}/preprocessor_config.json: tiles must be square, got {size}")
        default_min = _first(config.get("min_patches"), 1)
        max_tiles = _first(max_tiles, config.get("max_patches"), 12)
        if min_tiles is None:  # lowering only the maximum below the default minimum lowers both
            min_tiles = min(default_min, max_tiles)
        video = {"fps": None, "nframes": 8, "max_frames": 32}
        if fps is not None or nframes is not None:
            video.update(fps=fps, nframes=nframes)
        if max_frames is not None:
            video["max_frames"] = max_frames
        return cls(
            tokenizer,
            tile_size=tile_size,
            tokens_per_tile=_tokens_per_tile(model_dir, tile_size),
            image_mean=config["image_mean"],
            image_std=config["image_std"],
            min_tiles=min_tiles,
            max_tiles=max_tiles,
            system=system,
            # the prompt format of a checkpoint converted from OpenGVLab's layout (convert.py)
            turn_end=saved.get("turn_end", TURN_END),
            bos=saved.get("bos"),
            **video,
        )

    @property
    def settings(self) -> dict[str, Any]:
        """What must travel with a model or run so that inference encodes as training did."""
        return {
            "min_tiles": self.min_tiles,
            "max_tiles": self.max_tiles,
            "system": self.system,
            "fps": self.fps,
            "nframes": self.nframes,
            "max_frames": self.max_frames,
        } | self.prompt_format

    @property
    def prompt_format(self) -> dict[str, Any]:
        """The original conversation format of a converted OpenGVLab checkpoint; {} for the -hf one."""
        return {"turn_end": self.turn_end, "bos": self.bos} if (self.turn_end, self.bos) != (TURN_END, None) else {}

    # The interface's names for the bounds of the per-row resolution limit (here: tiles per image).
    @property
    def min_limit(self) -> int:
        return self.min_tiles

    @property
    def max_limit(self) -> int:
        return self.max_tiles

    # -- text --------------------------------------------------------------------------------------

    def _messages(self, sample: Sample) -> list[dict]:
        messages = sample.messages
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *messages]
        return messages

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text with one placeholder per image or video, as the chat template writes it."""
        sample = as_sample(sample)
        return "".join(s.text for s in render_internvl(self._messages(sample), add_generation_prompt, None, self.turn_end, self.bos))

    # -- images ------------------------------------------------------------------------------------

    def _max_tiles(self, max_tiles: int | None) -> int:
        if max_tiles is None:
            return self.max_tiles
        if max_tiles < self.min_tiles:
            raise DataError(f"max_tiles {max_tiles} is below min_tiles {self.min_tiles}")
        return int(max_tiles)

    def image_tiles(self, height: int, width: int, max_tiles: int | None = None) -> int:
        """Tiles (thumbnail included) for an upright image of height x width."""
        max_tiles = self._max_tiles(max_tiles)
        if max_tiles == 1:
            return 1
        columns, rows = tile_grid(height, width, self.tile_size, self.min_tiles, max_tiles)
        return 1 if columns * rows == 1 else columns * rows + 1

    def _normalise(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0  # (3, H, W)
        return (pixels - self.mean) / self.std

    def process_image(self, image: Image.Image, max_tiles: int | None = None) -> np.ndarray:
        """RGB image -> tiles (n, 3, tile_size, tile_size) float32, row by row, thumbnail last."""
        max_tiles, size = self._max_tiles(max_tiles), self.tile_size
        columns, rows = (1, 1)
        if max_tiles > 1:
            columns, rows = tile_grid(image.height, image.width, size, self.min_tiles, max_tiles)
        resized = image.resize((columns * size, rows * size), Image.Resampling.BICUBIC)
        pixels = self._normalise(resized)  # (3, rows*size, columns*size)
        tiles = pixels.reshape(3, rows, size, columns, size).transpose(1, 3, 0, 2, 4)  # (rows, cols, 3, s, s)
        tiles = tiles.reshape(rows * columns, 3, size, size)
        if rows * columns > 1:
            thumbnail = self._normalise(image.resize((size, size), Image.Resampling.BICUBIC))
            tiles = np.concatenate([tiles, thumbnail[None]])
        return np.ascontiguousarray(tiles)

    @property
    def video_sampling(self) -> FrameSampling:
        """How `vlmkit.media.video` samples a video's frames for this template (any count: frames are images)."""
        return FrameSampling(self.fps, self.nframes, min_frames=4, max_frames=self.max_frames, frame_factor=1)

    def _video_frames(self, source: Any, where: str) -> list[Image.Image]:
        """The sampled frames of a video, each resized to one tile (as InternVL's video processor does)."""
        from vlmkit.media.video import load_video

        video = load_video(source, where, self.video_sampling)
        size = self.tile_size
        return [frame.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for frame in video.frames]

    def _video_frame_count(self, source: Any, where: str) -> int:
        from vlmkit.media.video import probe_video

        return len(probe_video(source, where, self.video_sampling).timestamps)

    # -- whole samples -----------------------------------------------------------------------------

    def _expand(self, ids: list[int], labels: list[int], tiles: list[int]) -> tuple[list[int], list[int]]:
        """The k-th `<IMG_CONTEXT>` -> `<img>` + tiles[k] * tokens_per_tile `<IMG_CONTEXT>` + `</img>`."""
        out_ids: list[int] = []
        out_labels: list[int] = []
        k = 0
        for token, label in zip(ids, labels, strict=True):
            if token != self.image_token_id:
                out_ids.append(token)
                out_labels.append(label)
                continue
            span = [self.image_start_id, *[token] * (tiles[k] * self.tokens_per_tile), self.image_end_id]
            out_ids += span
            out_labels += [IGNORE_INDEX] * len(span)
            k += 1
        return out_ids, out_labels

    def _placeholders(self, ids: list[int], expected: int, where: str) -> None:
        found = ids.count(self.image_token_id)
        if found != expected:
            raise DataError(
                f"{where}: {found} {IMAGE_CONTEXT} tokens in the text for {expected} images and video frames; "
                f"do not write {IMAGE_CONTEXT} in the text"
            )

    def encode(
        self, sample: Sample, add_generation_prompt: bool = False, limit: int | None = None
    ) -> dict[str, Any]:
        """Sample -> model inputs for one sequence.

        Returns input_ids, labels (T,), and when the sample has images or videos pixel_values
        (n_tiles, 3, tile_size, tile_size), `image_tiles` (tiles per image or video frame, in order)
        and `image_notes` (a line per image or frame for people). `limit` is the most tiles per image for
        this call (from `fit_limit`; None: `max_tiles`).
        """
        sample = as_sample(sample)
        max_tiles = self._max_tiles(limit)
        sample = self._with_objects(sample)
        messages = mark_text(self._messages(sample))
        tiles: list[np.ndarray] = []
        counts: list[int] = []
        notes: list[str] = []  # one per run of <IMG_CONTEXT>, for `vlmkit data preview`
        frame_text: dict[int, str] = {}
        images = videos = 0
        for message in messages:
            for part in message["content"]:
                if part["type"] == "image":
                    images += 1
                    where = f"{sample.where}: image {images}"
                    image = load_image(part["image"], where=where)
                    try:
                        image_tiles = self.process_image(image, max_tiles)
                    except ValueError as e:
                        raise DataError(f"{where}: {e}") from None
                    tiles.append(image_tiles)
                    counts.append(len(image_tiles))
                    notes.append(
                        f"image {images}: {len(image_tiles)} tile(s) of {self.tile_size}×{self.tile_size}"
                        f"{' (thumbnail last)' if len(image_tiles) > 1 else ''} from {image.height}×{image.width} (h×w)"
                    )
                elif part["type"] == "video":
                    videos += 1
                    frames = self._video_frames(part["video"], f"{sample.where}: video {videos}")
                    tiles += [self._normalise(frame)[None] for frame in frames]
                    counts += [1] * len(frames)
                    notes += [f"video {videos} frame {i + 1} of {len(frames)}" for i in range(len(frames))]
                    frame_text[id(part)] = "\n".join(
                        f"Frame{i + 1}: {IMAGE_CONTEXT}" for i in range(len(frames))
                    )
        segments = render_internvl(messages, add_generation_prompt, frame_text, self.turn_end, self.bos)
        ids, labels = tokenize_segments(self.tokenizer, segments, self.box_format.keep_tokens)
        self._placeholders(ids, len(counts), sample.where)
        ids, labels = self._expand(ids, labels, counts)
        out: dict[str, Any] = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        if tiles:
            out["pixel_values"] = torch.from_numpy(np.concatenate(tiles))
            out["image_tiles"] = counts
            out["image_notes"] = notes
        return out

    def image_sizes(self, sample: Sample, limit: int | None = None) -> list[tuple[tuple[int, int], ...]]:
        """((orig_h, orig_w), (orig_h, orig_w)) per image: InternVL boxes are 0-1000 of the original image,
        whatever the tiling (so `limit`, the most tiles, changes nothing)."""
        sizes = []
        for k, source in enumerate(sample.media("image")):
            size = read_image_size(source, where=f"{sample.where}: image {k + 1}")
            sizes.append((size, size))
        return sizes

    def _with_objects(self, sample: Sample) -> Sample:
        """`sample` with grounding placeholders and box text written as InternVL writes them."""
        refuse_requested_sizes(sample, "InternVL")
        if not needs_boxes(sample):
            return sample
        return write_for_family(sample, self.box_format, self.image_sizes(sample))

    def _measure(self, sample: Sample, add_generation_prompt: bool) -> tuple[int, list[tuple[str, int, int]]]:
        """(tokens other than image spans, [(where, height, width) per image]) without decoding pixels;
        video frames (one tile each, whatever the tile limit) count as text tokens here."""
        sample = self._with_objects(sample)
        messages = mark_text(self._messages(sample))
        frame_text: dict[int, str] = {}
        frames = videos = 0
        for message in messages:
            for part in message["content"]:
                if part["type"] == "video":
                    videos += 1
                    n = self._video_frame_count(part["video"], f"{sample.where}: video {videos}")
                    frame_text[id(part)] = "\n".join(f"Frame{i + 1}: {IMAGE_CONTEXT}" for i in range(n))
                    frames += n
        ids, _ = tokenize_segments(
            self.tokenizer,
            render_internvl(messages, add_generation_prompt, frame_text, self.turn_end, self.bos),
            self.box_format.keep_tokens,
        )
        images = sample.media("image")
        self._placeholders(ids, len(images) + frames, sample.where)
        sizes = []
        for k, source in enumerate(images):
            where = f"{sample.where}: image {k + 1}"
            sizes.append((where, *read_image_size(source, where=where)))
        return len(ids) - len(images) + frames * (self.tokens_per_tile + 1), sizes

    def _image_tokens(self, sizes: list[tuple[str, int, int]], max_tiles: int | None) -> int:
        return sum(self.image_tiles(h, w, max_tiles) * self.tokens_per_tile + 2 for _, h, w in sizes)

    def count_tokens(
        self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False
    ) -> int:
        """`len(encode(sample, add_generation_prompt, limit)["input_ids"])` from image headers only;
        `limit` is the most tiles per image."""
        sample = as_sample(sample)
        text_tokens, sizes = self._measure(sample, add_generation_prompt)
        return text_tokens + self._image_tokens(sizes, self._max_tiles(limit))

    def fit_limit(
        self, sample: Sample, max_length: int, add_generation_prompt: bool = False
    ) -> int | None:
        """The most tiles per image in [min_tiles, max_tiles] at which `sample` has at most `max_length`
        tokens; None when it does not fit even at min_tiles."""
        text_tokens, sizes = self._measure(sample, add_generation_prompt)
        for max_tiles in range(self.max_tiles, self.min_tiles - 1, -1):
            if text_tokens + self._image_tokens(sizes, max_tiles) <= max_length:
                return max_tiles
        return None

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a list of `encode` outputs into one batch (left padding for generation)."""
        batch = collate_tokens(encoded, self.pad_token_id, padding_side)
        with_images = [e["pixel_values"] for e in encoded if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat(with_images)
        return batch

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        """Image `k` of an `encode` output for people: its tiles and sizes (`encode`'s image_notes)."""
        return encoded["image_notes"][k]

    def split_media(self, encoded: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
        """Per image, (its image tokens, its own pixel entries in `encode` form), and the entries of all
        videos together (none: video frames are images here): what a chat turn that reuses the cached start of its conversation passes for the
        media after that start (`vlmkit.backends.chat_cache`)."""
        images, start = [], 0
        for tiles in encoded.get("image_tiles", []):
            entries = {"pixel_values": encoded["pixel_values"][start : start + tiles], "image_tiles": [tiles]}
            images.append((tiles * self.tokens_per_tile, entries))
            start += tiles
        return images, {}


def processor_limits(name: str, config: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """`Family.processor_limits`: the run's tile limits as the image processor reads them."""
    if name != "preprocessor_config.json":
        return config
    limits = {"min_patches": settings.get("min_tiles"), "max_patches": settings.get("max_tiles")}
    return dict(config) | {k: int(v) for k, v in limits.items() if v is not None}


def _tokens_per_tile(model_dir: Path, tile_size: int) -> int:
    """(tile_size / patch_size)**2 * downsample_ratio**2 from config.json; else processor_config.json."""
    config_file = model_dir / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        vision = config.get("vision_config", {})
        patch = vision.get("patch_size", 14)
        patch = patch[0] if isinstance(patch, list) else patch
        ratio = config.get("downsample_ratio", 0.5)
        return round((tile_size // patch) ** 2 * ratio**2)
    processor_file = model_dir / "processor_config.json"
    if processor_file.is_file():
        return int(json.loads(processor_file.read_text())["image_seq_length"])
    raise VlmkitError(
        f"{model_dir}: neither config.json nor processor_config.json says how many tokens a tile makes"
    )


def _first(*values: Any) -> Any:
    """The first value that is not None."""
    return next(v for v in values if v is not None)
