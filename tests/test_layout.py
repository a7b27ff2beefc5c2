"""A data folder composed from per-benchmark paths (the original scripts' --ceval_path, --mmlu_path)."""
from __future__ import annotations

import pytest

from zhtune.data.layout import compose_data_dir
from zhtune.errors import UserError


def test_no_override_keeps_the_data_folder(shared_data, tmp_path):
    assert compose_data_dir(str(shared_data), {"ceval": None}, tmp_path) == str(shared_data)
    assert not (tmp_path / "data-links").exists()


def test_links_replace_one_benchmark_and_keep_the_rest(shared_data, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "ceval"
    (elsewhere / "val").mkdir(parents=True)
    out = tmp_path / "out"
    links = compose_data_dir(str(shared_data), {"ceval": str(elsewhere)}, out)
    assert links == str(out / "data-links")
    assert (out / "data-links" / "ceval").resolve() == elsewhere.resolve()
    assert (out / "data-links" / "mmlu").resolve() == (shared_data / "mmlu").resolve()
    # a data folder holding ceval/ is accepted as well as the benchmark folder itself
    again = compose_data_dir(None, {"ceval": str(shared_data)}, tmp_path / "again")
    assert (tmp_path / "again" / "data-links" / "ceval").resolve() == (shared_data / "ceval").resolve()
    assert again is not None


def test_a_path_that_is_no_benchmark_folder_is_an_error(tmp_path):
    with pytest.raises(UserError, match="--mmlu_path"):
        compose_data_dir(None, {"mmlu": str(tmp_path)}, tmp_path / "out")


def test_eval_reports_a_bad_row_before_loading_the_model(tmp_path, monkeypatch):
    """A broken benchmark file is an error naming the file and row before the model is loaded."""
    import zhtune.models.loading as loading
    from zhtune.config import EvalConfig, ModelConfig
    from zhtune.eval.suite import run_eval

    bad = tmp_path / "data" / "ceval" / "val" / "logic_val.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("id,question,A,B,C,D,answer\n0,q0,a,b,c,d,A\n1,q1,a,b,c,B\n", encoding="utf-8")
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded before the data was checked"))
    with pytest.raises(UserError) as err:
        run_eval(ModelConfig(name_or_path="builtin:smollm2-135m-instruct"),
                 EvalConfig(benchmarks=["ceval"], subjects=["logic"], perplexity=False),
                 tmp_path / "out", data_dir=tmp_path / "data", progress=False)
    assert str(bad) in str(err.value) and "row 3" in str(err.value)
