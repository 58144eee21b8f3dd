"""The ROUGE wrapper against rouge-score itself, sentence splitting for ROUGE-Lsum, bootstrap intervals."""

import numpy as np
import pytest
from rouge_score import rouge_scorer

from mlx_mqa.bench import rouge
from mlx_mqa.bench.rouge import METRICS, bootstrap_ci, regex_sentences, rouge_per_example, score


def test_known_value():
    # 5 of 6 unigrams shared both ways: F1 = 5/6; bigrams: "the cat", "on the", "the mat" of 5: 3/5.
    per = rouge_per_example(["the cat sat on the mat"], ["the cat is on the mat"])
    assert per["rouge1"][0] == pytest.approx(5 / 6)
    assert per["rouge2"][0] == pytest.approx(3 / 5)
    assert per["rougeL"][0] == pytest.approx(5 / 6)


def test_matches_rouge_score_with_stemming_and_lsum():
    preds = [
        "Police arrested two men. They were charged with burglary on Monday.",
        "The company reported rising profits! Shares jumped 5% in early trading.",
        "Nothing relevant here.",
    ]
    refs = [
        "Two men were arrested by police.\nThey are charged with burglaries.",
        "Profits rose at the company. Its shares jumped in trading.",
        "A storm hit the coast.\nThousands lost power.",
    ]
    # What the wrapper must amount to: one sentence per line (for Lsum), stemming on, (target, prediction).
    split_preds = [
        "Police arrested two men.\nThey were charged with burglary on Monday.",
        "The company reported rising profits!\nShares jumped 5% in early trading.",
        "Nothing relevant here.",
    ]
    split_refs = [refs[0], "Profits rose at the company.\nIts shares jumped in trading.", refs[2]]
    ours = rouge_per_example(preds, refs)
    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    for i, (p, r) in enumerate(zip(split_preds, split_refs)):
        expect = scorer.score(r, p)
        for m in METRICS:
            assert ours[m][i] == pytest.approx(expect[m].fmeasure), (i, m)
    # Stemming counts: "arrested"/"arrest", "burglary"/"burglaries" match only with the stemmer.
    plain = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False).score(refs[0], preds[0])["rouge1"].fmeasure
    assert ours["rouge1"][0] > plain
    assert rouge_per_example(preds, refs, use_stemmer=False)["rouge1"][0] == pytest.approx(plain)


def test_lsum_uses_sentence_split():
    pred = "The rain stopped. The sun came out."
    ref = "The sun came out. The rain stopped."  # one line: only the wrapper's split makes two sentences
    per = rouge_per_example([pred], [ref])
    assert per["rougeLsum"][0] == pytest.approx(1.0)  # summary-level LCS over sentences in any order
    assert per["rougeL"][0] < 1.0  # plain LCS is order sensitive
    unsplit = rouge_scorer.RougeScorer(["rougeLsum"]).score(ref, pred)["rougeLsum"].fmeasure
    assert unsplit < 1.0  # unsplit, rouge-score sees one sentence: Lsum = L


def test_regex_sentence_splitter():
    text = 'Mr. Smith went to Washington. He left! "Why?" she asked. J. K. Rowling wrote it. U.S. officials said 3.5 m.'
    assert regex_sentences(text) == [
        "Mr. Smith went to Washington.",
        "He left!",
        '"Why?" she asked.',
        "J. K. Rowling wrote it.",
        "U.S. officials said 3.5 m.",
    ]
    assert rouge.split_sentences("one line . two\n\nThree. Four.") == ["one line . two", "Three.", "Four."]


def test_bootstrap_interval_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    v = rng.uniform(0, 1, size=40)
    lo, hi = bootstrap_ci(v, n_resamples=2000, seed=3)
    assert lo < v.mean() < hi
    assert (lo, hi) == bootstrap_ci(v, n_resamples=2000, seed=3)
    assert hi - lo < 0.4
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    wide = bootstrap_ci(v[:5], n_resamples=2000, seed=3)
    assert wide[1] - wide[0] > hi - lo  # fewer examples, wider interval


def test_score_in_percent_with_intervals():
    preds = ["the cat sat on the mat", "a dog ran", "birds fly south in winter", "no overlap at all"]
    refs = ["the cat is on the mat", "the dog ran away", "in winter birds fly south", "something else entirely"]
    summary, per = score(preds, refs, n_resamples=500)
    for m in METRICS:
        s = summary[m]
        assert s["mean"] == pytest.approx(100 * per[m].mean())
        assert 0 <= s["low"] <= s["mean"] <= s["high"] <= 100
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_per_example(["a", "b"], ["a"])
