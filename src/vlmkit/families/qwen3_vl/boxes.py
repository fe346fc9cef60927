"""Qwen3-VL grounding text: Qwen2.5-VL's JSON `{"bbox_2d": [...], "label": REF}`, on a 0-1000 grid."""

from vlmkit.families.qwen2_5_vl.boxes import parse, write_boxes, write_ref
from vlmkit.media.grounding import BoxFormat

BOX_FORMAT = BoxFormat(
    space="norm1000", write_ref=write_ref, write_boxes=write_boxes, parse=parse, label_in_box=True
)
