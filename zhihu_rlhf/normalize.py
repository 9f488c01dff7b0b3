"""Text normalisation: make equal texts compare equal, without touching what the author wrote.

Scraped Zhihu text carries invisible noise: zero-width spaces from the vote button, NBSP from the
HTML, HTML entities that were never unescaped, tabs and ragged runs of spaces. We remove that noise
and nothing else: Chinese punctuation, full-width characters and wording are left exactly as written.

Speed matters (two gigabytes of answers): every step is a vectorised polars string operation; only
the rare texts with numeric entities go through Python's `html.unescape`.
"""

from __future__ import annotations

import html
import html.entities

import polars as pl

# Written as alternations of literals, not character classes: the regex engine then scans for them with
# its fast multi-literal search, three times faster than a class of multi-byte characters on 2 GB of text.
ZERO_WIDTH = "\u200b|\u200c|\u200d|\u2060|\ufeff"  # zero-width space/non-joiner/joiner, word joiner, BOM
SPACE_LIKE = "\u00a0|\t|\f|\v"  # NBSP and tabs become plain spaces

# Named HTML entities with their semicolon (`&amp;`, `&nbsp;`, ...), from the HTML5 table the stdlib ships.
# One Aho-Corasick pass does them all; it is fast because every pattern starts with the rare `&`.
ENTITIES = {f"&{name}": text for name, text in html.entities.html5.items() if name.endswith(";")}
_ENTITY_NAMES, _ENTITY_TEXTS = list(ENTITIES), list(ENTITIES.values())


def _unescape(texts: pl.Series) -> pl.Series:
    """Named entities for every text; html.unescape for the rare ones with numeric entities (`&#8203;`).

    Each text is unescaped exactly once, so `&amp;lt;` stays `&lt;`, as html.unescape leaves it.
    """
    unescaped = texts.str.replace_many(_ENTITY_NAMES, _ENTITY_TEXTS)
    has_numeric = texts.str.contains(r"&#[0-9xX]").fill_null(False)
    if not has_numeric.any():
        return unescaped
    positions = has_numeric.arg_true()
    return unescaped.scatter(positions, pl.Series([html.unescape(t) for t in texts.gather(positions)], dtype=pl.String))


def normalize_series(texts: pl.Series) -> pl.Series:
    """Clean a column of texts; texts that end up empty become null (so callers can count them)."""
    cleaned = (
        _unescape(texts)
        .str.replace_all(ZERO_WIDTH, "")
        .str.replace_all(SPACE_LIKE, " ")
        .str.replace_all(r"\r\n?", "\n")
        .str.replace_all(" {2,}", " ")
        .str.replace_all(" \n ?|\n ", "\n")  # spaces around a line break
        .str.replace_all(r"\n{3,}", "\n\n")  # at most one blank line
        .str.strip_chars()
    )
    return pl.select(pl.when(cleaned.str.len_chars() > 0).then(cleaned)).to_series().alias(texts.name)


def normalize_text(text: pl.Expr) -> pl.Expr:
    """`normalize_series` as an expression, for lazy pipelines."""
    # Elementwise: the streaming engine may clean the column batch by batch, in parallel, in bounded memory.
    return text.map_batches(normalize_series, return_dtype=pl.String, is_elementwise=True)
