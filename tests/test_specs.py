"""Benchmark specs: the shipped ones validate, errors name the file and key, and a new benchmark is
one spec file."""
from __future__ import annotations


import pytest

from zhtune.data import benchmarks as B
from zhtune.data import prompts as P
from zhtune.data import specs as S
from zhtune.errors import UserError


def test_shipped_specs():
    assert S.list_specs() == ("ceval", "cmmlu", "mmlu", "gsm8k")
    counts = {name: len(S.load_spec(name).subjects) for name in S.list_specs()}
    assert counts == {"ceval": 52, "cmmlu": 67, "mmlu": 57, "gsm8k": 1}
    cmmlu = S.load_spec("cmmlu")
    assert sum("China specific" in s.groups for s in cmmlu.subjects.values()) == 15
    assert cmmlu.style("official").aggregation == "subjects" and cmmlu.style("lm-eval").aggregation == "questions"
    mmlu = S.load_spec("mmlu")
    assert (mmlu.category("anatomy", "lm-eval"), mmlu.category("anatomy", "official")) == ("STEM", "Other")
    assert S.load_spec("gsm8k").generation is not None
    with pytest.raises(UserError, match="unknown benchmark 'bbh'; known: ceval, cmmlu, mmlu, gsm8k"):
        S.load_spec("bbh")
    with pytest.raises(UserError, match="no 'cloze' formulation"):
        S.load_spec("gsm8k").formulation("lm-eval", "cloze")


def test_a_bad_spec_names_file_and_key():
    text = S._spec_files().joinpath("mmlu.yaml").read_text(encoding="utf-8")
    with pytest.raises(UserError, match=r"mmlu.yaml: splits: .*split 'testt' is not in all"):
        S.parse_spec(text.replace("  eval: test\n", "  eval: testt\n"), "mmlu.yaml")
    with pytest.raises(UserError, match=r"mmlu.yaml: styles\.lm-eval\.letter\.target_delimitr: Extra"):
        S.parse_spec(text.replace('      target_delimiter: " "\n', '      target_delimitr: " "\n', 1), "mmlu.yaml")
    with pytest.raises(UserError, match="does not end with its answer_cue"):
        S.parse_spec(text.replace('      answer_cue: "Answer:"\n', '      answer_cue: "A:"\n', 1), "mmlu.yaml")


TOY = '''name: toy
title: Toy
language: en
kind: multiple_choice
files:
  reader: csv
  path: "{split}/{subject}.csv"
  columns: {question: q, choices: [a, b, c, d], answer: gold}
hub: {repo: nobody/toy}
splits: {all: [dev, test], eval: test, few_shot: dev}
categories: [Other]
styles:
  lm-eval:
    reproduces: "nothing, a test"
    description: "Questions about {{ subject_words }}.\\n\\n"
    letter: {template: "Q: {{ question.strip() }}\\n(A) {{ A }} (B) {{ B }} (C) {{ C }} (D) {{ D }}\\nAnswer:", choices: [A, B, C, D], answer_cue: "Answer:"}
  official:
    reproduces: "nothing"
    cloze: {template: "Q: {{ question }}\\nAnswer:", answer_cue: "Answer:"}
subjects:
  small_things: {name_en: Small things, name_zh: 小东西, category: Other}
'''


def test_a_new_benchmark_is_one_file(tmp_path, monkeypatch):
    folder = tmp_path / "specs"  # the user's own spec folder, beside the shipped ones
    folder.mkdir()
    (folder / "toy.yaml").write_text(TOY, encoding="utf-8")
    monkeypatch.setenv(S.SPEC_PATH_ENV, str(folder))
    assert "toy" in S.list_specs() and S.list_specs()[:4] == ("ceval", "cmmlu", "mmlu", "gsm8k")
    try:
        data = tmp_path / "data" / "toy"
        for split, rows in (("dev", "q,a,b,c,d,gold\nOne?,1,2,3,4,A\n"),
                            ("test", "q,a,b,c,d,gold\n Two? ,x,y,z,w,C\nThree?,p,q,r,s,\n")):
            (data / split).mkdir(parents=True)
            (data / split / "small_things.csv").write_text(rows, encoding="utf-8")
        qs = B.load_benchmark("toy", data_dir=tmp_path / "data", require_answers=False)
        assert [q.key for q in qs] == ["toy/small_things/test/0", "toy/small_things/test/1"]
        shots = B.few_shot_examples("toy", "small_things", 1, data_dir=tmp_path / "data")
        assert P.choice_prompt("toy", "small_things", shots, qs[0]) == (
            "Questions about small things.\n\nQ: One?\n(A) 1 (B) 2 (C) 3 (D) 4\nAnswer: A\n\n"
            "Q: Two?\n(A) x (B) y (C) z (D) w\nAnswer:")
        assert P.continuations("toy", qs[0], "official", "cloze") == [" x", " y", " z", " w"]
        # bad input still names the file and the row
        with pytest.raises(UserError, match=r"small_things.csv: row 3 \(line 3\): no answer"):
            B.load_benchmark("toy", data_dir=tmp_path / "data")
    finally:
        S.clear_spec_cache()
        B.clear_cache()


def test_a_spec_folder_cannot_shadow_a_shipped_benchmark(tmp_path, monkeypatch):
    (tmp_path / "mmlu.yaml").write_text(TOY.replace("name: toy", "name: mmlu"), encoding="utf-8")
    monkeypatch.setenv(S.SPEC_PATH_ENV, str(tmp_path))
    with pytest.raises(UserError, match=r"mmlu.yaml: a benchmark named 'mmlu' is already defined"):
        S.list_specs()
    monkeypatch.setenv(S.SPEC_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(UserError, match="ZHTUNE_BENCHMARK_PATH: .*missing is not a folder"):
        S.load_spec("mmlu")
