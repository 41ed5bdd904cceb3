"""The world's tokenizer: CLIP's byte-level BPE with merges learned on the caption grammar's
words, written in the ``CLIPTokenizer`` layout (vocab.json, merges.txt, configs).

Every grammar word becomes one token; any other text still tokenizes (byte-level fallback),
as with CLIP's own tokenizer. The vocabulary is ordered as CLIP's: the 256 byte symbols, the
same with the end-of-word marker ``</w>``, the merged tokens, then ``<|startoftext|>`` and
``<|endoftext|>`` (the pad token is ``<|endoftext|>``, as in SD1.5's tokenizer).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from jaxvedit.models.tiny import _bytes_to_unicode
from jaxvedit.world.scene import vocabulary_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges (most frequent pair first, ties broken alphabetically) until every word
    is a single symbol."""
    seqs = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in words]
    merges = []
    while True:
        pairs = Counter()
        for s in seqs:
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        new = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new.append(tuple(out))
        seqs = new


def write_world_tokenizer(folder: str | Path, *, max_length: int = 32) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for sym in alphabet:
        vocab.setdefault(sym, len(vocab))
    for sym in alphabet:
        vocab.setdefault(sym + "</w>", len(vocab))
    merges = learn_merges(vocabulary_words())
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True,
         **special}, indent=2))
    return folder


def vocab_size() -> int:
    return 512 + len(learn_merges(vocabulary_words())) + 2
