"""Verifiable rewards for `vlmkit grpo`: plain functions, one float per completion.

    reward(completions: list[str], solutions: list, **row) -> list[float]

`completions` are the decoded replies (grounding tokens kept), `solutions` the rows' `solution` column,
`row` the other columns, one list entry per completion. The box rewards also read `image_sizes` (per
completion, the prompt's `[((orig_h, orig_w), (model_h, model_w)), ...]`, from the family template's resize)
and `box_format` (the family's `BoxFormat`), both filled in by the trainer. A reward that cannot read a
reply gives it 0 and counts it: `log_metric("rewards/NAME/unparsed", count)` when the caller passes
`log_metric` (TRL does).

    accuracy     the answer (inside <answer>...</answer> when there is one, else the whole reply) against
                 the solution: the option letter when the solution is one letter A-J; numbers within
                 NUMBER_TOLERANCE (relative, at least absolute 1e-6) when both read as numbers; else the
                 exact text after normalising (case, whitespace, a final period)
    count        the first whole number of the answer (digits or a word zero..ten) == the solution
    iou          IoU of the reply's first box with the solution's best-matching box, in pixels of the
                 ORIGINAL image (the family's box text is mapped back through its resize, so the resolution
                 setting never changes the reward)
    iou@0.5      1 when iou >= 0.5, else 0
    format       1 when the reply is `<think>...</think><answer>...</answer>` (spaces around allowed)
    box_format   1 when the reply holds at least one box in the family's own box syntax
    length       0 up to LENGTH_FREE words, then falling linearly to -1 at LENGTH_LIMIT words (DAPO's
                 overlong penalty, counted in words so it does not depend on the tokenizer)
    repetition   minus the share of repeated word 3-grams: 0 for no repeat, towards -1 for a loop

Solutions: text, a number, a choice letter, or boxes: `[x1, y1, x2, y2]` or a list of them in pixels of
the original image, `{"bbox": ..., "bbox_type": "real" | "norm1"}`, or a string in the family's own box text
(Qwen2-VL's `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` on 0-1000, Qwen2.5-VL's `{"bbox_2d": [...]}` in
resized pixels, ...), mapped exactly as a reply is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from vlmkit.eval.metrics import box_iou, choice_letter, normalize_text
from vlmkit.media.grounding import parse_objects, parse_reply

Reward = Callable[..., list[float]]
Box = list[float]

NUMBER_TOLERANCE = 0.01  # relative: 99.5 for 100 is right, 98 is not
LENGTH_FREE, LENGTH_LIMIT = 80, 120  # words
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_FORMAT_RE = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.S)
_NUMBER_RE = re.compile(r"-?\d+(?:[.,]\d+)*%?")
_LETTER_RE = re.compile(r"\s*\(?([A-Ja-j])\)?\s*")
_COUNT_WORDS = {w: n for n, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_WORD_RE = re.compile(r"[A-Za-z]+|-?\d+")


def answer_of(completion: str) -> str:
    """The text inside `<answer>...</answer>` when the reply has it, else the whole reply."""
    found = _ANSWER_RE.search(completion)
    return (found[1] if found else completion).strip()


def as_number(text: Any) -> float | None:
    """'1,234' -> 1234.0, '12.5%' -> 0.125, 3 -> 3.0; None when `text` is not one number."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text).strip().rstrip(".")
    if not re.fullmatch(r"-?\d+(?:,\d{3})*(?:\.\d+)?%?|-?\.\d+", text):
        return None
    value = float(text.rstrip("%").replace(",", ""))
    return value / 100 if text.endswith("%") else value


def _count_unparsed(row: dict, name: str, unparsed: int) -> None:
    if row.get("log_metric") is not None:
        row["log_metric"](f"rewards/{name}/unparsed", float(unparsed))


# -- answers ----------------------------------------------------------------------------------------


def _answer_right(answer: str, solution: Any) -> bool:
    solution_text = str(solution).strip()
    letter = _LETTER_RE.fullmatch(solution_text)
    if letter:  # multiple choice: the letter the reply picks
        return choice_letter(answer) == letter[1].upper()
    wanted, given = as_number(solution), as_number(answer)
    if wanted is not None and given is not None:
        return abs(given - wanted) <= max(NUMBER_TOLERANCE * abs(wanted), 1e-6)
    return normalize_text(answer) == normalize_text(solution_text)


def accuracy(completions: Sequence[str], solutions: Sequence[Any], **row) -> list[float]:
    """1 for a right answer (letter, number within tolerance, or normalised text), else 0."""
    return [float(_answer_right(answer_of(c), s)) for c, s in zip(completions, solutions, strict=True)]


def count_in(answer: str) -> int | None:
    """The first whole number of an answer: '3', 'There are 3 circles', 'three' -> 3."""
    for word in _WORD_RE.findall(answer.lower()):
        if word.lstrip("-").isdigit():
            return int(word)
        if word in _COUNT_WORDS:
            return _COUNT_WORDS[word]
    return None


def count(completions: Sequence[str], solutions: Sequence[Any], **row) -> list[float]:
    """1 when the answer's first whole number equals the solution; an answer without one is unparsed."""
    out, unparsed = [], 0
    for completion, solution in zip(completions, solutions, strict=True):
        given = count_in(answer_of(completion))
        unparsed += given is None
        out.append(float(given is not None and given == int(as_number(solution) or count_in(str(solution)) or 0)))
    _count_unparsed(row, "count", unparsed)
    return out


# -- boxes ------------------------------------------------------------------------------------------


def solution_boxes(solution: Any, box_format, sizes) -> list[Box]:
    """A solution's boxes in pixels of the original image (see the module docstring for the forms)."""
    if isinstance(solution, str):
        return [found["bbox"] for found in parse_reply(solution, box_format, sizes)]
    if isinstance(solution, dict):
        objects = parse_objects(solution, "solution")
        original = sizes[-1][0] if sizes else None
        boxes = [box for group in objects.boxes for box in group] if objects else []
        if objects and objects.bbox_type == "norm1":
            (h, w) = original
            boxes = [[b[0] * w, b[1] * h, b[2] * w, b[3] * h] for b in boxes]
        return boxes
    if solution and all(isinstance(v, (int, float)) for v in solution):
        return [[float(v) for v in solution]]
    return [[float(v) for v in box] for box in solution or []]


def _ious(completions, solutions, row) -> tuple[list[float], int]:
    box_format, sizes = row.get("box_format"), row.get("image_sizes")
    if box_format is None or sizes is None:
        raise ValueError("the iou rewards need box_format and image_sizes (the trainer passes them)")
    out, unparsed = [], 0
    for completion, solution, size in zip(completions, solutions, sizes, strict=True):
        predicted = parse_reply(completion, box_format, size)
        if not predicted:
            unparsed += 1
            out.append(0.0)
            continue
        wanted = solution_boxes(solution, box_format, size)
        out.append(max((box_iou(predicted[0]["bbox"], box) for box in wanted), default=0.0))
    return out, unparsed


def iou(completions: Sequence[str], solutions: Sequence[Any], **row) -> list[float]:
    """IoU (0-1) of the reply's first box with the best-matching solution box, original-image pixels."""
    values, unparsed = _ious(completions, solutions, row)
    _count_unparsed(row, "iou", unparsed)
    return values


def iou_at_50(completions: Sequence[str], solutions: Sequence[Any], **row) -> list[float]:
    """1 when `iou` >= 0.5, else 0."""
    values, unparsed = _ious(completions, solutions, row)
    _count_unparsed(row, "iou@0.5", unparsed)
    return [float(v >= 0.5) for v in values]


# -- form -------------------------------------------------------------------------------------------


def think_answer_format(completions: Sequence[str], solutions: Sequence[Any] = (), **row) -> list[float]:
    """1 for `<think>...</think><answer>...</answer>`, else 0."""
    return [float(_FORMAT_RE.fullmatch(c) is not None) for c in completions]


def box_format(completions: Sequence[str], solutions: Sequence[Any] = (), **row) -> list[float]:
    """1 when the reply holds a box in the family's own syntax (`row["box_format"]`), else 0."""
    family_format = row.get("box_format")
    if family_format is None:
        raise ValueError("the box_format reward needs the family's box_format (the trainer passes it)")
    return [float(bool(family_format.parse(c))) for c in completions]


def length(completions: Sequence[str], solutions: Sequence[Any] = (), **row) -> list[float]:
    """0 up to LENGTH_FREE words, then linearly down to -1 at LENGTH_LIMIT words and beyond."""
    words = [len(c.split()) for c in completions]
    return [-min(1.0, max(0, n - LENGTH_FREE) / (LENGTH_LIMIT - LENGTH_FREE)) for n in words]


def repetition(completions: Sequence[str], solutions: Sequence[Any] = (), **row) -> list[float]:
    """Minus the share of word 3-grams that repeat an earlier one (0 when there are none)."""
    out = []
    for completion in completions:
        words = completion.split()
        grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
        out.append(-(len(grams) - len(set(grams))) / len(grams) if grams else 0.0)
    return out


REWARDS: dict[str, Reward] = {
    "accuracy": accuracy,
    "count": count,
    "iou": iou,
    "iou@0.5": iou_at_50,
    "format": think_answer_format,
    "box_format": box_format,
    "length": length,
    "repetition": repetition,
}
NEEDS_BOXES = {"iou", "iou@0.5", "box_format"}


def check_rewards(values: Sequence[float], name: str) -> list[float]:
    """A reward's output checked: floats, finite."""
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"reward {name} returned a value that is not a finite number: {out}")
    return out


# -- --reward -------------------------------------------------------------------------------------------


def parse_reward_spec(text: str) -> list[tuple[str, Reward, float]]:
    """`--reward` -> [(name, function, weight)]. Comma-separated entries, each a known name
    (`iou`, `format`, ...), or a function of the user's `module:function` / `file.py:function`, each with
    an optional `:WEIGHT` (default 1.0): `iou:1.0,format:0.2`, `mymodule:my_reward:0.5`."""
    from vlmkit.errors import VlmkitError

    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise VlmkitError(f"--reward: no reward given; known: {', '.join(REWARDS)} (or module:function)")
    out = []
    for entry in entries:
        name, weight = entry, 1.0
        head, _, tail = entry.rpartition(":")
        if head and _is_number(tail):
            name, weight = head, float(tail)
        if name in REWARDS:
            out.append((name, REWARDS[name], weight))
        elif ":" in name:
            out.append((name.rpartition(":")[2], load_user_reward(name), weight))
        else:
            raise VlmkitError(
                f"--reward {entry}: unknown reward {name!r}; known: {', '.join(REWARDS)}, "
                "or your own as module:function or file.py:function"
            )
    names = [name for name, _, _ in out]
    if len(set(names)) != len(names):
        raise VlmkitError(f"--reward {text}: a reward is named twice ({', '.join(names)}); give each once")
    return out


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def load_user_reward(spec: str) -> Reward:
    """`module:function` (importable, or found in the current folder) or `path/file.py:function` -> the
    function; one line naming the spec when it cannot be found."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from vlmkit.errors import VlmkitError

    where, _, function = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise VlmkitError(f"--reward {spec}: no file {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # `vlmkit` (the console script) does not add it itself
            module = importlib.import_module(where)
    except ImportError as e:
        raise VlmkitError(f"--reward {spec}: cannot import {where} ({e})") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise VlmkitError(f"--reward {spec}: {where} has no function {function!r}")
    return found
