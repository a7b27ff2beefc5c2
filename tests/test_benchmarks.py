"""Benchmark readers (local official layout and hub), validation, subject categories, caching."""
from __future__ import annotations

import re

import datasets
import pytest

from zhtune.data import benchmarks as B
from zhtune.data.check import check_data_dir
from zhtune.data.benchmarks import CATEGORIES, UserError, load_benchmark


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    # The hub cache is keyed on (benchmark, subject, split): a fake hub must not leak between tests.
    B.clear_cache()
    monkeypatch.delenv("ZHTUNE_DATA_DIR", raising=False)
    yield
    B.clear_cache()


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("benchmark,split,subjects,rows", [
    ("ceval", "val", 52, 1346), ("ceval", "dev", 52, 260), ("cmmlu", "test", 67, 11582),
    ("mmlu", "test", 57, 14042), ("mmlu", "val", 57, 1531), ("gsm8k", "test", 1, 1319),
    ("gsm8k", "train", 1, 7473),
])
def test_real_counts(shared_data, benchmark, split, subjects, rows):
    qs = load_benchmark(benchmark, split, data_dir=shared_data)
    assert len(qs) == rows
    assert len({q.subject for q in qs}) == subjects
    assert len({q.key for q in qs}) == rows  # keys pair questions across runs: must be unique
    assert all(q.answer is not None and q.split == split for q in qs)
    if benchmark != "gsm8k":
        assert all(q.answer in "ABCD" and len(q.choices) == 4 for q in qs)
    else:
        assert all("####" in q.answer for q in qs)


def test_default_split_and_order(shared_data):
    assert [B.default_split(b) for b in B.BENCHMARKS] == ["val", "test", "test", "test"]
    qs = load_benchmark("ceval", data_dir=shared_data)
    subjects = [q.subject for q in qs]
    assert subjects == sorted(subjects)  # grouped by subject name
    first = [q for q in qs if q.subject == "computer_network"]
    assert [q.id for q in first] == [str(i) for i in range(len(first))]  # file order within a subject
    assert first[0].question.startswith("使用位填充方法") and first[0].answer == "C"
    assert qs == load_benchmark("ceval", data_dir=shared_data)  # deterministic


def test_env_var_is_the_default_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("ZHTUNE_DATA_DIR", str(shared_data))
    assert len(load_benchmark("mmlu", subjects=["anatomy"])) == 135


def test_subjects_filter_and_unknown_subject(shared_data):
    qs = load_benchmark("mmlu", data_dir=shared_data, subjects=["virology", "anatomy"])
    assert [q.subject for q in qs][0] == "anatomy" and {q.subject for q in qs} == {"anatomy", "virology"}
    with pytest.raises(UserError) as err:
        load_benchmark("mmlu", data_dir=shared_data, subjects=["anatomy", "astrology"])
    msg = str(err.value)
    assert "'astrology'" in msg and "abstract_algebra" in msg and "world_religions" in msg


def test_ceval_test_needs_no_answers_and_scoring_it_is_refused(shared_data):
    with pytest.raises(UserError) as err:
        load_benchmark("ceval", "test", data_dir=shared_data)
    msg = str(err.value)
    assert "not public" in msg and "'val'" in msg and "cevalbenchmark.com" in msg
    qs = load_benchmark("ceval", "test", data_dir=shared_data, require_answers=False)
    assert len(qs) == 12342 and all(q.answer is None for q in qs)


def test_unknown_benchmark_and_split(shared_data):
    with pytest.raises(UserError, match="unknown benchmark 'arc'"):
        load_benchmark("arc", data_dir=shared_data)
    with pytest.raises(UserError, match="cmmlu has no split 'val'"):
        load_benchmark("cmmlu", "val", data_dir=shared_data)


def test_missing_benchmark_folder(tmp_path):
    with pytest.raises(UserError, match="no ceval/ folder"):
        load_benchmark("ceval", data_dir=tmp_path)


def test_few_shot_examples_are_the_first_n_of_dev(shared_data):
    dev = load_benchmark("cmmlu", "dev", data_dir=shared_data, subjects=["anatomy"])
    shots = B.few_shot_examples("cmmlu", "anatomy", 3, data_dir=shared_data)
    assert shots == dev[:3] and shots[0].question == "壁胸膜的分部不包括"
    assert B.few_shot_examples("mmlu", "anatomy", 0, data_dir=shared_data) == []
    train = B.few_shot_examples("gsm8k", "main", 2, data_dir=shared_data)
    assert [q.split for q in train] == ["train", "train"] and train[0].question.startswith("Natalia")
    with pytest.raises(UserError, match="has 5 examples; 6 shots requested"):
        B.few_shot_examples("ceval", "computer_network", 6, data_dir=shared_data)


# ----------------------------------------------------------------------------- categories


@pytest.mark.parametrize("benchmark,n", [("ceval", 52), ("cmmlu", 67), ("mmlu", 57)])
def test_categories_cover_every_subject(shared_data, benchmark, n):
    subjects = B.list_subjects(benchmark, shared_data)
    assert len(subjects) == n
    assert set(subjects) == set(B.known_subjects(benchmark))
    seen = set()
    for s in subjects:
        info = B.subject_info(benchmark, s)
        assert info.category in CATEGORIES, (s, info.category)
        assert re.search(r"[\u4e00-\u9fff]", info.name_zh), s
        assert info.name_en and info.name_en[0].isupper()
        seen.add(info.category)
    assert seen == set(CATEGORIES)  # each benchmark uses all four


def test_category_facts():
    assert B.subject_info("ceval", "computer_network") == B.SubjectInfo("Computer Network", "计算机网络", "STEM")
    # C-Eval's "Social Science" is written "Social Sciences" like the other benchmarks
    assert B.subject_info("ceval", "college_economics").category == "Social Sciences"
    assert B.subject_info("ceval", "law").category == "Humanities"
    # MMLU: business and health subjects are "other (business, health, misc.)"
    assert B.subject_info("mmlu", "professional_accounting").category == "Other"
    assert B.subject_info("mmlu", "high_school_statistics").category == "STEM"
    assert B.subject_info("mmlu", "moral_scenarios").category == "Humanities"
    assert B.subject_info("mmlu", "us_foreign_policy").name_en == "US Foreign Policy"
    # CMMLU: China-specific subjects keep their other group's category and a flag
    info = B.subject_info("cmmlu", "chinese_history")
    assert (info.category, info.china_specific, info.name_zh) == ("Humanities", True, "中国历史")
    assert B.subject_info("cmmlu", "traditional_chinese_medicine").category == "Other"
    assert not B.subject_info("cmmlu", "astronomy").china_specific
    assert sum(B.subject_info("cmmlu", s).china_specific for s in B.known_subjects("cmmlu")) == 15
    assert B.subject_info("gsm8k", "main").category == "Math"
    with pytest.raises(UserError, match="no subject 'astrology'"):
        B.subject_info("mmlu", "astrology")


def test_questions_carry_their_category(shared_data):
    qs = load_benchmark("cmmlu", data_dir=shared_data, subjects=["anatomy", "arts"])
    assert {(q.subject, q.category) for q in qs} == {("anatomy", "STEM"), ("arts", "Humanities")}


# ----------------------------------------------------------------------------- broken files


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_column_names_file_and_row(tmp_path):
    path = _write(tmp_path / "ceval/val/computer_network_val.csv",
                  "id,question,A,B,C,D,answer\n0,q0,a,b,c,d,A\n1,q1,a,b,c,B\n")
    with pytest.raises(UserError) as err:
        load_benchmark("ceval", data_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "row 3 (line 3)" in msg and "missing or extra column" in msg


def test_empty_question_names_file_and_row(tmp_path):
    # row 2 spans two lines (quoted newline), so the empty question is row 3 starting on line 4
    path = _write(tmp_path / "cmmlu/test/anatomy.csv",
                  ',Question,A,B,C,D,Answer\n0,"two\nlines",a,b,c,d,A\n1,  ,a,b,c,d,B\n')
    with pytest.raises(UserError) as err:
        load_benchmark("cmmlu", data_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "row 3 (line 4)" in msg and "empty question" in msg


def test_answer_outside_a_to_d_names_file_and_row(tmp_path):
    # MMLU files have no header: the first question is row 1
    path = _write(tmp_path / "mmlu/test/anatomy_test.csv",
                  'q0,a,b,c,d,A\n"q1, with a comma",a,"b ""quoted""",c,d,E\n')
    with pytest.raises(UserError) as err:
        load_benchmark("mmlu", data_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "row 2 (line 2)" in msg and "'E' is not one of A, B, C, D" in msg


def test_missing_header_column_and_missing_answer(tmp_path):
    _write(tmp_path / "ceval/val/law_val.csv", "id,question,A,B,C\n0,q,a,b,c\n")
    with pytest.raises(UserError, match=r"law_val.csv: row 1 \(header\): missing column\(s\) D"):
        load_benchmark("ceval", data_dir=tmp_path)
    _write(tmp_path / "ceval/val/law_val.csv", "id,question,A,B,C,D,answer\n0,q,a,b,c,d,\n")
    B.clear_cache()
    with pytest.raises(UserError, match=r"law_val.csv: row 2 \(line 2\): no answer"):
        load_benchmark("ceval", data_dir=tmp_path)
    assert load_benchmark("ceval", data_dir=tmp_path, require_answers=False)[0].answer is None


def test_good_csv_with_commas_quotes_and_newlines(tmp_path):
    _write(tmp_path / "mmlu/dev/anatomy_dev.csv",
           '"Which, of these?\nPick one.",x,"say ""hi""",z,"multi\nline",D\n')
    (q,) = load_benchmark("mmlu", "dev", data_dir=tmp_path)
    assert q.question == "Which, of these?\nPick one." and q.choices == ("x", 'say "hi"', "z", "multi\nline")
    assert (q.id, q.answer, q.key) == ("0", "D", "mmlu/anatomy/dev/0")


def test_gsm8k_line_errors(tmp_path):
    path = _write(tmp_path / "gsm8k/test.jsonl",
                  '{"question": "1+1?", "answer": "2\\n#### 2"}\n{"question": "x", "answer": "no marker"}\n')
    with pytest.raises(UserError) as err:
        load_benchmark("gsm8k", data_dir=tmp_path)
    assert str(path) in str(err.value) and "line 2" in str(err.value) and "####" in str(err.value)


def test_edited_file_is_read_again(tmp_path):
    path = _write(tmp_path / "mmlu/test/anatomy_test.csv", "q0,a,b,c,d,A\n")
    assert len(load_benchmark("mmlu", data_dir=tmp_path)) == 1
    _write(path, "q0,a,b,c,d,A\nq1,a,b,c,d,B\n")  # different size: a new cache key
    assert len(load_benchmark("mmlu", data_dir=tmp_path)) == 2


def test_check_data_dir_collects_every_problem(tmp_path):
    _write(tmp_path / "ceval/val/law_val.csv", "id,question,A,B,C,D,answer\n0,,a,b,c,d,A\n1,q,a,b,c,d,F\n")
    _write(tmp_path / "ceval/dev/law_dev.csv", "id,question,A,B,C,D,answer,explanation\n0,q,a,b,c,d,A,because\n")
    _write(tmp_path / "ceval/test/law_test.csv", "id,question,A,B,C,D\n0,q,a,b,c,d\n")
    _write(tmp_path / "mmlu/test/astrology_test.csv", "q,a,b,c,d,A\n")
    _write(tmp_path / "mmlu/test/anatomy_test.csv", "q,a,b,c,d,A\nq,a,b,c\n")
    report = check_data_dir(tmp_path)
    assert not report.ok
    text = "\n".join(report.errors)
    assert "law_val.csv: row 2 (line 2): empty question" in text
    assert "law_val.csv: row 3 (line 3): answer 'F'" in text
    assert "astrology" in text and "no category" in text
    assert "anatomy_test.csv: row 2 (line 2): 4 fields, expected 6" in text
    assert len(report.errors) == 4  # the unlabeled C-Eval test split is not an error
    assert report.count("ceval", "test").rows == 1 and report.count("ceval", "test").labeled == 0
    assert report.count("ceval", "val").rows == 0
    assert any("cmmlu" in w and "missing" in w for w in report.warnings)
    assert any("anatomy" in w and "0-shot" in w for w in report.warnings)  # no mmlu dev file


def test_check_data_dir_verifies_checksums(tmp_path):
    _write(tmp_path / "gsm8k/test.jsonl", '{"question": "1+1?", "answer": "#### 2"}\n')
    _write(tmp_path / "SHA256SUMS", "0" * 64 + "  ./gsm8k/test.jsonl\n")
    report = check_data_dir(tmp_path)
    assert report.errors == [f"{tmp_path / './gsm8k/test.jsonl'}: sha256 differs from SHA256SUMS"]


# ----------------------------------------------------------------------------- hub


class FakeHub:
    """Stands in for ``datasets.load_dataset``: serves small in-memory datasets, records calls."""

    def __init__(self, script_repos=()):
        self.calls = []
        self.script_repos = set(script_repos)
        self._built = {}  # building a Dataset takes ~10 ms: build each one once

    def __call__(self, repo, name=None, split=None, revision=None, **kwargs):
        self.calls.append((repo, name, split, revision))
        if repo in self.script_repos and revision != "refs/convert/parquet":
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {repo.split('/')[1]}.py")
        if (repo, name, split) not in self._built:
            self._built[repo, name, split] = datasets.Dataset.from_list(self.rows(repo, name, split))
        return self._built[repo, name, split]

    @staticmethod
    def rows(repo, name, split):
        if repo == "ceval/ceval-exam":
            rows = [{"id": i, "question": f"{name} {split} 问题{i}，含逗号", "A": "甲", "B": "乙", "C": "丙",
                     "D": "丁", "answer": "" if split == "test" else "ABCD"[i % 4],
                     "explanation": "解释" if split == "dev" else ""} for i in range(3)]
        elif repo == "haonan-li/cmmlu":
            rows = [{"Question": f"{name} {split} 题{i}", "A": "1", "B": "2", "C": "3", "D": "4",
                     "Answer": "BCDA"[i % 4]} for i in range(2)]
        elif repo == "cais/mmlu":
            rows = [{"question": f'{name} {split} "q{i}",\nnext', "subject": name,
                     "choices": ["w", "x, y", "z", "v"], "answer": i % 4} for i in range(4)]
        elif repo == "openai/gsm8k":
            rows = [{"question": f"{name} {split} sum {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"}
                    for i in range(5)]
        elif repo.startswith("BelleGroup/"):
            rows = [{"instruction": f"指令{i}", "input": "" if i % 2 else f"输入{i}",
                     "output": "" if i == 7 else f"输出{i}"} for i in range(30)]
        else:
            raise FileNotFoundError(f"Dataset '{repo}' doesn't exist on the Hub")
        return rows


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub(script_repos={"haonan-li/cmmlu"})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    return hub


def test_hub_reader_maps_records(fake_hub):
    qs = load_benchmark("mmlu", "val", subjects=["anatomy"])
    assert fake_hub.calls == [("cais/mmlu", "anatomy", "validation", None)]  # our "val" is the hub's
    assert [q.answer for q in qs] == ["A", "B", "C", "D"]  # 0-3 -> letters
    assert qs[0].choices == ("w", "x, y", "z", "v") and qs[0].category == "Other" and qs[1].id == "1"

    ceval = load_benchmark("ceval", subjects=["computer_network"])
    assert [(q.id, q.answer, q.split) for q in ceval] == [("0", "A", "val"), ("1", "B", "val"), ("2", "C", "val")]
    test = load_benchmark("ceval", "test", subjects=["law"], require_answers=False)
    assert [q.answer for q in test] == [None, None, None]

    # a script dataset is read from its parquet export
    cmmlu = load_benchmark("cmmlu", subjects=["arts"])
    assert [q.answer for q in cmmlu] == ["B", "C"] and cmmlu[0].question == "arts test 题0"
    assert fake_hub.calls[-2:] == [("haonan-li/cmmlu", "arts", "test", None),
                                   ("haonan-li/cmmlu", "arts", "test", "refs/convert/parquet")]

    soc = load_benchmark("gsm8k", "test_socratic")
    assert fake_hub.calls[-1] == ("openai/gsm8k", "socratic", "test", None)
    assert soc[2].answer.endswith("#### 4") and soc[2].subject == "main"


def test_hub_lists_every_known_subject_and_caches(fake_hub):
    assert len(B.list_subjects("cmmlu")) == 67 and B.list_subjects("gsm8k") == ["main"]
    first = load_benchmark("mmlu", subjects=["anatomy", "virology"])
    again = load_benchmark("mmlu", subjects=["anatomy", "virology"])
    assert first == again and len(fake_hub.calls) == 2  # second call served from the cache
    shots = B.few_shot_examples("mmlu", "anatomy", 2)
    assert [s.split for s in shots] == ["dev", "dev"] and fake_hub.calls[-1][2] == "dev"


def test_hub_bad_record_and_unreachable_hub(fake_hub, monkeypatch):
    def bad(repo, name=None, split=None, revision=None, **kw):
        return datasets.Dataset.from_list([{"question": "q", "subject": name, "choices": ["a", "b", "c", "d"],
                                            "answer": 5}])
    monkeypatch.setattr(datasets, "load_dataset", bad)
    with pytest.raises(UserError, match=r"hub cais/mmlu \(config anatomy, split test\): record 1: answer '5'"):
        load_benchmark("mmlu", subjects=["anatomy"])

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="could not load ceval/ceval-exam.*ZHTUNE_DATA_DIR"):
        load_benchmark("ceval", subjects=["law"])
