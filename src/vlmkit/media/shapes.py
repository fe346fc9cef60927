"""A synthetic image task that a tiny random model can learn on a CPU in minutes.

Each image is a white canvas cut into a `grid` x `grid` board of cells; a few coloured
shapes (square, circle, triangle) sit in distinct cells, each inside its cell at a random
size (55-90% of the cell) and offset. Colours: red, green, blue, yellow. Each row asks
one question, of the kinds named in `questions`:

- "color": "What color is the square?" -> "red". Exactly one shape of the named kind,
  among 1-3 distractors of the other kinds; every shape in the image has a different
  colour, so only the named shape tells the answer. 4 answers.
- "count": "How many circles are there?" -> "3". 1-4 shapes of the named kind among
  0-2 distractors of the other kinds, colours at random. 4 answers.
- "total": "How many shapes are there?" -> "2". 1-4 shapes of any kinds. 4 answers.

Question kinds take equal shares of the rows, and within each kind the answers and the
named shapes are balanced (their counts differ by at most one), so a model that cannot
see the image is right one time in four at best: chance is 25%. `chance_accuracy`
measures the best blind guesser on a given set; on a few hundred rows it comes out a
little above 25%, because it picks each question text's commonest answer after the fact.

    from vlmkit.media.shapes import make_shapes_dataset, score
    train = make_shapes_dataset("runs/shapes/train", 4000, seed=0)   # -> runs/shapes/train/data.jsonl
    test = make_shapes_dataset("runs/shapes/test", 200, seed=1)      # held out: another seed
    score(["Red.", " 3"], ["red", "3"])                               # -> 1.0

With Qwen-VL models (14-px patches, 2x2 merge) a 28-px cell is exactly one image token,
so no token holds two shapes: the defaults (84 px, 3x3 grid) give 9 image tokens per
image. How fast a tiny random model learns each kind is in benchmarks/RESULTS.md.
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
QUESTION_KINDS = ("color", "count", "total")
# The most shapes one image of each question kind can hold: the grid needs that many cells.
MAX_SHAPES = {"color": 4, "count": 6, "total": 4}
JSONL_NAME = "data.jsonl"

Shape = tuple[str, str]  # (kind, colour name)


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
    """(kind, colour name, cell index) triples -> an RGB image; cells are numbered row by row."""
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
    """n values cycling through `values`, shuffled: each appears n / len(values) times, +-1."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def _color_question(kind: str, answer: str, rng: random.Random) -> tuple[list[Shape], str]:
    others = [k for k in SHAPES if k != kind]
    colours = rng.sample([c for c in COLORS if c != answer], rng.randint(1, 3))
    return [(kind, answer)] + [(rng.choice(others), c) for c in colours], f"What color is the {kind}?"


def _count_question(kind: str, answer: int, rng: random.Random) -> tuple[list[Shape], str]:
    others = [k for k in SHAPES if k != kind]
    shapes = [(kind, rng.choice(list(COLORS))) for _ in range(answer)]
    shapes += [(rng.choice(others), rng.choice(list(COLORS))) for _ in range(rng.randint(0, 2))]
    return shapes, f"How many {PLURALS[kind]} are there?"


def _total_question(kind: str, answer: int, rng: random.Random) -> tuple[list[Shape], str]:
    shapes = [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(answer)]
    return shapes, "How many shapes are there?"


_MAKERS = {"color": _color_question, "count": _count_question, "total": _total_question}


def make_shapes_dataset(
    folder: str | Path,
    n_rows: int,
    seed: int,
    image_size: int = 84,
    grid: int = 3,
    questions: tuple[str, ...] = ("color",),
) -> Path:
    """Write `n_rows` rows to `folder`/data.jsonl and their PNGs to `folder`/images/; returns the JSONL.

    A row is `{"messages": [{"role": "user", "content": "<image>QUESTION"}, {"role": "assistant",
    "content": ANSWER}], "images": ["images/00000.png"]}`, the path relative to the JSONL file.
    The same arguments always give the same bytes.
    """
    unknown = [q for q in questions if q not in _MAKERS]
    if unknown or not questions:
        raise ValueError(f"questions {tuple(questions)!r}: choose from {', '.join(QUESTION_KINDS)}")
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    needed = max(MAX_SHAPES[q] for q in questions)
    if grid * grid < needed:
        raise ValueError(f"a {grid}x{grid} grid has fewer than the {needed} cells these questions need")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    kinds = _balanced(tuple(questions), n_rows, rng)
    plan = {}  # question kind -> balanced (named shape, answer) pairs, popped row by row
    for q in questions:
        n = kinds.count(q)
        answers = _balanced(tuple(COLORS) if q == "color" else COUNTS, n, rng)
        plan[q] = list(zip(_balanced(SHAPES, n, rng), answers, strict=True))
    lines = []
    for i, question_kind in enumerate(kinds):
        named, answer = plan[question_kind].pop()
        shapes, question = _MAKERS[question_kind](named, answer, rng)
        rng.shuffle(shapes)
        cells = rng.sample(range(grid * grid), len(shapes))
        placed = [(kind, colour, cell) for (kind, colour), cell in zip(shapes, cells, strict=True)]
        name = f"images/{i:05d}.png"
        render_shapes(placed, image_size, grid, rng).save(folder / name)
        row = {
            "messages": [
                {"role": "user", "content": f"<image>{question}"},
                {"role": "assistant", "content": str(answer)},
            ],
            "images": [name],
        }
        lines.append(json.dumps(row))
    # Written whole and renamed, so that a reader never sees half a file.
    path = folder / JSONL_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def normalize_answer(text: str) -> str:
    """'  Red.' -> 'red': strip white space, lower-case, drop trailing punctuation."""
    return text.strip().lower().rstrip(".!?,;:").strip()


def score(predictions: list[str], references: list[str]) -> float:
    """Exact-match accuracy in [0, 1] after `normalize_answer` on both sides."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no references to score against")
    hits = sum(
        normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(references)


def chance_accuracy(questions: list[str], references: list[str]) -> float:
    """Accuracy of the best guesser that sees only the question: each question text's commonest answer."""
    if len(questions) != len(references) or not references:
        raise ValueError(f"{len(questions)} questions for {len(references)} references")
    by_question: dict[str, Counter] = {}
    for q, r in zip(questions, references, strict=True):
        by_question.setdefault(q, Counter())[normalize_answer(r)] += 1
    return sum(c.most_common(1)[0][1] for c in by_question.values()) / len(references)
