"""Text that shows its quality, in the worlds with `text_quality` > 0 (readable, readable_popularity).

Today's worlds write every answer from the same sentence pool, so nothing in a text says how good it is. Here an
answer is written from its `shown` quality (its latent quality plus noise, see worlds.py) one body sentence at a
time: each sentence draws a level = shown + N(0, SENTENCE_NOISE) and is written in the class that level falls in:

    +2  a numbered step with specifics and a named source   第3步，先小成本试一试：根据《原则》的数据，……约有42%……
    +1  a connective that structures the argument             因此， / 具体来说， / 换句话说， / 回到题目本身，
     0  a plain sentence of the world's pool (no marker)
    -1  filler                                                怎么说呢 / 懂的都懂 / 反正就这样 / emmm
    -2  typos, or a sentence repeated word for word            神马 / 酱紫 / 木有 / 肿么

The gold reader (`read_quality`) applies these rules backwards: the mean class of a text's body sentences. It
reads the text alone (no ids, no lookup), so generated text is scored the same way.

Every author also writes in one of STYLES: an opening line, a sign-off line and a paragraph mark (▍, ·, ◆ or
none) with a paragraph length. A style says nothing about quality; which authors get which style follows the
popular part of their reach, so in votes a style wins more often than it should, and a reward model trained on
vote pairs can learn "this style wins". The reader skips style lines and marks, so swapping a style
(`swap_style`) leaves the gold score as it was. ASIDES are neutral lines (an author's aside, an image caption)
that any answer may carry whatever its quality; the reader skips them too, so `pad_with_asides` makes an answer
longer without changing its gold score.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

import numpy as np

from zhihu_rlhf.synth import text as synth_text

SENTENCE_NOISE = 0.8
"""Sd of a sentence's level around its answer's shown quality."""
_CUTS = (-1.3, -0.45, 0.45, 1.3)
"""Level thresholds between the classes -2 | -1 | 0 | +1 | +2."""
MIN_BODY_SENTENCES = 5
"""Readable answers have at least this many body sentences, so the text has room to show its quality."""

_SOURCES = ["《原则》", "《穷查理宝典》", "《金字塔原理》", "《人类简史》", "国家统计局", "一份行业白皮书", "某招聘平台的报告", "一项大学的调查"]
_STEP_TEMPLATES = [
    "第{k}步，{advice}：根据{source}的数据，{act}的人里约有{pct}%{outcome}。",
    "第{k}步，{advice}，按{source}的说法，{clause}，一般需要{dur}。",
    "第{k}步，{advice}，我当时在{city}花了{money}，{source}里也是这么写的。",
]
CONNECTIVES = ("因此，", "具体来说，", "换句话说，", "回到题目本身，")
_CONNECTIVE_TEMPLATES = [
    "因此，{subj}{verb}{clause}。",
    "具体来说，{act}{judge}，大约要{dur}。",
    "换句话说，{clause}。",
    "回到题目本身，{act}的关键是{clause}。",
]
FILLERS = ("怎么说呢", "懂的都懂", "反正就这样", "emmm")
_FILLER_TEMPLATES = ["怎么说呢，{judge}吧。", "懂的都懂，不多说了。", "反正就这样，{judge}。", "emmm，{act}这种事，看个人吧。"]
TYPOS = ("神马", "酱紫", "木有", "肿么")
_TYPO_TEMPLATES = ["{act}这种事神马的，酱紫就行了。", "木有什么好说的，{act}肿么选都一样。", "{act}神马的，木有那么复杂。"]
REPEAT_SHARE = 0.3
"""Share of -2 sentences that repeat an earlier plain sentence of the answer instead of carrying typos."""

# (opening, sign-off, paragraph mark, sentences per paragraph): none of them holds a marker of the classes above.
STYLES: list[tuple[str, str, str, int]] = [
    ("各位好，我是老司机。", "以上，欢迎关注。", "", 1),
    ("直接上干货。", "码字不易，点个赞吧。", "▍", 2),
    ("这题我熟。", "有问题评论区见。", "· ", 3),
    ("【长文预警】", "——全文终——", "◆ ", 1),
    ("路过答一下。", "希望对你有帮助。", "", 3),
    ("先赞后看，养成习惯。", "以上纯属个人经验。", "▍", 1),
    ("坐标帝都，说点实在的。", "溜了溜了。", "· ", 2),
    ("作为过来人，聊几句。", "祝好。", "◆ ", 3),
]
N_STYLES = len(STYLES)
_OPENINGS = {opening: i for i, (opening, _, _, _) in enumerate(STYLES)}
_SIGNOFFS = {signoff: i for i, (_, signoff, _, _) in enumerate(STYLES)}
_MARKS = sorted({mark.strip() for _, _, mark, _ in STYLES if mark.strip()}, key=len, reverse=True)
ASIDES = (
    "（以上仅代表个人观点）", "（图片来自网络，侵删）", "（此处原有一张图）", "（先写这么多，想到再补充）",
    "（评论区有朋友问到，统一回复一下）", "（本回答不构成任何建议）", "（有空再来更新）", "（手机码字，排版见谅）",
)
_ASIDE_SET = frozenset(ASIDES)
ASIDE_SHARE = 0.3
"""Share of answers that carry one to three asides, whatever their quality."""

_step = synth_text._filler(_STEP_TEMPLATES)
_connective = synth_text._filler(_CONNECTIVE_TEMPLATES)
_filler_sentence = synth_text._filler(_FILLER_TEMPLATES)
_typo = synth_text._filler(_TYPO_TEMPLATES)
_STEP_RE = re.compile(r"第[0-9]+步")
_SENTENCE_RE = re.compile(r"[^。！？!?…\n]+[。！？!?…]*")


def sentence_class(level: float) -> int:
    """The class (-2 .. +2) a sentence level falls in."""
    return int(np.searchsorted(_CUTS, level)) - 2


def body_sentences(rnd: random.Random, pool: list[str], n: int, shown: float) -> list[str]:
    """`n` body sentences of an answer whose shown quality is `shown`."""
    sentences: list[str] = []
    plain: list[str] = []
    for _ in range(n):
        cls = sentence_class(shown + rnd.gauss(0.0, SENTENCE_NOISE))
        if cls == 2:
            sentence = _step(rnd, source=rnd.choice(_SOURCES), k=str(rnd.randint(1, 9)))
        elif cls == 1:
            sentence = _connective(rnd)
        elif cls == 0:
            sentence = rnd.choice(pool)
            plain.append(sentence)
        elif cls == -1:
            sentence = _filler_sentence(rnd)
        elif plain and rnd.random() < REPEAT_SHARE:
            sentence = rnd.choice(plain)
        else:
            sentence = _typo(rnd)
        sentences.append(sentence)
    return sentences


def styled(sentences: list[str], style: int, asides: Iterable[str] = ()) -> str:
    """Body sentences laid out in an author's style: opening, paragraphs with the style's mark, asides, sign-off."""
    opening, signoff, mark, per_paragraph = STYLES[style]
    paragraphs = [mark + "".join(sentences[i : i + per_paragraph]) for i in range(0, len(sentences), per_paragraph)]
    return "\n\n".join([opening, *paragraphs, *asides, signoff])


def answer(rnd: random.Random, pool: list[str], n: int, shown: float, style: int) -> str:
    """A whole readable answer: at least MIN_BODY_SENTENCES body sentences, maybe asides, in the author's style."""
    body = body_sentences(rnd, pool, max(n, MIN_BODY_SENTENCES), shown)
    asides = rnd.sample(ASIDES, rnd.randint(1, 3)) if rnd.random() < ASIDE_SHARE else []
    return styled(body, style, asides)


# ---------------------------------------------------------------------------------------------------------------
# Reading it back


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _unmarked(line: str) -> str:
    for mark in _MARKS:
        if line.startswith(mark):
            return line[len(mark) :].lstrip()
    return line


def _body_lines(text: str) -> list[str]:
    """The lines that are neither style (opening, sign-off, paragraph marks) nor asides."""
    return [
        _unmarked(line) for line in _lines(text)
        if line not in _OPENINGS and line not in _SIGNOFFS and line not in _ASIDE_SET
    ]


def _classes(text: str) -> list[int]:
    """The class of every body sentence of a text, by the rules body_sentences writes them. Body lines are read as
    one run of sentences, so how a style cuts them into paragraphs does not matter."""
    classes: list[int] = []
    seen: set[str] = set()
    for match in _SENTENCE_RE.finditer("".join(_body_lines(text))):
        sentence = match.group().strip()
        if not sentence.strip("。！？!?…"):
            continue
        if sentence in seen or any(t in sentence for t in TYPOS):
            classes.append(-2)
        elif any(f in sentence for f in FILLERS):
            classes.append(-1)
        elif _STEP_RE.search(sentence):
            classes.append(2)
        elif sentence.startswith(CONNECTIVES):
            classes.append(1)
        else:
            classes.append(0)
        seen.add(sentence)
    return classes


def read_quality(texts: Iterable[str | None]) -> np.ndarray:
    """The quality each text shows: the mean class (-2 .. +2) of its body sentences; 0 for a text with none.

    From the text alone, by the rules the readable worlds write with, so it scores generated text too.
    """
    scores = []
    for t in texts:
        classes = _classes(t or "")
        scores.append(sum(classes) / len(classes) if classes else 0.0)
    return np.asarray(scores, dtype=np.float64)


def style_of(text: str) -> int | None:
    """The author style a readable answer is written in (None if its first and last lines are no style's)."""
    lines = _lines(text)
    if len(lines) < 2:
        return None
    opening, signoff = _OPENINGS.get(lines[0]), _SIGNOFFS.get(lines[-1])
    return opening if opening is not None and opening == signoff else None


def swap_style(text: str, style: int) -> str:
    """The same answer (same body sentences and asides) written in another author style.

    Raises ValueError for a text not in a readable style (a cross-posted copy with a prefix, say)."""
    if style_of(text) is None:
        raise ValueError("not a readable answer: its first and last lines are not an author style's")
    lines = _lines(text)[1:-1]
    asides = [line for line in lines if line in _ASIDE_SET]
    body = "".join(_unmarked(line) for line in lines if line not in _ASIDE_SET)
    sentences = [m.group() for m in _SENTENCE_RE.finditer(body)]
    return styled(sentences, style, asides)


def pad_with_asides(text: str, count: int) -> str:
    """The answer with `count` neutral aside lines added before its last line (the reader skips them)."""
    lines = text.rstrip().split("\n\n")
    padding = [ASIDES[i % len(ASIDES)] for i in range(count)]
    if len(lines) < 2:
        return "\n\n".join([*lines, *padding])
    return "\n\n".join([*lines[:-1], *padding, lines[-1]])
