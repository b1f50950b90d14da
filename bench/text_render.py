"""Legible text lines for PP-OCR rec: a 5x7 block font (digits and capitals), scaled to the line
height, dark ink on a light noisy background. PP-OCRv4 rec reads these (e.g. 'EPX04SX6' ->
'EPX04SX6'; 7 of 8 random lines exact or one glyph off), where on bench_vs_ort_quant's random-stroke
glyphs 99.4% of its steps were blank, so the argmax agreement there mostly compared blanks."""
from __future__ import annotations

import numpy as np

FONT = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "H": "10001 10001 10001 11111 10001 10001 10001", "I": "01110 00100 00100 00100 00100 00100 01110",
    "L": "10000 10000 10000 10000 10000 10000 11111", "N": "10001 11001 10101 10011 10001 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "R": "11110 10001 10001 11110 10100 10010 10001", "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100", "U": "10001 10001 10001 10001 10001 10001 01110",
    "X": "10001 10001 01010 00100 01010 10001 10001",
}
GLYPHS = {k: np.array([[c == "1" for c in row] for row in v.split()]) for k, v in FONT.items()}


def text_line(text: str, h: int, w: int, rng) -> np.ndarray:
    """One line of ``text`` (h x w, 0..255); glyphs past the right edge are left out."""
    page = np.full((h, w), rng.uniform(200, 250))
    gh = int(h * rng.uniform(0.5, 0.7))
    gw = gh * 5 // 7
    top, x, ink = (h - gh) // 2 + int(rng.integers(-2, 3)), int(rng.integers(2, 10)), rng.uniform(10, 60)
    for ch in text:
        if x + gw >= w:
            break
        if ch != " ":
            patch = GLYPHS[ch][np.arange(gh) * 7 // gh][:, np.arange(gw) * 5 // gw]
            page[top:top + gh, x:x + gw][patch] = ink
        x += gw + max(2, gw // 4)
    return np.clip(page + rng.normal(0, 3, page.shape), 0, 255)


def letter_lines(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """``n`` lines of 5-11 random glyphs and spaces, normalized like PP-OCR rec's input."""
    rng = np.random.default_rng(seed)
    chars = sorted(GLYPHS) + [" "]
    return np.stack([((np.repeat(text_line("".join(rng.choice(chars, int(rng.integers(5, 12)))), h, w, rng)[None],
                                 3, 0) / 255.0 - 0.5) / 0.5).astype(np.float32) for _ in range(n)])
