"""Instruction readers, bad-record reporting, cleaning, sampling, held-out split and English replay."""
from __future__ import annotations

import json

import pytest

from zhtune.config import DataConfig
from zhtune.data.instructions import (BadRecord, build_instruction_set, load_instructions,
                                      record_to_messages, replay_count)
from zhtune.errors import UserError


def test_reads_belle_jsonl_and_alpaca_array(shared_data):
    records, report = load_instructions(["belle/dev1K.json", "alpaca/alpaca_en_demo.json"], shared_data)
    by_source = {s["source"]: s for s in report.sources}
    assert by_source["belle/dev1K.json"]["records"] == 1000
    assert by_source["alpaca/alpaca_en_demo.json"]["records"] + by_source["alpaca/alpaca_en_demo.json"]["bad"] == 999
    first = records[0]
    assert first.id == "belle/dev1K.json:1"
    assert [m["role"] for m in first.messages] == ["user", "assistant"]
    assert first.messages[0]["content"].startswith("题目：小明每天早上花费10分钟")
    # Alpaca records with an input put it after the instruction, separated by a blank line.
    raw = json.loads((shared_data / "alpaca/alpaca_en_demo.json").read_text(encoding="utf-8"))
    i = next(i for i, r in enumerate(raw) if r["input"].strip())
    alpaca = [r for r in records if r.source == "alpaca/alpaca_en_demo.json"]
    rec = next(r for r in alpaca if r.messages[-1]["content"] == raw[i]["output"])
    assert rec.messages[0]["content"] == f"{raw[i]['instruction']}\n\n{raw[i]['input']}"


def test_bad_jsonl_records_reported_with_file_and_line(tmp_path):
    lines = [
        json.dumps({"instruction": "好", "input": "", "output": "对"}),            # 1 ok
        json.dumps({"instruction": "缺少输出", "input": ""}),                      # 2 missing output
        "{not json",                                                                # 3 invalid JSON
        "",                                                                         # 4 blank: skipped
        json.dumps({"instruction": "", "input": "", "output": "x"}),              # 5 empty instruction
        json.dumps({"instruction": "数字", "input": "", "output": 42}),            # 6 non-string
        json.dumps(["a", "list"]),                                                  # 7 not an object
        json.dumps({"question": "?", "answer": "!"}),                               # 8 unknown shape
        json.dumps({"instruction": "空", "input": "", "output": "  "}),            # 9 ok (empty output: filtered later)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records, report = load_instructions([str(path)])
    assert [r.id for r in records] == [f"{path}:1", f"{path}:9"]
    got = {(e["line"], e["reason"].split(" (")[0]) for e in report.bad_examples}
    assert got == {(2, "missing 'output'"), (3, "invalid JSON"), (5, "empty instruction"),
                   (6, "'output' is not a string"), (7, "not a JSON object"),
                   (8, "unknown record shape")}
    assert all(e["file"] == str(path) for e in report.bad_examples)
    assert sum(report.bad.values()) == 6
    assert report.to_dict()["bad_records"] == 6
    assert report.sources[0] == {"source": str(path), "path": str(path), "records": 2, "bad": 6}
    assert report.warnings and "6 bad instruction records" in report.warnings[0]


def test_json_array_lines_and_broken_array(tmp_path):
    good = tmp_path / "arr.json"
    good.write_text('[\n  {"instruction": "a", "input": "", "output": "b"},\n'
                    '  {"instruction": "c",\n   "input": ""},\n'
                    '  {"instruction": "d", "input": "", "output": "e"}\n]\n', encoding="utf-8")
    records, report = load_instructions([str(good)])
    assert [r.id for r in records] == [f"{good}:2", f"{good}:5"]  # the record on lines 3-4 is bad
    assert report.bad_examples == [{"file": str(good), "line": 3, "reason": "missing 'output'"}]

    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"instruction": "a", "input": "", "output": "b"},\n {"instruction": oops}\n]',
                      encoding="utf-8")
    with pytest.raises(UserError, match=r"broken\.json: line 3: not valid JSON"):
        load_instructions([str(broken)])


def test_unreadable_files_are_user_errors(tmp_path):
    junk = tmp_path / "junk.jsonl"
    junk.write_text("nope\nstill nope\n", encoding="utf-8")
    with pytest.raises(UserError, match="junk.jsonl"):
        load_instructions([str(junk)])
    all_bad = tmp_path / "allbad.jsonl"
    all_bad.write_text('{"foo": 1}\n{bar\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"allbad\.jsonl: no usable instruction record \(2 bad\)"):
        load_instructions([str(all_bad)])
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="bin.json: not UTF-8"):
        load_instructions([str(binary)])
    with pytest.raises(UserError, match="not found"):
        load_instructions(["belle/nonexistent.json"], tmp_path)


def test_multiturn_shapes():
    sharegpt = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"},
                                  {"from": "human", "value": "1+1=?"}, {"from": "assistant", "value": "2"}]}
    assert record_to_messages(sharegpt) == [
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"}]
    openai = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a"}]}
    assert [m["role"] for m in record_to_messages(openai)] == ["system", "user", "assistant"]
    belle = {"instruction": "Human: 今天天气如何？\nAssistant: 晴天。\nHuman: 明天呢？\nAssistant:",
             "input": "", "output": "下雨。"}
    assert record_to_messages(belle) == [
        {"role": "user", "content": "今天天气如何？"}, {"role": "assistant", "content": "晴天。"},
        {"role": "user", "content": "明天呢？"}, {"role": "assistant", "content": "下雨。"}]
    history = {"instruction": "再说一遍", "input": "", "output": "好的", "history": [["你好", "你好呀"]]}
    assert [m["content"] for m in record_to_messages(history)] == ["你好", "你好呀", "再说一遍", "好的"]
    for bad, reason in [
        ({"conversations": [{"from": "human", "value": "q"}]}, "does not end with an assistant"),
        ({"conversations": [{"from": "gpt", "value": "a"}]}, "does not start with a user"),
        ({"conversations": [{"from": "alien", "value": "q"}]}, "unknown speaker"),
        ({"conversations": [{"from": "human", "value": 3}]}, "not a string"),
        ({"conversations": []}, "non-empty list"),
    ]:
        with pytest.raises(BadRecord, match=reason):
            record_to_messages(bad)


def test_hub_dataset_via_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        return datasets.Dataset.from_list([
            {"instruction": "写一首诗", "input": "", "output": "床前明月光"},
            {"instruction": "", "input": "", "output": "无指令"},
            {"instruction": "计算1+1", "input": "", "output": "2"},
        ])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records, report = load_instructions(["BelleGroup/train_0.5M_CN"])
    assert calls == [("BelleGroup/train_0.5M_CN", "train")]
    assert [r.id for r in records] == ["BelleGroup/train_0.5M_CN:1", "BelleGroup/train_0.5M_CN:3"]
    assert report.bad_examples == [{"file": "BelleGroup/train_0.5M_CN", "line": 2,
                                    "reason": "empty instruction"}]

    def failing(name, split=None, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(UserError, match="BelleGroup/school_math_0.25M: could not load.*unreachable"):
        load_instructions(["BelleGroup/school_math_0.25M"])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_dedupe_empty_outputs_sampling_and_split_counts(tmp_path):
    rows = [{"instruction": f"问题{i}", "input": "", "output": f"答案{i}"} for i in range(100)]
    rows += [{"instruction": "问题5", "input": "", "output": "答案5"},          # exact duplicate
             {"instruction": " 问题6 ", "input": "", "output": "答案6\n"},      # duplicate after normalising
             {"instruction": "问题x", "input": "", "output": ""},               # empty output
             {"instruction": "问题y", "input": "", "output": "   "}]            # empty output
    _write_jsonl(tmp_path / "zh.jsonl", rows)
    cfg = DataConfig(train=["zh.jsonl"], sample_size=60, val_size=0.1, seed=3)
    s = build_instruction_set(cfg, tmp_path)
    c = s.report.counts
    assert c["read"] == 104 and c["empty_output"] == 2 and c["duplicates"] == 2
    assert c["not_sampled"] == 40 and c["validation"] == 6 and c["train"] == 54 and c["replay"] == 0
    assert len(s.train) == 54 and len(s.validation) == 6
    assert not {r.id for r in s.train} & {r.id for r in s.validation}
    again = build_instruction_set(cfg, tmp_path)
    assert [r.id for r in again.train] == [r.id for r in s.train]  # seeded: same records, same order
    other = build_instruction_set(cfg.model_copy(update={"seed": 4}), tmp_path)
    assert {r.id for r in other.train} != {r.id for r in s.train}


def test_english_replay_fraction(shared_data):
    cfg = DataConfig(train=["belle/dev1K.json"], sample_size=300, val_size=0.0, seed=1)
    cfg.replay.ratio = 0.25
    s = build_instruction_set(cfg, shared_data)
    c = s.report.counts
    assert c["train_main"] == 300 and c["replay"] == replay_count(300, 0.25) == 100
    assert c["train"] == 400 and c["replay_fraction_pct"] == 25.0
    english = [r for r in s.train if r.source == "alpaca/alpaca_en_demo.json"]
    assert len(english) == 100
    assert {s_["source"] for s_ in s.report.sources} == {"belle/dev1K.json", "alpaca/alpaca_en_demo.json"}
    # Mixed, not appended: English records are spread through the training order.
    positions = [i for i, r in enumerate(s.train) if r.source.startswith("alpaca")]
    assert positions[0] < 100 and positions[-1] > 300
