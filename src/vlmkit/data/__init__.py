"""Dataset reading: any supported file -> a `Dataset` of rows that become `vlmkit.sample.Sample`s.

    from vlmkit.data import load_dataset
    ds = load_dataset("train.jsonl#1000", media_root="/data/coco")
    ds.format, len(ds), ds.bad     # "sharegpt", 1000, [(where, reason), ...]
    sample = ds[0]                 # converted on access; DataError names file:line

    ds = load_dataset("hf::linxy/LaTeX_OCR:full@train#200")   # or x.parquet, x.csv, a folder
    ds.schemas                     # {"hf::linxy/LaTeX_OCR": "ocr schema (image=image, response=text); ..."}

Formats and their conversion are in `vlmkit.data.formats`; files, sampling and
splitting in `vlmkit.data.readers`; Parquet, Arrow, CSV, folders and hub ids in
`vlmkit.data.sources`; column schemas (image + text/caption/answers/boxes) in
`vlmkit.data.columns`; media as dataset values (Image dicts, bytes, base64) in
`vlmkit.data.values`.
"""

from vlmkit.data.formats import FORMAT_KEYS, detect_format, row_to_sample
from vlmkit.data.readers import (
    Dataset,
    Row,
    load_dataset,
    load_datasets,
    parse_spec,
    read_rows,
    sample_indices,
    split_dataset,
)

__all__ = [
    "FORMAT_KEYS",
    "Dataset",
    "Row",
    "detect_format",
    "load_dataset",
    "load_datasets",
    "parse_spec",
    "read_rows",
    "row_to_sample",
    "sample_indices",
    "split_dataset",
]
