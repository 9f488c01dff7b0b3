"""The METADATA column, in each spelling the wild has.

`kol` is how the published Zhihu-KOL rows read: every upvote form the scrapers and re-exporters wrote
("赞同 1.2 万", 1291, "1,291", "1.2k", ...), ids as ints, floats or digit strings, creation times as ISO
strings or epoch seconds/milliseconds, empty or missing, and 10% of rows with ASCII-escaped JSON.

`pandas` is how the pandas-based converter wrote it: `json.dumps(row, ensure_ascii=False)` over a
pandas row read from the scraper's CSV. Every row has every column, in the CSV's order plus the extra
`url` column; a missing value is a float NaN, written as a bare `NaN` token; a column with any missing
value is float, so ids read `59530469.0`; the upvote column holds the vote button's text; a broken time
conversion left `Infinity` / `-Infinity` in a few rows. The older crawler's rows (`legacy_metadata`)
carry only Chinese keys and no ids: {"回答点赞数": 5000, "回答时间": 1676899170}.
"""

from __future__ import annotations

import json
import random

UPVOTE_FORMS = ["int", "button", "button_zw", "wan", "bare", "comma", "k", "w"]
TIME_FORMS = ["iso_ms", "iso", "epoch_s", "epoch_ms", "empty", "missing", "nan", "infinity"]
ID_FORMS = ["int", "float", "str"]

# Per spelling: the weight of each upvote form where it can express the count (0: never written).
UPVOTE_FORM_WEIGHTS = {
    "kol": [0.2, 0.3, 0.3, 0.5, 0.8, 0.1, 0.12, 0.15],
    "pandas": [0.0, 0.3, 0.3, 0.5, 0.8, 0.0, 0.0, 0.0],  # the CSV held the button text only
}
# Per spelling: the time forms written and their shares.
TIME_FORM_SHARES = {
    "kol": {"iso_ms": 0.45, "iso": 0.2, "epoch_s": 0.15, "epoch_ms": 0.1, "empty": 0.05, "missing": 0.05},
    "pandas": {"iso_ms": 0.7, "iso": 0.24, "nan": 0.05, "infinity": 0.01},
}
# Per spelling: the share of rows whose author column is empty (pandas writes NaN; kol never loses it).
AUTHOR_MISSING_SHARE = {"kol": 0.0, "pandas": 0.02}
NO_TIME_FORMS = {"empty", "missing", "nan", "infinity"}  # forms that denote no creation time
PROFILE_URL = "https://www.zhihu.com/people/"


def decimal(tenths: int) -> str:
    """12 -> "1.2", 30 -> "3" (how Zhihu prints 1.2 万 / 3 万)."""
    return f"{tenths // 10}.{tenths % 10}" if tenths % 10 else str(tenths // 10)


def upvote_value(form: int, denoted: int, rnd: random.Random) -> int | str:
    """The upvotes value in form `form` (an index into UPVOTE_FORMS) that denotes `denoted` votes."""
    name = UPVOTE_FORMS[form]
    zero_width = "\u200b" if rnd.random() < 0.5 else ""
    if name == "int":
        return denoted
    if name == "button":
        return f"赞同 {denoted}"
    if name == "button_zw":
        return f"\u200b赞同 {denoted}"
    if name == "wan":
        return f"{zero_width}赞同 {decimal(denoted // 1000)} 万"
    if name == "bare":
        return f"{zero_width}赞同"
    if name == "comma":
        return f"{denoted:,}"
    if name == "k":
        return f"{decimal(denoted // 100)}k"
    return f"{decimal(denoted // 1000)}w"


def id_value(form: int, value: int) -> int | float | str:
    """An id as pandas-era exports wrote it: 59530469, 59530469.0 or "59530469"."""
    return {"int": value, "float": float(value), "str": str(value)}[ID_FORMS[form]]


def time_value(form: int, epoch: int, iso: str, rnd: random.Random) -> object:
    """The answer_creation_time value for `form` (an index into TIME_FORMS); None for "missing" (no key)."""
    name = TIME_FORMS[form]
    if name == "infinity":
        return float("inf") if rnd.random() < 0.5 else float("-inf")
    values = {
        "iso_ms": iso + ".000Z", "iso": iso + "Z", "epoch_s": epoch, "epoch_ms": epoch * 1000, "empty": "", "nan": float("nan")
    }
    return values.get(name)


def kol_row(
    question_id: object, answer_id: object, author_token: str, upvotes: object, created: object
) -> dict[str, object]:
    """METADATA keys as the Zhihu-KOL collection scripts wrote them (creation time left out when None)."""
    meta: dict[str, object] = {
        "question_id": question_id, "answer_id": answer_id, "author_id": PROFILE_URL + author_token, "upvotes": upvotes
    }
    if created is not None:
        meta["answer_creation_time"] = created
    return meta


def pandas_row(
    question_id: int | None, answer_id: int | None, author_token: str | None, upvotes: object, created: object, url: str
) -> dict[str, object]:
    """A pandas row of the scraper's CSV: every column present, missing values NaN, ids float."""
    nan = float("nan")
    return {
        "question_id": nan if question_id is None else float(question_id),
        "answer_id": nan if answer_id is None else float(answer_id),
        "author_id": nan if author_token is None else PROFILE_URL + author_token,
        "upvotes": upvotes,
        "answer_creation_time": created,
        "url": url,
    }


def legacy_metadata(upvotes: int, epoch: int) -> str:
    """A row of the older crawler: Chinese keys, votes and time only, no ids."""
    return json.dumps({"回答点赞数": upvotes, "回答时间": epoch}, ensure_ascii=False)
