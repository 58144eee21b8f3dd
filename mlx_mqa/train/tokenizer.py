"""Training a small T5-style SentencePiece-like (Unigram) tokenizer, for offline use and experiments."""

from __future__ import annotations

from typing import Iterable


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, extra_ids: int = 100):
    """A T5TokenizerFast with <pad>=0, </s>=1, <unk>=2, `extra_ids` sentinels, trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok, extra_ids=extra_ids, eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
