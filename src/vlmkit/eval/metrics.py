"""Task metrics for `vlmkit eval`, each one row at a time, aggregated over a dataset.

A metric scores one row (`Row`: the model's reply, the reference answers, and for grounding the
predicted and reference boxes) and returns a `Score`: `value` for that row (shown per row and used to
rank best/worst rows) and `stats`, the numbers the dataset aggregate is made of. Aggregates are a mean
of rows (`stats = [value]`), or a ratio of sums for corpus metrics (CER: edits / reference characters),
or BLEU's corpus formula; the same stats give a seeded bootstrap confidence interval.

Definitions (each tested against its reference on fixed inputs in tests/integration/test_eval.py):

    exact_match     normalised reply == any reference (case, surrounding/inner whitespace, a final period)
    vqa_accuracy    VQAv2's official answer normalisation (punctuation, digits, articles, contractions) and
                    accuracy: the mean over the leave-one-out subsets of the references of
                    min(#matches / 3, 1); with one reference, 1 when it matches. Defined for VQAv2's and
                    TextVQA's ten answers: with two references a right answer scores at most 1/3
    anls            DocVQA's ANLS: max over references of 1 - normalised Levenshtein, 0 when >= 0.5
    relaxed_accuracy ChartQA: numbers within 5% of the reference (a trailing % read as /100), text exact
    cer, wer        character / word error rate of the closest reference (jiwer), summed over the corpus
    ned             normalised edit distance (Levenshtein / length of the longer string), mean of rows
    bleu4           sacrebleu's corpus BLEU (13a tokens, several references), as a fraction 0-1
    rouge_l         pycocoevalcap's ROUGE-L: LCS precision and recall, max over references, F with beta 1.2
    cider           pycocoevalcap's CIDEr-D (`cider_d`; idf from the references of all rows, so a corpus metric)
    iou, iou@0.5    IoU of the reply's first box with the reference box (pixels of the original image; no
                    box in the reply is IoU 0 and counted unparsed), and the share of rows with IoU >= 0.5.
                    They score the rows answered with boxes, the other metrics the rows answered with text
                    (`scores_row`)
    choice          multiple choice: the letter the reply picks (see `choice_letter`) == the reference letter

Lower is better for cer, wer and ned; `LOWER_IS_BETTER` lists them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlmkit.errors import VlmkitError

Box = list[float]


@dataclass
class Row:
    """One scored row: the reply, its references (several allowed), and boxes for grounding."""

    prediction: str
    references: list[str]
    predicted_boxes: list[Box] = field(default_factory=list)
    reference_boxes: list[Box] = field(default_factory=list)


@dataclass
class Score:
    """A row's `value`, the `stats` its aggregate sums, and whether the reply could be read at all."""

    value: float
    stats: list[float]
    parsed: bool = True


# -- text normalisation -----------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Case-folded, whitespace collapsed, a final period dropped (exact match)."""
    return " ".join(text.casefold().split()).rstrip(".").strip()


# VQAv2 evaluation (vqaEval.py): contractions written without an apostrophe get it back, number words
# become digits, articles go, punctuation is removed (or a space, see `_vqa_punctuation`).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "its": "it's",
    "lets": "let's", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "shant": "shan't", "shed": "she'd", "shes": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "wed": "we'd",
    "weve": "we've", "werent": "weren't", "whats": "what's", "whered": "where'd", "wheres": "where's",
    "whos": "who's", "whove": "who've", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _vqa_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        # a mark next to a space (or a thousands comma anywhere) goes; inside a word it becomes a space
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_vqa(text: str) -> str:
    """An answer as VQAv2's evaluation compares it."""
    text = _vqa_punctuation(text.replace("\n", " ").replace("\t", " ").strip().lower())
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


# -- per-row metrics --------------------------------------------------------------------------------


def exact_match(row: Row) -> Score:
    prediction = normalize_text(row.prediction)
    value = float(any(prediction == normalize_text(r) for r in row.references))
    return Score(value, [value])


def vqa_accuracy(row: Row) -> Score:
    prediction = normalize_vqa(row.prediction)
    references = [normalize_vqa(r) for r in row.references]
    if len(references) == 1:
        value = float(prediction == references[0])
    else:
        subsets = [references[:i] + references[i + 1 :] for i in range(len(references))]
        value = float(np.mean([min(sum(prediction == r for r in s) / 3, 1.0) for s in subsets]))
    return Score(value, [value])


def anls(row: Row, threshold: float = 0.5) -> Score:
    from rapidfuzz.distance import Levenshtein

    prediction = " ".join(row.prediction.strip().lower().split())
    best = 0.0
    for reference in row.references:
        distance = Levenshtein.normalized_distance(prediction, " ".join(reference.strip().lower().split()))
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return Score(best, [best])


def _as_number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(row: Row, tolerance: float = 0.05) -> Score:
    prediction = row.prediction.strip().rstrip(".")
    value = 0.0
    for reference in row.references:
        p, r = _as_number(prediction), _as_number(reference)
        if p is not None and r:  # a reference of 0 is compared as text, as ChartQA's evaluation does
            hit = abs(p - r) / abs(r) <= tolerance
        else:
            hit = prediction.lower() == reference.strip().lower()
        value = max(value, float(hit))
    return Score(value, [value])


def _closest_edits(row: Row, unit: str) -> tuple[int, int]:
    """(edits, reference length) against the reference with the fewest edits, in characters or words."""
    import jiwer

    best: tuple[int, int] | None = None
    for reference in row.references or [""]:
        if unit == "char":
            from rapidfuzz.distance import Levenshtein

            edits, length = Levenshtein.distance(row.prediction, reference), len(reference)
        elif not reference.split():
            edits, length = len(row.prediction.split()), 0
        elif not row.prediction.split():
            edits, length = len(reference.split()), len(reference.split())
        else:
            out = jiwer.process_words(reference, row.prediction)
            edits, length = out.substitutions + out.deletions + out.insertions, len(reference.split())
        if best is None or edits < best[0]:
            best = (edits, length)
    return best


def cer(row: Row) -> Score:
    edits, length = _closest_edits(row, "char")
    return Score(edits / max(length, 1), [edits, length])


def wer(row: Row) -> Score:
    edits, length = _closest_edits(row, "word")
    return Score(edits / max(length, 1), [edits, length])


def ned(row: Row) -> Score:
    from rapidfuzz.distance import Levenshtein

    value = min(Levenshtein.normalized_distance(row.prediction, r) for r in row.references or [""])
    return Score(value, [value])


def bleu4(row: Row) -> Score:
    """The row's sentence BLEU (for ranking) and its n-gram counts (summed into corpus BLEU)."""
    from sacrebleu.metrics import BLEU

    score = BLEU(effective_order=True).sentence_score(row.prediction, row.references)
    return Score(score.score / 100, [score.sys_len, score.ref_len, *score.counts, *score.totals])


def _corpus_bleu(stats: np.ndarray) -> float:
    from sacrebleu.metrics import BLEU

    sys_len, ref_len, counts, totals = stats[0], stats[1], stats[2:6], stats[6:10]
    counts, totals = [int(c) for c in counts], [int(t) for t in totals]
    return (
        BLEU.compute_bleu(counts, totals, int(sys_len), int(ref_len), smooth_method="exp").score / 100
    )  # sacrebleu default


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(row: Row, beta: float = 1.2) -> Score:
    candidate = _tokens(row.prediction)
    precisions, recalls = [], []
    for reference in row.references:
        tokens = _tokens(reference)
        common = _lcs(candidate, tokens)
        precisions.append(common / len(candidate) if candidate else 0.0)
        recalls.append(common / len(tokens) if tokens else 0.0)
    p, r = max(precisions, default=0.0), max(recalls, default=0.0)
    value = (1 + beta**2) * p * r / (r + beta**2 * p) if p and r else 0.0
    return Score(value, [value])


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def cider_d(rows: list[Row], sigma: float = 6.0) -> list[Score]:
    """CIDEr-D of each row, as pycocoevalcap's `Cider` computes it (a corpus metric: the idf of each n-gram
    comes from all rows' references). Per n = 1..4: tf-idf vectors, the reply's clipped to each reference's,
    cosine, times exp(-delta^2 / (2 sigma^2)) where delta is the difference in length as pycocoevalcap
    measures it (its number of bigrams); the mean over n and over references, times 10. Text is tokenized
    by `_tokens` (lowercase words, punctuation dropped), close to the PTB tokenizer pycocoevalcap runs first."""
    texts = [([_tokens(r) for r in row.references], _tokens(row.prediction)) for row in rows]
    document_frequency: Counter = Counter()
    for references, _ in texts:
        document_frequency.update({g for ref in references for n in range(1, 5) for g in _ngrams(ref, n)})
    log_rows = np.log(float(len(rows))) if rows else 0.0

    def vectors(tokens: list[str]) -> tuple[list[dict], list[float], int]:
        idf = {
            g: log_rows - np.log(max(1.0, document_frequency[g]))
            for n in range(1, 5)
            for g in _ngrams(tokens, n)
        }
        vecs = [{g: c * idf[g] for g, c in _ngrams(tokens, n).items()} for n in range(1, 5)]
        return (
            vecs,
            [float(np.sqrt(sum(v * v for v in vec.values()))) for vec in vecs],
            max(len(tokens) - 1, 0),
        )

    scores = []
    for references, prediction in texts:
        vec, norm, length = vectors(prediction)
        total = np.zeros(4)
        for reference in references:
            ref_vec, ref_norm, ref_length = vectors(reference)
            penalty = np.exp(-((length - ref_length) ** 2) / (2 * sigma**2))
            for n in range(4):
                dot = sum(min(v, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, v in vec[n].items())
                cosine = dot / (norm[n] * ref_norm[n]) if norm[n] and ref_norm[n] else dot
                total[n] += cosine * penalty
        value = float(total.mean() / max(len(references), 1) * 10.0)
        scores.append(Score(value, [value]))
    return scores


def box_iou(a: Box, b: Box) -> float:
    """IoU of two [x1, y1, x2, y2] boxes in the same pixels; boxes are not clipped to the image."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou(row: Row) -> Score:
    if not row.predicted_boxes or not row.reference_boxes:
        return Score(0.0, [0.0], parsed=bool(row.predicted_boxes))
    value = box_iou(row.predicted_boxes[0], row.reference_boxes[0])
    return Score(value, [value])


def iou_at_50(row: Row) -> Score:
    score = iou(row)
    value = float(score.value >= 0.5)
    return Score(value, [value], parsed=score.parsed)


_CHOICE_PATTERNS = [
    re.compile(r"(?i:answer)\s*(?:is|:)?\s*:?\s*\(?([A-J])\b"),  # "The answer is (B)", "Answer: C"
    re.compile(r"^\s*\(?([A-J])\s*(?:[).:]|$)"),  # "B", "(B) ...", "B. ...", "C: ..." (not "I think")
    re.compile(r"\(([A-J])\)"),  # "... I pick (D)"
    re.compile(r"\b(?:option|choice)\s+([A-J])\b", re.I),
]


def choice_letter(text: str) -> str | None:
    """The option letter (A-J) a reply picks: 'B', '(B)', 'B. cat', 'Answer: B', 'The answer is (B).'"""
    for pattern in _CHOICE_PATTERNS:
        found = pattern.search(text.strip())
        if found:
            return found.group(1).upper()
    return None


def choice(row: Row) -> Score:
    letter = choice_letter(row.prediction)
    references = {(choice_letter(r) or r.strip()).upper() for r in row.references}
    value = float(letter is not None and letter in references)
    return Score(value, [value], parsed=letter is not None)


METRICS: dict[str, Callable[[Row], Score]] = {
    "exact_match": exact_match,
    "vqa_accuracy": vqa_accuracy,
    "anls": anls,
    "relaxed_accuracy": relaxed_accuracy,
    "cer": cer,
    "wer": wer,
    "ned": ned,
    "bleu4": bleu4,
    "rouge_l": rouge_l,
    "iou": iou,
    "iou@0.5": iou_at_50,
    "choice": choice,
}
# Metrics whose row values depend on all rows (CIDEr's idf): a function of the list of rows.
CORPUS_METRICS: dict[str, Callable[[list[Row]], list[Score]]] = {"cider": cider_d}
LOWER_IS_BETTER = {"cer", "wer", "ned"}
BOX_METRICS = {"iou", "iou@0.5"}
_RATIO_OF_SUMS = {"cer", "wer"}


def scores_row(name: str, row: Row) -> bool:
    """Whether metric `name` scores `row`: box metrics the rows whose answer is boxes, text metrics the
    others (a reverse-grounding row's answer is a caption, not the box in its question)."""
    return (name in BOX_METRICS) == bool(row.reference_boxes)


def aggregate(name: str, stats: np.ndarray) -> float:
    """The dataset value of metric `name` from its rows' stats (rows x stats)."""
    if len(stats) == 0:
        return float("nan")
    if name == "bleu4":
        return _corpus_bleu(stats.sum(axis=0))
    if name in _RATIO_OF_SUMS:
        return float(stats[:, 0].sum() / max(stats[:, 1].sum(), 1))
    return float(stats[:, 0].mean())


def bootstrap_interval(
    name: str, stats: np.ndarray, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of `aggregate(name, stats)`, resampling rows (seeded)."""
    if len(stats) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(stats), size=(resamples, len(stats)))
    values = [aggregate(name, stats[p]) for p in picks]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def metric_names(text: str, option: str = "--metric") -> list[str]:
    """`cer,wer` -> ["cer", "wer"]; VlmkitError naming `option` for an unknown name."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = [*METRICS, *CORPUS_METRICS]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise VlmkitError(
            f"{option}: unknown metric {', '.join(unknown) or repr(text)}; choose from auto, {', '.join(known)}"
        )
    return names
