"""The side-by-side table (terminal and Markdown) and `report.md` of `vlmkit eval`.

The report shows the table, then for each model its best and worst rows by the first metric: the image
(boxes drawn for grounding: the reference in green, the prediction in red), the question, the reply and
the references.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmkit.eval.metrics import BOX_METRICS
from vlmkit.eval.run import Result, file_stem

SHOWN_ROWS = 3  # best and worst rows per model in the report
REFERENCE_COLOUR, PREDICTED_COLOUR = (0, 170, 0), (230, 0, 0)


def _cell(score: dict[str, Any]) -> str:
    value, (low, high) = score["value"], score["ci95"]
    if value is None:  # no row could be scored
        return "-"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def table_rows(results: list[Result], names: list[str]) -> list[list[str]]:
    """Header and one line per metric (value [95% CI]) plus rows / failed / unparsed."""
    lines = [["metric", *(r.label for r in results)]]
    for name in names:
        arrow = " (lower is better)" if results and results[0].scores[name]["lower_is_better"] else ""
        lines.append([name + arrow, *(_cell(r.scores[name]) for r in results)])
    lines.append(["rows", *(str(r.rows) for r in results)])
    lines.append(["failed", *(str(r.failed) for r in results)])
    lines.append(["unparsed", *(str(max(s["unparsed"] for s in r.scores.values())) for r in results)])
    return lines


def text_table(results: list[Result], names: list[str]) -> str:
    lines = table_rows(results, names)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def markdown_table(results: list[Result], names: list[str]) -> str:
    lines = table_rows(results, names)
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    return "\n".join(out)


def _picture(image: Any, line: dict, out_dir: Path, stem: str) -> str | None:
    """Save the row's image (boxes drawn) under out_dir/images; its path relative to out_dir, or None."""
    from PIL import ImageDraw

    from vlmkit.errors import VlmkitError
    from vlmkit.media.images import load_image

    if image is None:
        return None
    try:
        picture = load_image(image, where=stem)
    except (VlmkitError, OSError):
        return None
    boxes = [{"ref": "reference", "bbox": b} for b in line.get("reference_boxes") or []]
    boxes += [
        {"ref": "predicted", "bbox": o["bbox"]} for o in line.get("objects") or [] if isinstance(o, dict)
    ]
    if boxes:
        picture = picture.convert("RGB")  # a copy, drawn on
        draw = ImageDraw.Draw(picture)
        for box in boxes:
            colour = REFERENCE_COLOUR if box["ref"] == "reference" else PREDICTED_COLOUR
            draw.rectangle(box["bbox"], outline=colour, width=max(2, round(min(picture.size) / 150)))
    picture.thumbnail((384, 384))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    path = out_dir / "images" / f"{stem}.png"
    picture.save(path)
    return f"images/{path.name}"


def _row_block(
    line: dict, number: int, metric: str, image: Any, question: str, out_dir: Path, stem: str
) -> str:
    picture = _picture(image, line, out_dir, f"{stem}_row{number:05d}")
    references = line.get("references") or ([line["labels"]] if "labels" in line else [])
    if line.get("reference_boxes"):  # grounding: the boxes, not the "<bbox>" placeholder
        references = line["reference_boxes"]
    parts = [f"**row {number}** · {metric} = {line['scores'][metric]:.3f}", ""]
    if picture:
        parts += [f"![row {number}]({picture})", ""]
    if line.get("reference_boxes"):
        parts += ["green: reference box, red: predicted box", ""]
    parts += [f"- question: {json.dumps(question, ensure_ascii=False)}"]
    parts += [f"- prediction: {json.dumps(line.get('response'), ensure_ascii=False)}"]
    parts += [f"- references: {json.dumps(references[:5], ensure_ascii=False)}", ""]
    return "\n".join(parts)


def write_report(
    out_dir: Path,
    dataset: str,
    results: list[Result],
    names: list[str],
    reason: str,
    images: dict[str, list[Any]],
    questions: dict[str, list[str]],
) -> Path:
    """Write out_dir/report.md; `images` and `questions`: per result label, one entry per prediction line."""
    text = [
        f"# vlmkit eval: {dataset}",
        "",
        f"Metrics: {', '.join(names)} ({reason}). 95% bootstrap intervals in brackets.",
        "",
    ]
    text += [markdown_table(results, names), ""]
    # rows answered with boxes and with text are ranked apart, each by the first metric that scores them
    leads = [names[0], *[n for n in names if (n in BOX_METRICS) != (names[0] in BOX_METRICS)][:1]]
    for result in results:
        lines = [
            json.loads(x) for x in result.predictions.read_text(encoding="utf-8").splitlines() if x.strip()
        ]
        text += [f"## {result.label}", "", f"Predictions: `{result.predictions.name}`.", ""]
        if result.failures:
            text += [f"{result.failed} failed row(s), first: " + "; ".join(result.failures), ""]
        for metric in leads:
            text += _ranked_rows(result, lines, metric, images, questions, out_dir, len(leads) > 1)
    path = out_dir / "report.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def _ranked_rows(result, lines, metric, images, questions, out_dir, name_metric: bool) -> list[str]:
    """The best and worst rows of `result` by `metric`, as Markdown blocks."""
    text: list[str] = []
    scored = [(i, line) for i, line in enumerate(lines) if metric in line.get("scores", {})]
    lower = result.scores[metric]["lower_is_better"]
    scored.sort(key=lambda item: item[1]["scores"][metric], reverse=not lower)
    shown = min(SHOWN_ROWS, (len(scored) + 1) // 2)  # few rows: split between best and worst
    best, worst = scored[:shown], scored[shown:][-SHOWN_ROWS:][::-1]
    for title, chosen in (("Best rows", best), ("Worst rows", worst)):
        if not chosen:
            continue
        text += [f"### {title}" + (f" by {metric}" if name_metric else ""), ""]
        for i, line in chosen:
            image = images.get(result.label, [None] * len(lines))[i]
            question = questions.get(result.label, [""] * len(lines))[i]
            text.append(
                _row_block(line, i + 1, metric, image, question, out_dir, file_stem(result.label))
            )
    return text
