"""Train/test split by question group: a question (and every re-ask of it) lands in one split only."""

from __future__ import annotations

import polars as pl

# Lehmer's minimal-standard generator as a hash: plain integer arithmetic, so the split is the same
# on every machine and every polars version (polars' own hash is not guaranteed stable across versions).
_MODULUS = 2_147_483_647  # 2**31 - 1, prime
_MULTIPLIER = 48_271


def unit_hash(ids: pl.Expr) -> pl.Expr:
    """Map non-negative integer ids to [0, 1), well mixed and deterministic."""
    x = ids % _MODULUS + 1
    for _ in range(3):  # a few rounds mix consecutive ids apart
        x = x * _MULTIPLIER % _MODULUS
    return x.cast(pl.Float64) / _MODULUS


def split_by_question(rows: pl.DataFrame, test_fraction: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) by hashing `question_group`; row order within each split is kept."""
    is_test = unit_hash(pl.col("question_group")) < test_fraction
    return rows.filter(~is_test), rows.filter(is_test)
