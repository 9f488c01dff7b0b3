"""The Chinese text of synthetic rows: answer sentences, openers, question titles, re-asked titles, and
the edits that make near-duplicate copies. All draws come from a `random.Random` the caller passes in,
so the same seed gives the same text.

Vocabulary: sentences and titles are drawn from a large combinatorial space (slots x slots x numbers
x random names), so different answers are never near-identical by accident. The one deliberate
exception are the shared title templates (`template_titles`), which exist to plant hard negatives.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable

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
QUOTE_SOURCES = ["鲁迅", "一篇很火的文章", "《人类简史》", "某位老教授", "《穷查理宝典》", "一位前辈", "《原则》", "那本书里", "一位知乎大V", "《金字塔原理》"]

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
SEPARATORS = ["", "\n\n", "\n", "\n\n\n\n", " \n", "\n \n", "\n\n"]
SEPARATOR_P = [0.70, 0.14, 0.06, 0.02, 0.03, 0.02, 0.03]
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
CROSSPOST_PREFIXES = ("谢邀。", "谢邀，人在美国，刚下飞机。", "谢邀\n\n", "泻药。", "利益相关：无。\n", "之前在别的问题下答过，搬运过来。\n\n", "谢邀～\n")
_SUFFIXES = ["\n编辑于 {date}", "\n\n发布于 {date} {hh:02d}:{mm:02d}", "\n\n（完）", "\n——转载请注明出处", "\n\n以上。\n编辑于 {date}"]
_PUNCT_EDITS = {"，": [",", "、", "。"], "。": [".", "！", "，"], "！": ["!", "。"], "？": ["?"], "；": [";", "，"], "：": [":"]}
_PUNCT_RE = re.compile("[，。！？；：]")

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
opener = _filler(_OPENERS)
_event = _filler(_EVENTS)
_experience = _filler(_EXPERIENCES)
_title_of = _filler(_TITLE_TEMPLATES)


def sentence_pool(rnd: random.Random, size: int) -> list[str]:
    """Body sentences; ~8% carry noise that normalisation has to clean."""
    pool = []
    for _ in range(size):
        sentence = _sentence(rnd)
        if rnd.random() < 0.08:
            cut = rnd.randrange(1, len(sentence))
            sentence = sentence[:cut] + rnd.choice(_NOISE) + sentence[cut:]
        pool.append(sentence)
    return pool


def random_title(rnd: random.Random) -> str:
    """A question title from the large combinatorial space (no two are near-identical by accident)."""
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


def reask_title(rnd: random.Random, title: str) -> str:
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


def author_token(rnd: random.Random) -> str:
    """A Zhihu profile token: a 32-hex id or a pinyin slug such as `li-ming-42` (slugs can collide)."""
    if rnd.random() < 0.5:
        return f"{rnd.getrandbits(128):032x}"
    syllables = ["li", "wang", "zhang", "chen", "liu", "xiao", "ming", "hua", "jun", "yu", "lin", "feng", "tian", "yang", "an", "qing"]
    token = "-".join(rnd.choices(syllables, k=rnd.randint(2, 3)))
    return token + (f"-{rnd.randint(1, 99)}" if rnd.random() < 0.5 else "")


def crosspost(rnd: random.Random, text: str, prefixes: tuple[str, ...] = CROSSPOST_PREFIXES) -> str:
    """The answer cross-posted: one of `prefixes` (谢邀。 ...) and/or a suffix such as 编辑于 …."""
    prefix = rnd.choice(prefixes) if rnd.random() < 0.75 else ""
    suffix = ""
    if not prefix or rnd.random() < 0.5:
        date = f"{rnd.randint(2016, 2023)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
        suffix = rnd.choice(_SUFFIXES).format(date=date, hh=rnd.randrange(24), mm=rnd.randrange(60))
    return prefix + text + suffix


def punct_edit(rnd: random.Random, text: str) -> str:
    """The answer with one to three punctuation marks changed or removed."""
    positions = [m.start() for m in _PUNCT_RE.finditer(text)]
    chars = list(text) if positions else list(text + "。")
    positions = positions or [len(text)]
    for pos in rnd.sample(positions, min(len(positions), rnd.randint(1, 3))):
        chars[pos] = rnd.choice(_PUNCT_EDITS[chars[pos]]) if rnd.random() < 0.85 else ""
    return "".join(chars)


def distinct_tokens(tokens: list[str]) -> list[str]:
    """Profile tokens made unique (as on Zhihu): the n-th copy of a slug becomes `slug-u<n>`, a segment
    that `author_token` never writes, so it cannot collide with another slug."""
    copies: dict[str, int] = {}
    unique = []
    for token in tokens:
        copies[token] = copies.get(token, 0) + 1
        unique.append(token if copies[token] == 1 else f"{token}-u{copies[token]}")
    return unique


# ---------------------------------------------------------------------------------------------------
# Shared title templates: distinct questions whose titles differ in two or three characters
# (电影的未来会怎样？ vs 摄影的未来会怎样？), the hard negatives for question merging. Topics often share a
# character (电影/摄影/电力, 医学/医生), so one slot swapped can differ in a single character.

_TOPICS = [
    "电影", "摄影", "音乐", "美术", "编程", "金融", "医学", "法律", "会计", "考古", "物理", "化学", "数学", "哲学", "历史",
    "地理", "生物", "建筑", "设计", "动画", "漫画", "小说", "诗歌", "戏剧", "舞蹈", "书法", "围棋", "象棋", "篮球", "足球",
    "网球", "游泳", "滑雪", "登山", "跑步", "健身", "瑜伽", "烹饪", "烘焙", "咖啡", "茶叶", "红酒", "旅游", "留学", "考研",
    "考公", "教育", "护理", "律师", "医生", "电商", "物流", "外卖", "快递", "新闻", "广告", "营销", "销售", "保险", "证券",
    "基金", "期货", "房产", "装修", "家居", "汽车", "手机", "电脑", "芯片", "通信", "电力", "石油", "化工", "钢铁", "农业",
    "养殖", "林业", "渔业", "纺织", "服装", "珠宝", "美妆", "护肤", "香水", "宠物", "园艺", "航天", "航空", "船舶", "铁路",
    "地铁", "翻译", "外贸", "心理", "社工", "幼教", "体育", "电竞", "直播", "播客", "摇滚", "民谣", "爵士", "说唱", "钢琴",
    "吉他", "剪辑", "配音", "主播", "模特", "厨师", "司机", "保安", "会展", "咨询", "审计", "精算", "统计", "测绘", "气象",
]
_WHO = ["普通人", "大学生", "女生", "程序员", "中年人", "学渣", "文科生", "理科生", "宝妈", "退伍军人", "应届生", "小镇青年"]
_ADJECTIVES = ["贵", "难", "卷", "火", "少", "多", "便宜", "无聊", "小众", "内卷", "冷门", "赚钱", "辛苦", "普及", "年轻化"]
_YEARS = [str(y) for y in range(2008, 2024)]
_SHARED_TEMPLATES = [
    ("{topic}的未来会怎样？", ("topic",)),
    ("{year}年{who}学{topic}还有前途吗？", ("year", "who", "topic")),
    ("{city}的{topic}行业{year}年还值得进入吗？", ("city", "topic", "year")),
    ("为什么{city}的{topic}越来越{adj}了？", ("city", "topic", "adj")),
    ("{who}如何入门{topic}？", ("who", "topic")),
    ("{topic}和{other}哪个更适合{who}？", ("topic", "other", "who")),
    ("在{city}做{topic}一个月能赚多少钱？", ("city", "topic")),
    ("如何看待{year}年{topic}越来越{adj}？", ("year", "topic", "adj")),
    ("{who}转行做{topic}是一种怎样的体验？", ("who", "topic")),
    ("有哪些适合{who}的{topic}入门书？", ("who", "topic")),
]
_SLOT_VALUES = {"topic": _TOPICS, "other": _TOPICS, "who": _WHO, "adj": _ADJECTIVES, "year": _YEARS, "city": _CITIES}


def _slot_size(slot: str) -> int:
    return len(_SLOT_VALUES[slot]) - (slot == "other")  # "other" is never the topic itself


def _template_size(slots: tuple[str, ...]) -> int:
    size = 1
    for slot in slots:
        size *= _slot_size(slot)
    return size


TEMPLATE_TITLE_COUNT = sum(_template_size(slots) for _, slots in _SHARED_TEMPLATES)
"""How many distinct template titles exist (a world asking for more gets ordinary titles for the rest)."""


def template_titles(rnd: random.Random, count: int) -> list[str]:
    """`count` distinct titles drawn without replacement from the shared templates' slot combinations."""
    titles = []
    for index in rnd.sample(range(TEMPLATE_TITLE_COUNT), min(count, TEMPLATE_TITLE_COUNT)):
        for template, slots in _SHARED_TEMPLATES:
            size = _template_size(slots)
            if index < size:
                break
            index -= size
        values: dict[str, str] = {}
        picks: dict[str, int] = {}
        for slot in slots:  # "topic" comes before "other" in every template
            index, pick = divmod(index, _slot_size(slot))
            if slot == "other":
                pick += pick >= picks["topic"]
            picks[slot] = pick
            values[slot] = _SLOT_VALUES[slot][pick]
        titles.append(template.format(**values))
    return titles


# Cosmetic re-asks: the same question typed differently, never a content word changed.
_FULL_WIDTH = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}  # ASCII '!'..'~' -> ＡＢＣ, ２０２１
_HALF_WIDTH = {"？": "?", "，": ",", "！": "!", "：": ":", "（": "(", "）": ")"}
_COSMETIC_EDITS = ["width", "double_mark", "drop_mark", "space", "qingwen", "ma"]


def _cosmetic_edit(rnd: random.Random, title: str, edit: str) -> str:
    if edit == "width":
        flipped = [i for i, ch in enumerate(title) if ch in _HALF_WIDTH or ch in _FULL_WIDTH]
        if not flipped:
            return title
        i = rnd.choice(flipped)
        return title[:i] + (_HALF_WIDTH.get(title[i]) or _FULL_WIDTH[title[i]]) + title[i + 1 :]
    if edit == "double_mark":
        return title + rnd.choice(["？", "?"]) if title.endswith(("？", "?")) else title + "？？"
    if edit == "drop_mark":
        return title.rstrip("？?")
    if edit == "space":
        i = rnd.randrange(len(title) + 1)
        return title[:i] + rnd.choice([" ", "  ", "\u3000"]) + title[i:]
    if edit == "qingwen":
        return "请问" + title
    body = title.rstrip("？? \u3000")  # "ma": a trailing 吗 before the question mark (and any trailing space)
    return title if body.endswith("吗") else body + "吗" + title[len(body) :]


def cosmetic_reask(rnd: random.Random, title: str) -> str:
    """The same question re-asked with one or two cosmetic edits: punctuation width (？ vs ?, full-width
    letters and digits), a doubled or missing question mark, spaces, a leading 请问 or a trailing 吗."""
    new = title
    while new == title:
        edits = rnd.sample(_COSMETIC_EDITS, rnd.choice([1, 1, 2]))
        if "double_mark" in edits and "drop_mark" in edits:
            continue
        new = title
        for edit in edits:
            new = _cosmetic_edit(rnd, new, edit)
    return new


def join_paragraphs_with_spaces(text: str) -> str:
    """Every line break (with the blanks around it) as one space, as the scraper joined `<p>` texts."""
    return _LINE_BREAK_RUN.sub(" ", text)


_LINE_BREAK_RUN = re.compile(r"\s*\n\s*")
