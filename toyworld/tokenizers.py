"""Tokenizers for ToyWorld's models, trained on the world's own text.

Both are the real fast classes the production models use, so every code path that
finds token positions through offset mappings is exercised here unchanged:
- ``CLIPTokenizer`` (byte-level BPE, lower-cased, ``</w>`` word ends), as in SD 1.x;
- ``BertTokenizerFast`` (cased WordPiece), as in bert-large-NER.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, CLIPTokenizer

CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_clip_tokenizer(corpus: Iterable[str], vocab_size: int = 2000,
                         model_max_length: int = 32) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges are learnt from ``corpus``.

    CLIPTokenizer's own normaliser and pre-tokeniser are used for training, so the
    learnt vocabulary and merges are exactly what it will apply later.
    """
    template = CLIPTokenizer()  # empty vocab; carries CLIP's normaliser and pre-tokeniser
    backend = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    backend.normalizer = template.backend_tokenizer.normalizer
    backend.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(CLIP_SPECIALS), end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    vocab = backend.get_vocab()
    # Every single byte-level character must also exist with the word-end suffix, as in
    # CLIP's vocabulary, so that any text (including words never seen) tokenises.
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = _merges_of(backend)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _merges_of(backend: Tokenizer) -> list[tuple[str, str]]:
    merges = json.loads(backend.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def train_bert_tokenizer(corpus: Iterable[str], vocab_size: int = 600) -> BertTokenizerFast:
    """A cased WordPiece tokenizer (bert-large-NER is cased) trained on ``corpus``."""
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS),
                                        show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    backend.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=backend, do_lower_case=False, model_max_length=64)
