"""Harness prompts, character for character, for one real subject of each benchmark."""
from __future__ import annotations

import pytest

from zhtune.data import benchmarks as B
from zhtune.data import prompts as P
from zhtune.data.specs import load_spec
from zhtune.models.families import get_family


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("ZHTUNE_DATA_DIR", raising=False)


def _first(shared_data, benchmark, subject):
    return B.load_benchmark(benchmark, data_dir=shared_data, subjects=[subject])[0]


def test_ceval_prompt_exact(shared_data):
    q = _first(shared_data, "ceval", "computer_network")
    item = ("使用位填充方法，以01111110为位首flag，数据为011011111111111111110010，求问传送时要添加几个0____\n"
            "A. 1\nB. 2\nC. 3\nD. 4\n答案：")
    shots = B.few_shot_examples("ceval", "computer_network", 2, data_dir=shared_data)
    # official (hkust-nlp/ceval): "考试" in the header, the letter right after the cue
    head = "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
    assert (P.choice_prefix("ceval", "computer_network", [], "official")
            + P.choice_item("ceval", q, False, "official")) == head + item
    assert P.choice_prompt("ceval", "computer_network", shots, q, "official") == (
        head
        + "下列设备属于资源子网的是____。\nA. 计算机软件\nB. 网桥\nC. 交换机\nD. 路由器\n答案：A\n\n"
        + "滑动窗口的作用是____。\nA. 流量控制\nB. 拥塞控制\nC. 路由控制\nD. 差错控制\n答案：A\n\n"
        + item)
    # lm-eval (the default): no "考试", target delimiter " " before the shots' letters
    assert P.choice_prompt("ceval", "computer_network", shots, q) == (
        "以下是中国关于计算机网络的单项选择题，请选出其中的正确答案。\n\n"
        + "下列设备属于资源子网的是____。\nA. 计算机软件\nB. 网桥\nC. 交换机\nD. 路由器\n答案： A\n\n"
        + "滑动窗口的作用是____。\nA. 流量控制\nB. 拥塞控制\nC. 路由控制\nD. 差错控制\n答案： A\n\n"
        + item)
    assert P.continuations("ceval", q) == [" A", " B", " C", " D"]
    assert P.continuations("ceval", q, "official") == ["A", "B", "C", "D"]


def test_cmmlu_prompt_exact(shared_data):
    q = _first(shared_data, "cmmlu", "anatomy")
    head = "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
    item = "女性生殖腺是\nA. 卵巢\nB. 前庭大腺\nC. 前庭球\nD. 乳腺\n答案："
    assert P.choice_prompt("cmmlu", "anatomy", [], q) == head + item
    shots = B.few_shot_examples("cmmlu", "anatomy", 2, data_dir=shared_data)
    assert P.choice_prompt("cmmlu", "anatomy", shots, q) == (
        head
        + "壁胸膜的分部不包括\nA. 肋胸膜\nB. 肺胸膜\nC. 膈胸膜\nD. 胸膜顶\n答案： B\n\n"
        + "属于蝶骨上的结构为\nA. 垂体窝\nB. 棘孔\nC. 破裂孔\nD. 视神经管\n答案： B\n\n"
        + item)
    # official (haonan-li/CMMLU mp_utils.py): 题目： ... 答案是：B
    assert P.choice_prompt("cmmlu", "anatomy", shots, q, "official") == (
        head
        + "题目：壁胸膜的分部不包括\nA. 肋胸膜\nB. 肺胸膜\nC. 膈胸膜\nD. 胸膜顶\n答案是：B\n\n"
        + "题目：属于蝶骨上的结构为\nA. 垂体窝\nB. 棘孔\nC. 破裂孔\nD. 视神经管\n答案是：B\n\n"
        + "题目：女性生殖腺是\nA. 卵巢\nB. 前庭大腺\nC. 前庭球\nD. 乳腺\n答案是：")


def test_cloze_prompts(shared_data):
    q = _first(shared_data, "mmlu", "abstract_algebra")
    shots = B.few_shot_examples("mmlu", "abstract_algebra", 1, data_dir=shared_data)
    assert P.choice_prompt("mmlu", "abstract_algebra", shots, q, formulation="cloze") == (
        "The following are questions (with answers) about abstract algebra.\n\n"
        "Question: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nAnswer: 1\n\n"
        "Question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q."
        "\nAnswer:")
    assert P.continuations("mmlu", q, formulation="cloze") == [" 0", " 4", " 2", " 6"]
    c = _first(shared_data, "ceval", "computer_network")
    assert P.choice_prompt("ceval", "computer_network", [], c, formulation="cloze") == (
        "以下是中国关于计算机网络考试的问题（附答案）。\n\n问题：使用位填充方法，以01111110为位首flag，"
        "数据为011011111111111111110010，求问传送时要添加几个0____\n答案：")
    assert P.continuations("ceval", c, formulation="cloze") == ["1", "2", "3", "4"]


def test_lm_eval_strips_the_question_only():
    q = B.Question("ceval", "law", "Humanities", "dev", "0", "\t 甲\n乙  \n", (" a ", "b\n", "c", "d"), "A")
    assert P.choice_item("ceval", q, True) == "甲\n乙\nA.  a \nB. b\n\nC. c\nD. d\n答案： A\n\n"
    assert P.choice_item("ceval", q, True, "official") == "\t 甲\n乙  \n\nA.  a \nB. b\n\nC. c\nD. d\n答案：A\n\n"


def test_mmlu_prompt_exact(shared_data):
    q = _first(shared_data, "mmlu", "abstract_algebra")
    head = "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    item = ("Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
            "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert P.choice_prompt("mmlu", "abstract_algebra", [], q) == head + item
    shots = B.few_shot_examples("mmlu", "abstract_algebra", 2, data_dir=shared_data)
    assert P.choice_prompt("mmlu", "abstract_algebra", shots, q) == (
        head
        + "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        + "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | "
          "If H and K are subgroups of G then HK is a subgroup of G.\n"
          "A. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n"
        + item)


def test_gsm8k_prompt_exact(shared_data):
    q = B.load_benchmark("gsm8k", data_dir=shared_data)[0]
    item = ("Question: Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
            "bakes muffins for her friends every day with four. She sells the remainder at the farmers' "
            "market daily for $2 per fresh duck egg. How much in dollars does she make every day at the "
            "farmers' market?\nAnswer:")
    assert P.generation_prefix("gsm8k", []) + P.generation_item(q) == item
    shots = B.few_shot_examples("gsm8k", "main", 2, data_dir=shared_data)
    assert P.generation_prefix("gsm8k", shots) + P.generation_item(q) == (
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?\n"
        "Answer: Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72\n\n"
        "Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
        "babysitting. How much did she earn?\n"
        "Answer: Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
        "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10\n\n"
        + item)


def test_gsm8k_cot_exemplars(shared_data):
    text = P.generation_prefix("gsm8k", B.few_shot_examples("gsm8k", "main", 3, data_dir=shared_data), cot=True)
    assert text.count("Question: ") == 8 and text.count("\nAnswer: ") == 8  # shots are ignored
    assert text.startswith("Question: There are 15 trees in the grove. Grove workers will plant trees")
    assert "Answer: There are 15 trees originally." in text
    answers = [e.answer for e in load_spec("gsm8k").generation.cot_exemplars]
    assert [a.rsplit("The answer is ", 1)[1] for a in answers] == ["6.", "5.", "39.", "8.", "9.", "29.", "33.", "8."]
    assert text.endswith("23 - 15 is 8. The answer is 8.\n\n")


def test_cues_and_continuations():
    assert [P.answer_prefix(b) for b in B.BENCHMARKS] == ["答案：", "答案：", "Answer:", "Answer:"]
    assert P.answer_prefix("cmmlu", "official") == "答案是："
    assert P.answer_continuation("ceval", "B") == " B" and P.answer_continuation("mmlu", "B") == " B"
    assert P.answer_continuation("ceval", "B", "official") == "B"
    q = B.Question("mmlu", "anatomy", "Other", "test", "0", "  Q?\n", (" a", "b ", "c", "d"), None)
    assert P.choice_item("mmlu", q, with_answer=False) == "Q?\nA.  a\nB. b \nC. c\nD. d\nAnswer:"
    with pytest.raises(ValueError, match="needs an answer"):
        P.choice_item("mmlu", q, with_answer=True)
    with pytest.raises(ValueError, match="not a multiple-choice benchmark"):
        P.choice_prefix("gsm8k", "main", [])


def test_wrap_chat_keeps_the_answer_cue_last(shared_data):
    from zhtune.testing import build_tokenizer

    tok = build_tokenizer("qwen2")
    q = _first(shared_data, "ceval", "computer_network")
    prompt = P.choice_prompt("ceval", "computer_network", [], q)
    wrapped = P.wrap_chat(tok, get_family("qwen2-instruct"), prompt)
    assert wrapped.endswith("D. 4<|im_end|>\n<|im_start|>assistant\n答案：")
    assert "<|im_start|>user\n以下是中国关于计算机网络的单项选择题" in wrapped
    assert wrapped.count("答案：") == 1  # the cue moved out of the user turn, not copied

    gsm = P.generation_item(B.load_benchmark("gsm8k", data_dir=shared_data)[0])
    assert P.wrap_chat(tok, get_family("qwen2-instruct"), gsm).endswith("<|im_start|>assistant\nAnswer:")

    # a base Llama-2 tokenizer has no chat format: the harness prompt is used as is
    assert P.wrap_chat(build_tokenizer("llama"), get_family("llama2"), prompt) == prompt
