"""Sample rollouts of `vlmkit grpo`, so a run can be read by eye as it trains: at every logging step
(--logging-steps) the first `SHOWN` completions of the step's rollouts (the main process's first prompts,
each with its group of --num-generations) go to

    RUN/samples.jsonl   one line per completion: step, where (the row), prompt, completion, each reward
                        component, the weighted reward, the advantage, the solution and its image's file
    RUN/samples/        the row's last image (the one boxes refer to), saved once per row and step, with
                        each shown completion's boxes (labelled #1, #2, ...) and the solution's boxes drawn
                        in original-image pixels (`vlmkit.media.draw`); the image as it is without boxes
    the trackers        a table of the same rows under `train/samples`, their images `train/sample_K`
                        (`vlmkit.eval.trackers.log_prediction_table`)

A few completions and one small PNG per row at each logging step: cheap beside the rollouts themselves.
A resumed run keeps the lines up to its checkpoint's step, as train_log.jsonl does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHOWN = 4  # completions per logging step
IMAGE_SIDE = 768  # the saved images' longest side at most (drawn in original pixels, then scaled)


@dataclass
class Rollout:
    """One completion of a row, as the trainer scored it."""

    row: int  # index of the row in the training data
    completion: str  # decoded with the family's box tokens kept (what the rewards read)
    rewards: dict[str, float]  # reward name -> value, before weighting
    reward: float  # the weighted sum the advantage is computed from
    advantage: float


class SampleLog:
    """Writes the shown rollouts of a logging step (see the module docstring). `prompts`: the run's
    `vlmkit.train.grpo_trainer.Prompts` (rows, solutions, image sizes, template)."""

    def __init__(self, run_dir: Path, prompts):
        self.run_dir, self.prompts = Path(run_dir), prompts
        self.path = self.run_dir / "samples.jsonl"

    def start(self, step: int) -> None:
        """Keep the lines of steps up to `step` (the resumed checkpoint's; 0 for a new run)."""
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, step: int, rollouts: list[Rollout], callbacks: list) -> None:
        from vlmkit.eval.during_training import Example
        from vlmkit.eval.trackers import log_prediction_table

        shown = rollouts[:SHOWN]
        images = {
            row: self._image(step, row, [r for r in shown if r.row == row])
            for row in dict.fromkeys(r.row for r in shown)
        }
        lines, examples = [], []
        for rollout in shown:
            sample, solution = self.prompts.dataset[rollout.row], self.prompts.solutions[rollout.row]
            image = images[rollout.row]
            lines.append({
                "step": step, "where": sample.where, "prompt": sample.text("user"), "completion": rollout.completion,
                "rewards": {name: round(value, 6) for name, value in rollout.rewards.items()},
                "reward": round(rollout.reward, 6), "advantage": round(rollout.advantage, 6),
                "solution": solution, "image": str(image.relative_to(self.run_dir)) if image else None,
            })  # fmt: skip
            scores = ", ".join(f"{name} {value:.3g}" for name, value in rollout.rewards.items())
            examples.append(
                Example(
                    str(image) if image else None,
                    sample.text("user"),
                    f"{rollout.completion}\n[{scores}]",
                    [str(solution)],
                )
            )
        with self.path.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        log_prediction_table(callbacks, step, examples, tag="train/samples")

    def _image(self, step: int, row: int, rollouts: list[Rollout]) -> Path | None:
        """The row's last image with the rollouts' and the solution's boxes drawn, saved once; None without one."""
        from vlmkit.media.draw import draw_boxes
        from vlmkit.media.images import load_image

        sample = self.prompts.dataset[row]
        if not sample.media("image"):
            return None
        image = load_image(sample.media("image")[-1], where=f"{sample.where}: image")
        predicted = [
            {**found, "ref": f"#{k + 1}"}
            for k, rollout in enumerate(rollouts)
            for found in self._boxes(row, rollout.completion)
        ]
        drawn = draw_boxes(image, predicted, self._solution_boxes(row))
        drawn.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
        path = self.run_dir / "samples" / f"step-{step:06d}-row-{row}.png"
        path.parent.mkdir(exist_ok=True)
        drawn.save(path)
        return path

    def _boxes(self, row: int, completion: str) -> list[dict[str, Any]]:
        from vlmkit.media.grounding import parse_reply

        box_format = self.prompts.template.box_format
        return parse_reply(completion, box_format, self.prompts.image_sizes(row)) if box_format else []

    def _solution_boxes(self, row: int) -> list[dict[str, Any]]:
        """The solution's boxes (original pixels) when it is boxes; [] for a number, a letter or a text answer."""
        from vlmkit.train.rewards import solution_boxes

        solution, box_format = self.prompts.solutions[row], self.prompts.template.box_format
        if box_format is None or not isinstance(solution, (str, list, dict)):
            return []
        try:
            boxes = solution_boxes(solution, box_format, self.prompts.image_sizes(row))
        except (TypeError, ValueError):  # a list of answers, not of coordinates
            return []
        return [{"bbox": box} for box in boxes]
