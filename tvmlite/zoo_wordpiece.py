"""BERT's WordPiece tokenizer in pure Python, from a ``vocab.txt`` (one token per line, id = line).

Follows the reference BertTokenizer (google-research/bert ``tokenization.py``, which HF's BertTokenizer
copies): clean the text (drop NUL, U+FFFD and control characters, map whitespace to spaces), put
spaces around CJK ideographs, split on whitespace, lower-case and strip accents (NFD, drop combining
marks: what "uncased" models were trained with), split off every punctuation character, then greedy
longest-match-first WordPiece with ``##`` continuations; a word longer than 100 characters or with
no match becomes ``[UNK]``.
"""
from __future__ import annotations

import unicodedata

import numpy as np

from tvmlite.errors import InputError


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    # BERT counts every non-alphanumeric ASCII character as punctuation ("$", "^", "`" included).
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """``encode(texts, seq_len)`` gives the feeds a BERT encoder takes: ``input_ids``,
    ``attention_mask`` and ``token_type_ids`` (int64 [batch, seq_len]), ``[CLS] text [SEP]`` then
    ``[PAD]``; texts longer than ``seq_len - 2`` word pieces are truncated."""

    def __init__(self, vocab_text: str, lower_case: bool = True, strip_accents: bool | None = None,
                 max_chars_per_word: int = 100):
        tokens = vocab_text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.vocab = {}
        for i, t in enumerate(tokens):
            self.vocab.setdefault(t.rstrip("\r"), i)
        for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            if special not in self.vocab:
                raise InputError(f"vocabulary has no {special} token ({len(self.vocab)} tokens)")
        self.lower_case = lower_case
        # HF: strip_accents=None means "strip when lower-casing"
        self.strip_accents = lower_case if strip_accents is None else strip_accents
        self.max_chars_per_word = max_chars_per_word

    def basic_tokens(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.extend((" ", ch, " "))
            else:
                chars.append(ch)
        out = []
        for word in "".join(chars).split():
            if self.lower_case:
                word = word.lower()
            if self.strip_accents:
                word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            piece = ""
            for ch in word:
                if _is_punctuation(ch):
                    if piece:
                        out.append(piece)
                    out.append(ch)
                    piece = ""
                else:
                    piece += ch
            if piece:
                out.append(piece)
        return out

    def wordpieces(self, word: str) -> list[str]:
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(sub)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in self.basic_tokens(text) for p in self.wordpieces(w)]

    def encode(self, texts, seq_len: int = 128) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        if seq_len < 2:
            raise InputError(f"sequence length {seq_len} leaves no room for [CLS] and [SEP]")
        ids = np.full((len(texts), seq_len), self.vocab["[PAD]"], dtype=np.int64)
        mask = np.zeros((len(texts), seq_len), dtype=np.int64)
        for row, text in enumerate(texts):
            toks = ["[CLS]"] + self.tokenize(text)[:seq_len - 2] + ["[SEP]"]
            ids[row, :len(toks)] = [self.vocab[t] for t in toks]
            mask[row, :len(toks)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
