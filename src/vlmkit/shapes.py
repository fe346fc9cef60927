"""A synthetic image task that a tiny random model can learn on CPU in minutes.

Each image is a white square canvas cut into a `grid` x `grid` board of cells; a few
coloured shapes (square, circle, triangle) sit in distinct cells, each inside its cell
with a random size and offset. Every row asks one of two questions:

- colour: "What color is the square?" -> "red". Exactly one shape of the named kind is
  in the image, among 1-3 distractors of the other kinds; all shapes in the image have
  different colours, so the answer is found only by looking at the named shape.
  Answers: red, green, blue, yellow.
- count: "How many circles are there?" -> "3". 1-4 shapes of the named kind, among
  0-2 distractors of the other kinds, colours at random. Answers: 1, 2, 3, 4.

Half the rows ask each question; answers and named shapes are balanced within each
question type, so a model that cannot see the image is right one time in four at best
(`chance_accuracy` measures that on a given set). Rows are determined by `seed`; take
training and held-out sets from different seeds.

    from vlmkit.shapes import make_shapes_dataset, score
    train = make_shapes_dataset("runs/shapes/train", 2000, seed=0)   # -> .../data.jsonl
    test = make_shapes_dataset("runs/shapes/test", 200, seed=1)
    score(["Red.", " 3"], ["red", "3"])                               # -> 1.0

With the default 112-px images and `grid=4`, each cell is 28 px: one 14-px patch group
after Qwen-VL's 2x2 merge, so each image is 16 image tokens and no token holds two shapes.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (235, 200, 30)}
SHAPES = ("square", "circle", "triangle")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles"}
COUNTS = (1, 2, 3, 4)
QUESTION_TYPES = ("color", "count", "total")
JSONL_NAME = "data.jsonl"


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def render_shapes(
    shapes: list[tuple[str, str, int]], image_size: int, grid: int, rng: random.Random
) -> Image.Image:
    """(kind, colour, cell index) triples -> an RGB image; each shape fills 55-90% of its cell."""
    image = Image.new("RGB", (image_size, image_size), "white")
    draw = ImageDraw.Draw(image)
    cell = image_size / grid
    for kind, colour, index in shapes:
        side = rng.uniform(0.55, 0.9) * cell
        x0 = (index % grid) * cell + rng.uniform(0, cell - side)
        y0 = (index // grid) * cell + rng.uniform(0, cell - side)
        box = (round(x0), round(y0), round(x0 + side) - 1, round(y0 + side) - 1)
        _draw_shape(draw, kind, box, COLORS[colour])
    return image


def _balanced(values: tuple, n: int, rng: random.Random) -> list:
    """n values cycling through `values` in shuffled order: each appears n/len(values) times (+-1)."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def _color_row(kind: str, answer: str, rng: random.Random) -> tuple[list[tuple[str, str]], str]:
    others = [k for k in SHAPES if k != kind]
    colours = rng.sample([c for c in COLORS if c != answer], rng.randint(1, 3))
    shapes = [(kind, answer)] + [(rng.choice(others), c) for c in colours]
    return shapes, f"What color is the {kind}?"


def _count_row(kind: str, answer: int, rng: random.Random) -> tuple[list[tuple[str, str]], str]:
    others = [k for k in SHAPES if k != kind]
    colours = list(COLORS)
    shapes = [(kind, rng.choice(colours)) for _ in range(answer)]
    shapes += [(rng.choice(others), rng.choice(colours)) for _ in range(rng.randint(0, 2))]
    return shapes, f"How many {PLURALS[kind]} are there?"


def _total_row(kind: str, answer: int, rng: random.Random) -> tuple[list[tuple[str, str]], str]:
    shapes = [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(answer)]
    return shapes, "How many shapes are there?"


def make_shapes_dataset(
    folder: str | Path,
    n_rows: int,
    seed: int,
    image_size: int = 112,
    grid: int = 4,
    questions: tuple[str, ...] = ("color", "count"),
) -> Path:
    """Write `n_rows` rows to `folder`/data.jsonl and their PNGs to `folder`/images/; returns the JSONL.

    Rows are `{"messages": [user "<image>QUESTION", assistant ANSWER], "images": ["images/NNNNN.png"]}`
    (paths relative to the JSONL). The same seed, size and grid always give the same files.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    if grid * grid < 6:
        raise ValueError(f"grid {grid} has fewer than the 6 cells a count image may need")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    types = _balanced(tuple(questions), n_rows, rng)
    plan = {}
    for q in questions:
        n = types.count(q)
        answers = _balanced(tuple(COLORS) if q == "color" else COUNTS, n, rng)
        plan[q] = list(zip(_balanced(SHAPES, n, rng), answers, strict=True))
    lines = []
    for i, kind_of_question in enumerate(types):
        kind, answer = plan[kind_of_question].pop()
        make_row = {"color": _color_row, "count": _count_row, "total": _total_row}[kind_of_question]
        shapes, question = make_row(kind, answer, rng)
        rng.shuffle(shapes)
        cells = rng.sample(range(grid * grid), len(shapes))
        image = render_shapes(
            [(k, c, cell) for (k, c), cell in zip(shapes, cells, strict=True)], image_size, grid, rng
        )
        name = f"images/{i:05d}.png"
        image.save(folder / name)
        row = {
            "messages": [
                {"role": "user", "content": f"<image>{question}"},
                {"role": "assistant", "content": str(answer)},
            ],
            "images": [name],
        }
        lines.append(json.dumps(row))
    path = folder / JSONL_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def normalize_answer(text: str) -> str:
    """'  Red.' -> 'red': strip spaces, lower-case, drop trailing punctuation."""
    return text.strip().lower().rstrip(".!?,;:").strip()


def score(predictions: list[str], references: list[str]) -> float:
    """Exact-match accuracy after `normalize_answer`, in [0, 1]."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no references to score against")
    hits = sum(
        normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(references)


def chance_accuracy(questions: list[str], references: list[str]) -> float:
    """Accuracy of the best blind guesser on this set: for each question text, its most frequent answer."""
    by_question: dict[str, Counter] = {}
    for q, r in zip(questions, references, strict=True):
        by_question.setdefault(q, Counter())[normalize_answer(r)] += 1
    return sum(c.most_common(1)[0][1] for c in by_question.values()) / len(references)
