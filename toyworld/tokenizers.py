"""Tokenizers for ToyWorld's models, trained on the world's own text.

Both are the real fast classes the production models use, so every code path that
finds token positions through offset mappings is exercised here unchanged:
- ``CLIPTokenizer`` (byte-level BPE, lower-cased, ``</w>`` word ends), as in SD 1.x;
- ``BertTokenizerFast`` (cased WordPiece), as in bert-large-NER.

And Stable Diffusion 1.x's own tokenizer, rebuilt without the model hub
(``sd_clip_tokenizer``), for tests and benchmarks that count real prompts' tokens as SD does.
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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters, which CLIP's BPE works on."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def sd_clip_tokenizer(out_dir) -> CLIPTokenizer:
    """Stable Diffusion 1.x's tokenizer (CLIP ViT-L/14's: 49,408 tokens, 77 positions), rebuilt
    from the BPE merges the open_clip package ships (``make venv`` installs open_clip_torch
    without its dependencies, for this file alone) and saved in ``out_dir``: the vocabulary
    is the 256 byte characters, the same with ``</w>``, one token per merge, then [BOS] and
    [EOS], as CLIP built it. The ids are SD's (``a photo of`` -> 49406 320 1125 539 49407)."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise RuntimeError("open_clip_torch is not installed: `make venv` installs it (with --no-deps) for "
                           "its CLIP BPE merges")
    bpe = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars), *("".join(m.split()) for m in merges), *CLIP_SPECIALS]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>")
    if len(tok) != 49408 or tok("a photo of")["input_ids"] != [49406, 320, 1125, 539, 49407]:
        raise RuntimeError(f"the tokenizer rebuilt from {bpe} is not SD's ({len(tok)} tokens)")
    tok.save_pretrained(out)
    return tok
