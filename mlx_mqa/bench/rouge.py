"""ROUGE-1/2/L/Lsum F1 through Google's rouge-score, with bootstrap confidence intervals. ROUGE-Lsum reads
sentences from newline-separated text: predictions and references are split first, with nltk's punkt model when
its data is installed, else with a regular expression (no download is attempted)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before whitespace and
# an upper-case letter, a digit or an opening quote/bracket; not after a common title or a single initial
# ("Mr. Smith", "J. K. Rowling", "U.S. officials" stay whole).
_TITLES = "Mr Mrs Ms Dr St Jr Sr Prof Gen Rep Sen Gov Lt Col Sgt Capt No vs [A-Z]".split()
_NOT_AFTER = "".join(f"(?<!\\b{a}\\.)" for a in _TITLES)
_SENTENCE_END = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))" + _NOT_AFTER + r"\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])"
)


@lru_cache(maxsize=1)
def _punkt():
    """nltk's sent_tokenize if nltk and its punkt data are installed, else None."""
    try:
        import nltk

        for resource in ("tokenizers/punkt_tab", "tokenizers/punkt"):
            try:
                nltk.data.find(resource)
            except LookupError:
                continue
            nltk.sent_tokenize("A test. Another one.")  # raises if the data is unusable
            return nltk.sent_tokenize
    except Exception:
        return None
    return None


def sentence_splitter() -> str:
    """Which splitter `split_sentences` uses here: 'nltk-punkt' or 'regex'."""
    return "nltk-punkt" if _punkt() is not None else "regex"


def regex_sentences(text: str) -> List[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def split_sentences(text: str) -> List[str]:
    """Sentences of `text`; existing line breaks are kept as sentence boundaries."""
    punkt = _punkt()
    out: List[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if line:
            out.extend(s.strip() for s in (punkt(line) if punkt else regex_sentences(line)) if s.strip())
    return out


def lsum_text(text: str) -> str:
    return "\n".join(split_sentences(text))


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=use_stemmer)


def rouge_per_example(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True
) -> Dict[str, np.ndarray]:
    """F1 in [0, 1] of every metric for every (prediction, reference) pair."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = _scorer(use_stemmer)
    out = {m: np.zeros(len(predictions)) for m in METRICS}
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        scores = scorer.score(lsum_text(ref), lsum_text(pred))  # (target, prediction)
        for m in METRICS:
            out[m][i] = scores[m].fmeasure
    return out


def bootstrap_ci(values, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))
    means = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def score(
    predictions: Sequence[str],
    references: Sequence[str],
    use_stemmer: bool = True,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, np.ndarray]]:
    """(per metric: mean F1 and its bootstrap interval, {mean, low, high} in percent as the paper gives them;
    per metric: every example's F1)."""
    per = rouge_per_example(predictions, references, use_stemmer)
    out = {}
    for m, v in per.items():
        lo, hi = bootstrap_ci(v, n_resamples, confidence, seed)
        out[m] = {"mean": 100.0 * float(np.mean(v)) if len(v) else float("nan"), "low": 100.0 * lo, "high": 100.0 * hi}
    return out, per


def mean_rouge(summary: Dict[str, Dict[str, float]]) -> float:
    """Average of ROUGE-1, -2 and -L (the single 'performance' number plotted against time)."""
    return float(np.mean([summary[m]["mean"] for m in ("rouge1", "rouge2", "rougeL")]))
