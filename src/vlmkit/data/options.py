"""`DatasetOptions`: how infer, eval and the data commands read a dataset's rows (where its media are, which
column is which field, the user turn of datasets without one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmkit.groups import option


@dataclass(frozen=True)
class DatasetOptions:
    """media_root: an extra folder for relative media paths; columns: `FIELD=COLUMN,...` (`parse_columns`);
    prompt: the user turn of column datasets without a question column."""

    media_root: Path | None = option(
        None, "Extra folder to resolve relative media paths against (after the dataset file's folder)."
    )
    columns: str | None = option(
        None,
        "Which dataset column is which field, for columns vlmkit does not recognise by name: e.g. "
        "image=img,query=question,response=answer (fields: image, video, query, response, system, boxes, "
        "labels). `vlmkit data check` shows the mapping it uses.",
    )
    prompt: str | None = option(
        None,
        "User turn for column datasets without a question column (seed 003: 'COCO Yes:'). Default by "
        "schema: OCR 'Transcribe the text in the image.', caption 'Describe the image.', grounding "
        "'Find <ref-object>'.",
    )

    def check(self) -> None:
        self.column_map()

    def column_map(self) -> dict[str, str]:
        """`columns` as {field: column} (one line naming --columns when it does not parse)."""
        from vlmkit.data.columns import parse_columns

        return parse_columns(self.columns)
