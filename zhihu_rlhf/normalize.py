"""Text normalisation: make equal texts compare equal, without touching what the author wrote.

Scraped Zhihu text carries invisible noise: zero-width spaces from the vote button, NBSP from the
HTML, HTML entities that were never unescaped, ragged runs of spaces. We remove that noise and
nothing else: Chinese punctuation, full-width characters and wording are left exactly as written.
"""

from __future__ import annotations

import html

import polars as pl

# U+200B..U+200D zero-width space/non-joiner/joiner, U+2060 word joiner, U+FEFF BOM.
ZERO_WIDTH = r"[\u200b\u200c\u200d\u2060\ufeff]"
NBSP = "\u00a0"
# An entity is `&name;`, `&#123;` or `&#x1F600;`; only texts that contain one pay for html.unescape.
HTML_ENTITY = r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});"


def _unescape_html(texts: pl.Series) -> pl.Series:
    """html.unescape on the few texts that contain an entity; the rest pass through untouched."""
    has_entity = texts.str.contains(HTML_ENTITY).fill_null(False)
    if not has_entity.any():
        return texts
    positions = has_entity.arg_true()
    unescaped = pl.Series([html.unescape(t) for t in texts.gather(positions)], dtype=pl.String)
    return texts.scatter(positions, unescaped)


def normalize_text(text: pl.Expr) -> pl.Expr:
    """Clean one text column; returns null for texts that end up empty (so callers can count them)."""
    cleaned = (
        text.map_batches(_unescape_html, return_dtype=pl.String)
        .str.replace_all(ZERO_WIDTH, "")
        .str.replace_all(NBSP, " ", literal=True)
        .str.replace_all(r"\r\n?", "\n")
        .str.replace_all(r"[ \t\f\v]+", " ")
        .str.replace_all(r" ?\n ?", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )
    return pl.when(cleaned.str.len_chars() > 0).then(cleaned)
