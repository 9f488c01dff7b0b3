"""Synthetic Zhihu-KOL-shaped data with known truth, for tests and benchmarks.

Writes a parquet shaped like `wangrui6/Zhihu-KOL` (INSTRUCTION, RESPONSE, SOURCE, METADATA as a JSON
string) plus a truth file `<stem>.truth.parquet` holding, per row, what the row really is: the intended
ids, the latent answer quality, the planted duplicate groups, the planted defect, and the exact upvote
count and creation time the METADATA text denotes.

How the world is simulated (so you know what a good pipeline should recover):
- Questions: answers per question are Zipf-distributed (most have 1, many 2-10, a few hundreds).
  Question ids grow with question time, answer ids with answer time, as on Zhihu.
- Answers: latent quality ~ N(0, 1). Upvotes ~ Poisson(exp(log_rate)) where log_rate adds the question's
  popularity, quality, the author's following (heavy-tailed followers, authors write many answers), and
  exposure: earlier answers to a question and answers written soon after its first answer collect more
  votes. Pairs close in time, with a large vote ratio and large counts are therefore more often right.
- Planted duplicates: exact cross-posts, cross-posts with a prefix ("谢邀。") and/or suffix
  ("编辑于 ..."), punctuation edits, re-asked questions (title variants under a new question_id), and
  NON-duplicates that share a long quote (each stays its own cluster).
- Every METADATA variant seen in the wild, and ~1% malformed rows.

Truth columns (one row per data row, same order):
    row, question_id, answer_id (the intended ids, whatever form METADATA writes them in),
    quality (higher = truly better), question_group (smallest question_id of the re-asked group),
    answer_cluster (smallest answer_id of the near-duplicate cluster), dup_kind (null or the planted kind;
    set on the planted copy rows, on both rows of a shared-quote pair, and on every answer row of a
    re-asked question, while the original keeps null), malformed (null or the planted defect; such rows
    must be dropped), upvotes (exact count the METADATA text denotes: "赞同 1.2 万" -> 12000),
    created_at (the time METADATA denotes, null when it is empty or missing).
    For malformed rows the ids/upvotes/created_at are what the row would have said.

The embedded sample (zhihu_rlhf/data/sample.parquet) was made with:
    python -m zhihu_rlhf.synth --rows 4000 --seed 20230416 --mean-answer-chars 350 --no-truth \
        --out zhihu_rlhf/data/sample.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from zhihu_rlhf.errors import UserError, cli_main

FULL_ROWS = 1_006_218  # size of the real Zhihu-KOL
# The real Zhihu-KOL holds ~2.3 GB of UTF-8 text, ~2.3 KB (~800 Chinese characters) per answer.
MEAN_ANSWER_CHARS = 800
CHUNK_ROWS = 20_000  # rows rendered and written at a time; fixed, so output never depends on it

_T_QUESTIONS_FROM = int(datetime(2015, 1, 1, tzinfo=timezone.utc).timestamp())
_T_QUESTIONS_TO = int(datetime(2022, 12, 31, tzinfo=timezone.utc).timestamp())
_T_CRAWL = int(datetime(2023, 4, 1, tzinfo=timezone.utc).timestamp())  # no answer is newer
_DAY = 86_400

DUP_KINDS = [None, "exact_copy", "crosspost_prefix_suffix", "punct_edit", "shared_quote", "reasked_question"]
MALFORMED_KINDS = [None, "invalid_json", "null_question_id", "null_answer_id", "blank_response"]
# METADATA["upvotes"] forms. Each row gets one that can express its count (万/w only from 10,000 up,
# k from 1,000 up; the bare button text "赞同" only for zero).
UPVOTE_FORMS = ["int", "button", "button_zw", "wan", "bare", "comma", "k", "w"]
TIME_FORMS = ["iso_ms", "iso", "epoch_s", "epoch_ms", "empty", "missing"]
ID_FORMS = ["int", "float", "str"]

# ---------------------------------------------------------------------------------------------------
# Vocabulary. Sentences and titles are drawn from a large combinatorial space (slots x slots x numbers
# x random names), so different answers are never near-identical by accident.

_SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
_NAME_CHARS = list(
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红玲飞鹏辉宇浩凯健俊帆帅旭宁琳晨欣怡佳雪梦"
    "思雨婷瑶嘉博文昊然泽睿轩子涵一诺梓豪铭哲彬晓亮峰振国建志东海波云龙斌林军春燕兰凤洁梅琴素莉颖"
    "卓远航川岚松柏青山星河月阳光澜清源景程安康乐福瑞祥和顺达成诚信德仁义礼智勤朴毅韬略逸凡尘墨"
)
_ORG_SUFFIX = ["大学", "科技", "集团", "公司", "研究所", "医院", "中学", "银行", "汽车", "游戏", "资本", "传媒", "实验室", "工作室"]
_PRODUCTS = ["手机", "笔记本", "电动车", "耳机", "显卡", "平板", "相机", "手表", "新车", "大模型", "App", "游戏本", "路由器", "扫地机器人"]
_EVENTS = [  # each carries its own random slot, so two titles rarely differ only in the entity
    "宣布退出{field}并加入{org}", "发布的{product} {model}{num}", "在{year}年{show}上的表现", "在{year}年裁员{num}%的决定",
    "获得{year}年{prize}", "与{name}合作的{show}", "回应与{org}的{field}争议", "{year}年转型做{field}", "起诉{org}侵权",
    "在{city}开设第{num}家{place}", "把{product}涨价{num}%", "与{org}合并", "因{name}的发言登上热搜", "被{org}收购",
    "推出每月{num}元的{product}订阅", "退出{city}市场并裁撤{place}", "的{year}年财报和{num}%的增速",
]
_FOLLOW_UPS = ["有哪些影响", "意味着什么", "背后有什么原因", "你怎么看", "会带来什么变化", "是好是坏", "对普通人有什么影响"]
_FIELDS = ["娱乐圈", "教育行业", "互联网", "房地产", "新能源", "短视频", "直播带货", "游戏行业", "医疗行业", "咨询业", "金融圈", "自媒体", "芯片行业", "餐饮业"]
_SHOWS = ["春晚", "发布会", "综艺", "世界赛", "奥运会", "年会", "开发者大会", "电影节", "招聘会", "选秀"]
_PRIZES = ["诺贝尔奖", "金马奖", "图灵奖", "茅盾文学奖", "最佳新人奖", "年度人物", "冠军", "国家科技进步奖"]
_CITIES = ["北京", "上海", "深圳", "杭州", "成都", "武汉", "西安", "南京", "广州", "重庆", "苏州", "长沙", "厦门", "青岛", "昆明", "哈尔滨", "纽约", "东京", "伦敦", "新加坡", "柏林", "悉尼"]
_PLACES = ["门店", "研发中心", "分校", "工厂", "总部", "体验店", "数据中心", "办事处", "园区"]
_ACTIVITIES = [
    "考研", "买房", "跳槽", "养猫", "健身", "写代码", "带娃", "炒股", "学英语", "读博", "装修", "开网店",
    "做自媒体", "考公", "留学", "减肥", "学钢琴", "摄影", "跑马拉松", "打游戏", "考驾照", "做饭", "创业", "相亲",
    "转行", "存钱", "学画画", "写小说", "租房", "养狗", "学日语", "做科研", "当老师", "开咖啡店", "学编程", "备考雅思",
]
_EXPERIENCES = [  # each names an organisation or a person, plus numbers
    "在{org}{act}{yrs}年", "{age}岁从{org}辞职去{city}{act}", "和{name}一起在{city}{act}{yrs}年", "读了{yrs}年博士后去{org}{act}",
    "月薪{money}在{city}的{org}工作", "被{org}和{org2}同时录取", "在{city}的{org}实习{num}个月", "{age}岁在{org}当{en}经理{yrs}年",
]
_TITLE_TEMPLATES = [
    "如何评价{entity}{event}？", "如何看待{entity}{event}？", "为什么{entity}{event}？", "{entity}{event}，{follow}？",
    "{exp}是一种怎样的体验？", "{exp}是什么体验？", "{exp}，后来怎么样了？", "{exp}，现在后悔吗？",
    "{entity}的{aspect}到底如何？和{org}比怎么样？", "怎么看{entity}{event}？",
]
_ASPECTS = ["企业文化", "薪资待遇", "技术实力", "发展前景", "产品质量", "管理水平", "口碑", "学术水平", "售后服务", "用户体验"]
_REASK_SWAPS = [
    ("如何评价", "如何看待"), ("如何看待", "怎么看待"), ("是一种怎样的体验", "是一种什么样的体验"), ("是什么体验", "是什么样的体验"),
    ("为什么", "为何"), ("怎么样", "如何"), ("有哪些", "有什么"), ("怎样才能", "如何才能"), ("到底如何", "究竟如何"),
    ("后来怎么样了", "后来如何了"), ("现在后悔吗", "如今后悔吗"), ("你怎么看", "大家怎么看"), ("意味着什么", "说明了什么"),
    ("有哪些影响", "有什么影响"), ("是好是坏", "是好事还是坏事"), ("比怎么样", "相比如何"),
]

_SUBJECTS = [
    "我", "我们公司", "身边的朋友", "很多年轻人", "大部分人", "我导师", "隔壁组的同事", "老板", "我妈", "室友", "这个行业",
    "国内的厂商", "很多家长", "一线城市的打工人", "刚毕业的学生", "做技术的人", "投资人", "老一辈", "我表哥", "产品经理",
    "医生朋友", "程序员", "设计师", "做销售的同学", "小县城的人", "海外华人", "研究生", "高中老师", "创业者", "自由职业者",
    "我爸", "前同事", "HR", "面试官", "房东", "我们组长", "读者", "网友", "评论区的朋友", "以前的我",
]
_VERBS = ["觉得", "认为", "发现", "经常说", "后来才明白", "一直相信", "慢慢意识到", "不太理解为什么", "总是强调", "私下承认", "早就看出", "坚持认为"]
_CLAUSES = [
    "工作和生活很难平衡", "选择比努力更重要", "房价短期内不会大跌", "学历只是敲门砖", "长期主义才是正解", "沟通成本被严重低估",
    "健康比什么都重要", "技术迭代太快了", "大厂的光环正在褪去", "兴趣是最好的老师", "信息差才是真正的壁垒", "运气也是实力的一部分",
    "小城市的生活未必更轻松", "存款才是底气", "年轻时多试错没有坏处", "父母的经验不一定适用", "写作能力被很多人忽视",
    "英语在职场上依然重要", "专业对口没那么关键", "人脉需要价值交换", "好的习惯比天赋更可靠", "焦虑大多来自比较",
    "降低预期反而更快乐", "真正的高手都很朴素", "复利在生活中无处不在", "行业周期比个人努力影响更大", "延迟满足很难做到",
    "低谷期最能看清人", "读书是成本最低的投资", "平台比个人能力更重要", "简历上的项目经历最关键", "睡眠不足会拖垮一切",
    "大多数焦虑都没有必要", "城市的选择决定了机会", "时间管理本质是精力管理", "自律来自清晰的目标", "越早理财越好",
    "独处能力是一种稀缺能力", "坦诚是最高效的沟通", "不要用战术上的勤奋掩盖战略上的懒惰",
]
_JUDGEMENTS = [
    "其实没有想象中那么难", "远比表面上复杂", "完全取决于个人情况", "性价比并不高", "值得认真考虑", "坑比想象的多",
    "门槛越来越高了", "回报周期特别长", "需要做好心理准备", "不能只看短期收益", "被很多人神化了", "被严重低估了",
    "最难的是坚持下去", "关键在于找到节奏", "没有标准答案", "真的因人而异",
]
_RESULTS = [
    "收获比预期大得多", "最后还是放弃了", "整个人都变得更自信了", "身体反而更好了", "存款翻了一倍", "差点没坚持下来",
    "现在回想起来很值得", "走了不少弯路", "现在已经是团队骨干了", "心态完全不一样了", "欠了一屁股债", "学会了和自己相处",
    "找到了真正喜欢的方向", "被现实狠狠上了一课", "每天都睡不够", "认识了很多有趣的人",
]
_FEELINGS = ["压力大得喘不过气", "每天都很充实", "说不累是假的", "感觉在透支自己", "反而觉得挺踏实", "焦虑到失眠", "幸福感很强", "总觉得少了点什么"]
_ADVICES = [
    "先想清楚自己要什么", "不要盲目跟风", "多和过来人聊聊", "尽早开始积累", "给自己留好退路", "先小成本试一试",
    "把身体放在第一位", "记得定期复盘", "别把鸡蛋放在一个篮子里", "学会拒绝无效社交", "多读原始资料", "保持现金流",
    "找一个靠谱的导师", "每天留一点时间给自己", "别在情绪最差的时候做决定", "把目标拆成小步骤",
]
_ADVERBS = ["说实话", "客观地讲", "从我的经验来看", "坦白说", "某种程度上", "长远来看", "事实上", "不可否认", "归根结底", "换个角度想", "平心而论", "就我观察"]
_TIME_PHRASES = ["前几年", "去年", "刚工作那会儿", "疫情期间", "读研的时候", "上个月", "毕业第一年", "三十岁那年", "换城市之后", "孩子出生以后"]
_ACTIONS = ["辞职去旅行", "换了个行业", "开始记账", "每天早起跑步", "报了个网课", "搬去了郊区", "把副业做成了主业", "断舍离了一大半东西", "重新捡起了英语", "拒绝了大厂的offer"]
_ENGLISH = [
    "KPI", "offer", "deadline", "GPU", "Python", "iPhone", "PPT", "App", "OKR", "ROI", "paper", "bug", "meeting", "PhD",
    "ChatGPT", "Excel", "Linux", "MacBook", "VR", "CEO", "Java", "SQL", "MBA", "IPO", "PM", "workshop", "case", "demo",
]
_OUTCOMES = ["最后坚持了下来", "后悔当初的决定", "收入明显提高", "换了赛道", "觉得不值得", "选择了回老家", "身体出了问题", "找到了满意的工作"]
_QUOTE_SOURCES = ["鲁迅", "一篇很火的文章", "《人类简史》", "某位老教授", "《穷查理宝典》", "一位前辈", "《原则》", "那本书里", "一位知乎大V", "《金字塔原理》"]

_SENTENCE_TEMPLATES = [
    "{adv}，{subj}{verb}{clause}。",
    "{subj}{verb}，{act}这件事{judge}。",
    "我花了{dur}{act}，{result}。",
    "{adv}，{act}最重要的是{clause2}。",
    "比如{subj}，{tphrase}{action}，结果{result}。",
    "在{city}的时候，{subj}每天要处理{n}个{en}，{feeling}。",
    "数据显示，{act}的人里大约有{pct}%{outcome}。",
    "所以{adv}，{advice}。",
    "{subj}问我{act}值不值得，我说{judge}。",
    "“{clause}”，这是{subj}常挂在嘴边的话。",
    "第{o1}点，{advice}；第{o2}点，{advice2}。",
    "如果你也在{city}，{advice}，别急着{action}。",
    "{en}和{en2}之间的差距，{judge}。",
    "当时{subj}月薪{money}，{feeling}！",
    "{act}这条路，{subj}走了{yrs}年，{result}……",
    "{tphrase}我{action}，{feeling}，但{clause}。",
    "很多人问{act}要准备多少钱，我的答案是{money}左右。",
    "{subj}的{en}做了{n}版，{judge}。",
    "{adv}，{clause}，{clause2}。",
    "你会发现{clause}，而且{judge}。",
]
# Mostly no break between sentences; sometimes a paragraph break, with the messy variants real pages have.
_SEPARATORS = ["", "\n\n", "\n", "\n\n\n\n", " \n", "\n \n", "\n\n"]
_SEPARATOR_P = [0.70, 0.14, 0.06, 0.02, 0.03, 0.02, 0.03]
# Noise that normalisation must undo (HTML entities, NBSP, zero-width, tabs, space runs).
_NOISE = ["（R&amp;D）", "（&quot;真香&quot;）", "（成本 &lt; 收益）", "&nbsp;", "\u00a0", "\u200b", "\t", "  ", " &gt;_&lt; ", "\u3000"]

_OPENERS = [
    "{year}年{month}月，我在{city}{act}，到现在已经{n}天了。",
    "先说结论：{clause}，这是我{act}第{n}天的感受。",
    "本人{age}岁，{city}{en}从业者，{act}{yrs}年，说说我的看法。",
    "我是{name}，在{org}做了{yrs}年{en}，{clause}。",
    "{year}年我第一次{act}，花了{money}，{result}。",
    "谢谢邀请。作为一个{act}了{yrs}年的人，{clause}。",
    "有幸在{org}待过{yrs}年，答一下这个问题。",
]
_PREFIXES = ["谢邀。", "谢邀，人在美国，刚下飞机。", "谢邀\n\n", "泻药。", "利益相关：无。\n", "之前在别的问题下答过，搬运过来。\n\n", "谢邀～\n"]
_SUFFIXES = ["\n编辑于 {date}", "\n\n发布于 {date} {hh:02d}:{mm:02d}", "\n\n（完）", "\n——转载请注明出处", "\n\n以上。\n编辑于 {date}"]
_PUNCT_EDITS = {"，": [",", "、", "。"], "。": [".", "！", "，"], "！": ["!", "。"], "？": ["?"], "；": [";", "，"], "：": [":"]}
_PUNCT_RE = re.compile("[，。！？；：]")


def truth_path_for(out: Path) -> Path:
    """The truth file that goes with a data file: FILE.parquet -> FILE.truth.parquet."""
    return out.with_suffix(".truth.parquet")


@dataclass
class SynthOptions:
    """Options of `python -m zhihu_rlhf.synth`."""

    rows: int
    """Number of data rows to write (the real Zhihu-KOL has 1,006,218)."""
    out: Path
    """Data parquet to write; the truth file goes next to it as <stem>.truth.parquet."""
    seed: int = 0
    """Random seed; the same seed and options give byte-identical files."""
    mean_answer_chars: int = MEAN_ANSWER_CHARS
    """Mean answer length in characters (heavy-tailed); the default makes the full size ~2.2 GB of UTF-8 text."""
    write_truth: bool = True
    """Also write the truth file (the shipped sample is written without one)."""


@dataclass
class _Plan:
    """Everything about the rows except their text, decided up front for all rows (small arrays)."""

    # per question
    title: list[str]
    question_id: np.ndarray
    question_group: np.ndarray
    reasked: np.ndarray
    # per author
    author_token: list[str]
    # per row
    row_question: np.ndarray
    answer_id: np.ndarray
    answer_cluster: np.ndarray
    author: np.ndarray
    quality: np.ndarray
    created: np.ndarray  # epoch seconds
    n_sentences: np.ndarray
    dup_kind: np.ndarray  # index into DUP_KINDS
    dup_source: np.ndarray  # row the copy was made from, -1 if none
    quote_partner: np.ndarray  # the other row of a shared-quote pair, -1 if none
    malformed: np.ndarray  # index into MALFORMED_KINDS
    upvotes: np.ndarray  # the exact count the METADATA text denotes
    upvote_form: np.ndarray
    time_form: np.ndarray
    question_id_form: np.ndarray
    answer_id_form: np.ndarray
    ascii_json: np.ndarray  # json.dumps(ensure_ascii=True) rows: 赞同 appears as \\u8d5e\\u540c
    sentences: list[str] = field(default_factory=list)


def _name(rnd: random.Random) -> str:
    return rnd.choice(_SURNAMES) + "".join(rnd.choices(_NAME_CHARS, k=2))


def _org(rnd: random.Random) -> str:
    return "".join(rnd.choices(_NAME_CHARS, k=3)) + rnd.choice(_ORG_SUFFIX)


def _money(rnd: random.Random) -> str:
    return f"{rnd.randint(2, 300) * 500}元" if rnd.random() < 0.7 else f"{rnd.randint(1, 200)}万"


def _duration(rnd: random.Random) -> str:
    unit = rnd.randrange(4)
    return (f"{rnd.randint(2, 11)}个月", f"{rnd.randint(2, 8)}年", f"{rnd.randint(3, 300)}天", f"{rnd.randint(10, 2000)}小时")[unit]


# One filler per template field; only the fields a template names are drawn.
_FILLERS: dict[str, Callable[[random.Random], str]] = {
    "adv": lambda r: r.choice(_ADVERBS), "subj": lambda r: r.choice(_SUBJECTS), "verb": lambda r: r.choice(_VERBS),
    "clause": lambda r: r.choice(_CLAUSES), "clause2": lambda r: r.choice(_CLAUSES),
    "judge": lambda r: r.choice(_JUDGEMENTS), "result": lambda r: r.choice(_RESULTS),
    "feeling": lambda r: r.choice(_FEELINGS), "advice": lambda r: r.choice(_ADVICES),
    "advice2": lambda r: r.choice(_ADVICES), "tphrase": lambda r: r.choice(_TIME_PHRASES),
    "action": lambda r: r.choice(_ACTIONS), "act": lambda r: r.choice(_ACTIVITIES),
    "act2": lambda r: r.choice(_ACTIVITIES), "city": lambda r: r.choice(_CITIES), "en": lambda r: r.choice(_ENGLISH),
    "en2": lambda r: r.choice(_ENGLISH), "outcome": lambda r: r.choice(_OUTCOMES),
    "n": lambda r: str(r.randint(2, 999)), "yrs": lambda r: str(r.randint(2, 15)), "dur": _duration,
    "pct": lambda r: str(r.randint(3, 97)), "o1": lambda r: str(r.randint(1, 4)), "o2": lambda r: str(r.randint(5, 9)),
    "money": _money, "year": lambda r: str(r.randint(2008, 2023)), "month": lambda r: str(r.randint(1, 12)),
    "age": lambda r: str(r.randint(16, 59)), "name": _name, "org": _org,
    "field": lambda r: r.choice(_FIELDS), "product": lambda r: r.choice(_PRODUCTS), "show": lambda r: r.choice(_SHOWS),
    "num": lambda r: str(r.randint(2, 59)), "prize": lambda r: r.choice(_PRIZES), "place": lambda r: r.choice(_PLACES),
    "aspect": lambda r: r.choice(_ASPECTS), "follow": lambda r: r.choice(_FOLLOW_UPS), "org2": _org,
    "model": lambda r: r.choice(["Pro", "Max", "X", "S", "Ultra", "mini"]),
}


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _filler(templates: list[str]) -> Callable[[random.Random], str]:
    """A function that fills a random one of `templates` with fresh draws."""
    parsed = [(t, _fields(t)) for t in templates]

    def fill(rnd: random.Random, **fixed: str) -> str:
        template, names = rnd.choice(parsed)
        return template.format(**{n: fixed[n] if n in fixed else _FILLERS[n](rnd) for n in names})

    return fill


_sentence = _filler(_SENTENCE_TEMPLATES)
_opener = _filler(_OPENERS)
_event = _filler(_EVENTS)
_experience = _filler(_EXPERIENCES)
_title_of = _filler(_TITLE_TEMPLATES)


def _sentence_pool(rnd: random.Random, size: int) -> list[str]:
    """Body sentences; ~8% carry noise that normalisation has to clean."""
    pool = []
    for _ in range(size):
        sentence = _sentence(rnd)
        if rnd.random() < 0.08:
            cut = rnd.randrange(1, len(sentence))
            sentence = sentence[:cut] + rnd.choice(_NOISE) + sentence[cut:]
        pool.append(sentence)
    return pool


def _title(rnd: random.Random) -> str:
    kind = rnd.random()
    if kind < 0.4:
        entity = _name(rnd)
    elif kind < 0.8:
        entity = _org(rnd)
    else:
        entity = _org(rnd)[:3] + rnd.choice(_PRODUCTS)
    if rnd.random() < 0.03:  # a quoted name, written with HTML entities by the scraper
        entity = f"&quot;{entity}&quot;"
    return _title_of(rnd, entity=entity, event=_event(rnd), exp=_experience(rnd))


def _reask_title(rnd: random.Random, title: str) -> str:
    """The same question asked again: one punctuation, spacing or small wording change."""
    style = rnd.choices(["punct", "space", "wording", "wording+punct"], [0.35, 0.25, 0.3, 0.1])[0]
    new = title
    if style.startswith("wording"):
        swaps = [(a, b) for a, b in _REASK_SWAPS if a in new]
        if swaps:
            a, b = rnd.choice(swaps)
            new = new.replace(a, b, 1)
    if style.endswith("punct") or new == title and style != "space":
        new = new.replace("？", "?", 1) if "？" in new else new + "?"
    if style == "space":
        new = " " + new if rnd.random() < 0.5 else new + " "
    return new


def _author_token(rnd: random.Random) -> str:
    if rnd.random() < 0.5:
        return f"{rnd.getrandbits(128):032x}"
    syllables = ["li", "wang", "zhang", "chen", "liu", "xiao", "ming", "hua", "jun", "yu", "lin", "feng", "tian", "yang", "an", "qing"]
    token = "-".join(rnd.choices(syllables, k=rnd.randint(2, 3)))
    return token + (f"-{rnd.randint(1, 99)}" if rnd.random() < 0.5 else "")


def _choose_forms(rng: np.random.Generator, allowed: np.ndarray, weights: list[float]) -> np.ndarray:
    """Per row, one form index among the allowed ones (allowed: rows x forms bool), by weight."""
    w = allowed * np.asarray(weights)
    cum = np.cumsum(w, axis=1)
    u = rng.random(len(allowed)) * cum[:, -1]
    return (cum < u[:, None]).sum(axis=1)


def _plan(rows: int, seed: int, mean_answer_chars: int) -> _Plan:
    rng = np.random.default_rng(seed)
    rnd = random.Random(seed)  # text-level choices (faster than numpy for one value at a time)

    # Questions: Zipf answer counts, capped (~500 at full size), cut to exactly `rows` answers.
    cap = int(min(500, max(20, rows // 50)))
    batches, total = [], 0
    while total < rows:
        batch = np.minimum(rng.zipf(2.2, size=max(1024, rows // 2)), cap)
        batches.append(batch)
        total += int(batch.sum())
    counts = np.concatenate(batches)
    cum = np.cumsum(counts)
    n_questions = int(np.searchsorted(cum, rows)) + 1
    counts = counts[:n_questions].copy()
    counts[-1] -= cum[n_questions - 1] - rows
    q_time = rng.integers(_T_QUESTIONS_FROM, _T_QUESTIONS_TO, n_questions)
    question_id = np.empty(n_questions, dtype=np.int64)
    question_id[np.argsort(q_time, kind="stable")] = 19_550_224 + np.cumsum(rng.integers(1, 1500, n_questions))
    q_popularity = rng.normal(0.0, 2.4, n_questions)
    titles = [_title(rnd) for _ in range(n_questions)]

    # Re-asked questions: ~2% of questions are a later re-ask of an earlier one.
    question_group = question_id.copy()
    reasked = np.zeros(n_questions, dtype=bool)
    n_reask = int(round(0.02 * n_questions)) if n_questions >= 4 else 0
    picked = rng.choice(n_questions, 2 * n_reask, replace=False)
    a, b = picked[:n_reask], picked[n_reask:]
    original = np.where(question_id[a] < question_id[b], a, b)
    again = np.where(question_id[a] < question_id[b], b, a)
    question_group[again] = question_id[original]
    reasked[again] = True
    for o, r in zip(original.tolist(), again.tolist(), strict=True):
        titles[r] = _reask_title(rnd, titles[o])

    # Rows grouped by question, questions in random order.
    q_order = rng.permutation(n_questions)
    row_question = np.repeat(q_order, counts[q_order])

    # Authors: heavy-tailed activity and following.
    n_authors = max(20, rows // 6)
    activity = rng.lognormal(0.0, 1.6, n_authors)
    followers = np.round(np.exp(rng.normal(4.5, 1.8, n_authors) + 0.6 * np.log(activity)))
    author = rng.choice(n_authors, rows, p=activity / activity.sum())
    author_tokens = [_author_token(rnd) for _ in range(n_authors)]

    # Answer times cluster days-to-months after the question; never after the crawl.
    delay_days = np.exp(rng.normal(np.log(15.0), 1.8, rows))
    created = q_time[row_question] + (delay_days * _DAY).astype(np.int64)
    late = created > _T_CRAWL
    created[late] = q_time[row_question][late] + (rng.random(int(late.sum())) * (_T_CRAWL - q_time[row_question][late])).astype(np.int64)
    answer_id = np.empty(rows, dtype=np.int64)
    answer_id[np.argsort(created, kind="stable")] = 10_000_000 + np.cumsum(rng.integers(1, 2500, rows))
    quality = rng.normal(0.0, 1.0, rows)

    # Answer lengths: lognormal number of body sentences around the requested mean.
    sentences = _sentence_pool(rnd, int(np.clip(rows * mean_answer_chars / 30 / 8, 20_000, 400_000)))
    sentence_chars = float(np.mean([len(s) for s in sentences])) + 0.6  # + mean separator length
    target = max(1.0, (mean_answer_chars - 25) / sentence_chars)
    n_sentences = np.clip(np.round(np.exp(rng.normal(np.log(target) - 0.5, 1.0, rows))), 1, 30 * target + 1).astype(np.int64)

    # Planted near-duplicates, each within one write chunk (so the copy can be rendered from its source).
    dup_kind = np.zeros(rows, dtype=np.int8)
    dup_source = np.full(rows, -1, dtype=np.int64)
    quote_partner = np.full(rows, -1, dtype=np.int64)
    dup_kind[reasked[row_question]] = DUP_KINDS.index("reasked_question")
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(rows, start + CHUNK_ROWS)
        eligible = start + np.flatnonzero(~reasked[row_question[start:stop]])
        eligible = eligible[rng.permutation(len(eligible))]
        n_copies = int(round(0.03 * len(eligible)))
        n_quote_pairs = int(round(0.003 * len(eligible)))
        copies = eligible[:n_copies]
        quoted = eligible[n_copies : n_copies + 2 * n_quote_pairs]
        sources = eligible[n_copies + 2 * n_quote_pairs :]
        sources = sources[n_sentences[sources] >= 8]  # long enough that a prefix/suffix stays a near-copy
        if len(sources) == 0:
            continue
        dup_kind[copies] = rng.choice([1, 2, 3], len(copies), p=[0.35, 0.35, 0.30])
        dup_source[copies] = rng.choice(sources, len(copies))
        # A quarter of copies go to the same question as their source when it has another eligible answer.
        same_question: dict[int, list[int]] = {}
        for s in sources.tolist():
            same_question.setdefault(int(row_question[s]), []).append(s)
        for c in copies[rng.random(len(copies)) < 0.25].tolist():
            options = same_question.get(int(row_question[c]), [])
            if options:
                dup_source[c] = options[int(rng.integers(len(options)))]
        dup_kind[quoted] = DUP_KINDS.index("shared_quote")
        quote_partner[quoted[0::2]] = quoted[1::2]
        quote_partner[quoted[1::2]] = quoted[0::2]
    is_copy = dup_source >= 0
    quality[is_copy] = quality[dup_source[is_copy]]  # same content, same true quality
    author[is_copy] = author[dup_source[is_copy]]  # cross-posts come from the same author
    root = np.where(is_copy, dup_source, np.arange(rows))
    cluster_min = answer_id.copy()
    np.minimum.at(cluster_min, root, answer_id)
    answer_cluster = cluster_min[root]
    is_source = np.zeros(rows, dtype=bool)
    is_source[dup_source[is_copy]] = True

    # Malformed rows (~1%), never part of a planted cluster.
    malformed = np.zeros(rows, dtype=np.int8)
    clean = np.flatnonzero((dup_kind == 0) & ~is_source)
    bad = rng.choice(clean, min(len(clean), int(round(0.01 * rows))), replace=False)
    malformed[bad] = rng.choice([1, 2, 3, 4], len(bad), p=[0.4, 0.15, 0.15, 0.3])

    # Upvotes: quality + question popularity + author following + exposure (rank and lateness).
    order = np.lexsort((created, row_question))
    sorted_q = row_question[order]
    group_start = np.r_[0, np.flatnonzero(np.diff(sorted_q)) + 1]
    group_sizes = np.diff(np.r_[group_start, rows])
    rank = np.empty(rows, dtype=np.int64)
    rank[order] = np.arange(rows) - np.repeat(group_start, group_sizes)
    first_answer = np.repeat(created[order][group_start], group_sizes)
    days_after_first = np.empty(rows)
    days_after_first[order] = (created[order] - first_answer) / _DAY
    log_rate = (
        1.0
        + q_popularity[row_question]
        + 1.0 * quality
        + 0.2 * np.log1p(followers[author])
        - 0.3 * np.log1p(rank)
        - 0.35 * np.log1p(days_after_first / 7.0)
        + rng.normal(0.0, 0.3, rows)
    )
    true_votes = rng.poisson(np.exp(np.minimum(log_rate, np.log(3e5)))).astype(np.int64)

    # How METADATA writes the count, and what that text denotes (万/w rounded to 1,000s, k to 100s).
    v = true_votes
    allowed = np.stack(
        [
            np.ones(rows, bool), (v > 0) & (v < 10_000), (v > 0) & (v < 10_000), v >= 10_000, v == 0,
            np.ones(rows, bool), v >= 1_000, v >= 10_000,
        ],
        axis=1,
    )
    upvote_form = _choose_forms(rng, allowed, [0.2, 0.3, 0.3, 0.5, 0.8, 0.1, 0.12, 0.15]).astype(np.int8)
    for start in range(0, rows, CHUNK_ROWS):  # every form that fits some row appears in every chunk
        for form in range(len(UPVOTE_FORMS)):
            chunk_forms = upvote_form[start : start + CHUNK_ROWS]
            if not (chunk_forms == form).any() and np.bincount(chunk_forms).max() > 1:
                candidates = start + np.flatnonzero(allowed[start : start + CHUNK_ROWS, form])
                candidates = candidates[np.bincount(chunk_forms, minlength=len(UPVOTE_FORMS))[upvote_form[candidates]] > 1]
                if len(candidates):
                    upvote_form[candidates[rng.integers(len(candidates))]] = form
    upvotes = v.copy()
    in_thousands = (upvote_form == UPVOTE_FORMS.index("wan")) | (upvote_form == UPVOTE_FORMS.index("w"))
    upvotes[in_thousands] = (v[in_thousands] + 500) // 1000 * 1000
    in_hundreds = upvote_form == UPVOTE_FORMS.index("k")
    upvotes[in_hundreds] = (v[in_hundreds] + 50) // 100 * 100

    time_form = rng.choice(len(TIME_FORMS), rows, p=[0.45, 0.2, 0.15, 0.1, 0.05, 0.05]).astype(np.int8)
    question_id_form = rng.choice(3, rows, p=[0.4, 0.4, 0.2]).astype(np.int8)
    answer_id_form = rng.choice(3, rows, p=[0.4, 0.4, 0.2]).astype(np.int8)
    ascii_json = rng.random(rows) < 0.1

    return _Plan(
        title=titles, question_id=question_id, question_group=question_group, reasked=reasked,
        author_token=author_tokens, row_question=row_question, answer_id=answer_id, answer_cluster=answer_cluster,
        author=author, quality=quality, created=created, n_sentences=n_sentences, dup_kind=dup_kind,
        dup_source=dup_source, quote_partner=quote_partner, malformed=malformed, upvotes=upvotes,
        upvote_form=upvote_form, time_form=time_form, question_id_form=question_id_form,
        answer_id_form=answer_id_form, ascii_json=ascii_json, sentences=sentences,
    )


def _decimal(tenths: int) -> str:
    """12 -> "1.2", 30 -> "3" (how Zhihu prints 1.2 万 / 3 万)."""
    return f"{tenths // 10}.{tenths % 10}" if tenths % 10 else str(tenths // 10)


def _upvote_value(form: int, denoted: int, rnd: random.Random) -> int | str:
    name = UPVOTE_FORMS[form]
    zero_width = "\u200b" if rnd.random() < 0.5 else ""
    if name == "int":
        return denoted
    if name == "button":
        return f"赞同 {denoted}"
    if name == "button_zw":
        return f"\u200b赞同 {denoted}"
    if name == "wan":
        return f"{zero_width}赞同 {_decimal(denoted // 1000)} 万"
    if name == "bare":
        return f"{zero_width}赞同"
    if name == "comma":
        return f"{denoted:,}"
    if name == "k":
        return f"{_decimal(denoted // 100)}k"
    return f"{_decimal(denoted // 1000)}w"


def _id_value(form: int, value: int) -> int | float | str:
    """An id as pandas-era exports wrote it: 59530469, 59530469.0 or "59530469"."""
    return {"int": value, "float": float(value), "str": str(value)}[ID_FORMS[form]]


def _crosspost(rnd: random.Random, text: str) -> str:
    prefix = rnd.choice(_PREFIXES) if rnd.random() < 0.75 else ""
    suffix = ""
    if not prefix or rnd.random() < 0.5:
        date = f"{rnd.randint(2016, 2023)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
        suffix = rnd.choice(_SUFFIXES).format(date=date, hh=rnd.randrange(24), mm=rnd.randrange(60))
    return prefix + text + suffix


def _punct_edit(rnd: random.Random, text: str) -> str:
    positions = [m.start() for m in _PUNCT_RE.finditer(text)]
    chars = list(text) if positions else list(text + "。")
    positions = positions or [len(text)]
    for pos in rnd.sample(positions, min(len(positions), rnd.randint(1, 3))):
        chars[pos] = rnd.choice(_PUNCT_EDITS[chars[pos]]) if rnd.random() < 0.85 else ""
    return "".join(chars)


def _render_chunk(plan: _Plan, seed: int, start: int, stop: int) -> tuple[pa.Table, pl.DataFrame]:
    """Text and METADATA for rows [start, stop), plus their truth rows."""
    rng = np.random.default_rng([seed, start // CHUNK_ROWS, 7])
    rnd = random.Random(seed * 100_003 + start // CHUNK_ROWS)
    n = stop - start
    pool = plan.sentences
    pool_size = len(pool)
    tokens_pool = pool + _SEPARATORS

    # Body: sentences from the pool interleaved with separators (mostly empty, sometimes paragraph breaks).
    n_body = plan.n_sentences[start:stop].copy()
    shared_quote = plan.quote_partner[start:stop] >= 0
    n_body[shared_quote] = np.maximum(n_body[shared_quote], 24)  # own text well longer than the shared quote
    total = int(n_body.sum())
    tokens = np.empty(2 * total, dtype=np.int64)
    tokens[0::2] = rng.integers(0, pool_size, total)
    tokens[1::2] = pool_size + rng.choice(len(_SEPARATORS), total, p=_SEPARATOR_P)
    token_list = tokens.tolist()
    bounds = np.r_[0, np.cumsum(2 * n_body)].tolist()

    texts: list[str | None] = []
    for i in range(n):
        opener = _opener(rnd) + ("\n\n" if rnd.random() < 0.5 else "")
        body = token_list[bounds[i] : bounds[i + 1]]
        texts.append(opener + "".join(map(tokens_pool.__getitem__, body)))

    # Shared quote: both answers quote the same 150+ char passage at some point but otherwise differ.
    for row in np.flatnonzero(shared_quote).tolist():
        partner = int(plan.quote_partner[start + row])
        if partner < start + row:
            continue
        quote = ""
        while len(quote) < 150:
            quote += pool[rnd.randrange(pool_size)]
        source = rnd.choice(_QUOTE_SOURCES)
        for r in (row, partner - start):
            text = texts[r]
            assert text is not None
            cut = text.find("。", rnd.randrange(len(text) // 2 + 1)) + 1
            texts[r] = text[:cut] + f"\n\n正如{source}所说：“{quote}”\n\n" + text[cut:]

    # Planted copies, rendered from their (already final) source text.
    for row in np.flatnonzero(plan.dup_source[start:stop] >= 0).tolist():
        text = texts[int(plan.dup_source[start + row]) - start]
        assert text is not None
        kind = DUP_KINDS[plan.dup_kind[start + row]]
        if kind == "crosspost_prefix_suffix":
            text = _crosspost(rnd, text)
        elif kind == "punct_edit":
            text = _punct_edit(rnd, text)
        texts[row] = text

    metadata: list[str] = []
    iso = np.datetime_as_string(plan.created[start:stop].astype("datetime64[s]"), unit="s").tolist()
    truth_created: list[int | None] = []
    for i in range(n):
        r = start + i
        q = int(plan.row_question[r])
        time_form = TIME_FORMS[plan.time_form[r]]
        epoch = int(plan.created[r])
        meta: dict[str, object] = {
            "question_id": _id_value(int(plan.question_id_form[r]), int(plan.question_id[q])),
            "answer_id": _id_value(int(plan.answer_id_form[r]), int(plan.answer_id[r])),
            "author_id": "https://www.zhihu.com/people/" + plan.author_token[int(plan.author[r])],
            "upvotes": _upvote_value(int(plan.upvote_form[r]), int(plan.upvotes[r]), rnd),
        }
        time_value = {"iso_ms": iso[i] + ".000Z", "iso": iso[i] + "Z", "epoch_s": epoch, "epoch_ms": epoch * 1000, "empty": ""}
        if time_form != "missing":
            meta["answer_creation_time"] = time_value[time_form]
        truth_created.append(None if time_form in ("empty", "missing") else epoch * 1_000_000)

        defect = MALFORMED_KINDS[plan.malformed[r]]
        if defect == "null_question_id":
            meta["question_id"] = None
        elif defect == "null_answer_id":
            meta["answer_id"] = None
        elif defect == "blank_response":
            texts[i] = rnd.choice([None, "", "   ", "\u200b", " \n\t "])
        encoded = json.dumps(meta, ensure_ascii=bool(plan.ascii_json[r]))
        if defect == "invalid_json":
            encoded = encoded[: rnd.randrange(1, len(encoded) - 1)] if rnd.random() < 0.7 else str(meta)
        metadata.append(encoded)

    data = pa.table(
        {
            "INSTRUCTION": pa.array([plan.title[q] for q in plan.row_question[start:stop].tolist()], pa.string()),
            "RESPONSE": pa.array(texts, pa.string()),
            "SOURCE": pa.array(["Zhihu"] * n, pa.string()),
            "METADATA": pa.array(metadata, pa.string()),
        }
    )
    questions = plan.row_question[start:stop]
    truth = pl.DataFrame(
        {
            "row": pl.Series(np.arange(start, stop), dtype=pl.Int64),
            "question_id": pl.Series(plan.question_id[questions], dtype=pl.Int64),
            "answer_id": pl.Series(plan.answer_id[start:stop], dtype=pl.Int64),
            "quality": pl.Series(plan.quality[start:stop], dtype=pl.Float64),
            "question_group": pl.Series(plan.question_group[questions], dtype=pl.Int64),
            "answer_cluster": pl.Series(plan.answer_cluster[start:stop], dtype=pl.Int64),
            "dup_kind": pl.Series([DUP_KINDS[k] for k in plan.dup_kind[start:stop].tolist()], dtype=pl.String),
            "malformed": pl.Series([MALFORMED_KINDS[k] for k in plan.malformed[start:stop].tolist()], dtype=pl.String),
            "upvotes": pl.Series(plan.upvotes[start:stop], dtype=pl.Int64),
            "created_at": pl.Series(truth_created, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        }
    )
    return data, truth


def _check(rows: int, mean_answer_chars: int) -> None:
    if rows < 1:
        raise UserError(f"--rows must be at least 1, got {rows}")
    if mean_answer_chars < 60:
        raise UserError(f"--mean-answer-chars must be at least 60, got {mean_answer_chars}")


def _chunks(rows: int, seed: int, mean_answer_chars: int) -> Iterator[tuple[pa.Table, pl.DataFrame]]:
    _check(rows, mean_answer_chars)
    plan = _plan(rows, seed, mean_answer_chars)
    with tqdm(total=rows, unit="rows", desc="synth", disable=rows < 50_000) as progress:
        for start in range(0, rows, CHUNK_ROWS):
            stop = min(rows, start + CHUNK_ROWS)
            yield _render_chunk(plan, seed, start, stop)
            progress.update(stop - start)


def generate(rows: int, seed: int, mean_answer_chars: int = MEAN_ANSWER_CHARS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(data, truth) in memory; use `write` for large sizes (it streams chunks to disk)."""
    parts = list(_chunks(rows, seed, mean_answer_chars))
    data = pl.from_arrow(pa.concat_tables([d for d, _ in parts]))
    assert isinstance(data, pl.DataFrame)
    return data, pl.concat([t for _, t in parts])


def write(
    rows: int, out: Path, seed: int, mean_answer_chars: int = MEAN_ANSWER_CHARS, write_truth: bool = True
) -> tuple[Path, Path | None]:
    """Write the data parquet (and its truth file) atomically; returns their paths (truth None if not written)."""
    out = Path(out)
    _check(rows, mean_answer_chars)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'synth.parquet'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    truth_out = truth_path_for(out)
    tmp_data = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_truth = truth_out.with_name(f".{truth_out.name}.tmp-{os.getpid()}")
    try:
        truths = []
        writer: pq.ParquetWriter | None = None
        for data, truth in _chunks(rows, seed, mean_answer_chars):
            if writer is None:
                writer = pq.ParquetWriter(tmp_data, data.schema, compression="zstd")
            writer.write_table(data, row_group_size=CHUNK_ROWS)
            truths.append(truth)
        assert writer is not None
        writer.close()
        if write_truth:
            pl.concat(truths).write_parquet(tmp_truth, compression="zstd")
            os.replace(tmp_truth, truth_out)
        os.replace(tmp_data, out)
    finally:
        tmp_data.unlink(missing_ok=True)
        tmp_truth.unlink(missing_ok=True)
    return out, truth_out if write_truth else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zhihu_rlhf.synth",
        description="Write a synthetic Zhihu-KOL-shaped parquet and its truth file (<stem>.truth.parquet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", type=int, required=True, help=f"number of rows (the real Zhihu-KOL has {FULL_ROWS:,})")
    parser.add_argument("--out", type=Path, required=True, help="data parquet to write; truth goes to <stem>.truth.parquet")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed and options -> identical bytes)")
    parser.add_argument("--mean-answer-chars", type=int, default=MEAN_ANSWER_CHARS, help="mean answer length in characters (heavy-tailed)")
    parser.add_argument("--no-truth", action="store_true", help="do not write the truth file")
    args = parser.parse_args(argv)
    options = SynthOptions(rows=args.rows, out=args.out, seed=args.seed, mean_answer_chars=args.mean_answer_chars, write_truth=not args.no_truth)
    data_path, truth_path = write(options.rows, options.out, options.seed, options.mean_answer_chars, options.write_truth)
    print(f"wrote {data_path}" + (f" and {truth_path}" if truth_path else ""))
    return 0


if __name__ == "__main__":
    cli_main(main)
