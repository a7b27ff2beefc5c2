"""`zhtune run` between stages: the trained model is freed before evaluation loads another, and the
memory held at each stage boundary is recorded in the run's timings.json."""
from __future__ import annotations

import weakref

from experiment_helpers import tiny_config
from zhtune.config import config_from_dict
from zhtune.experiment import STAGES, run_experiment
from zhtune.io import read_json


def test_trained_model_freed_before_evaluation_and_memory_recorded(tiny_llama_dir, shared_data, tmp_path,
                                                                     monkeypatch):
    import zhtune.eval.suite as suite
    import zhtune.train.lora as lora

    trained, alive_when_eval_loads = [], []
    real_setup_model, real_run_eval = lora.setup_model, suite.run_eval

    def tracked_setup_model(run, data):
        model = real_setup_model(run, data)
        trained.append(weakref.ref(model.model))
        return model

    def checked_run_eval(*args, **kwargs):
        if trained:  # the adapter's evaluation, after training
            alive_when_eval_loads.append(trained[0]() is not None)
        return real_run_eval(*args, **kwargs)

    monkeypatch.setattr(lora, "setup_model", tracked_setup_model)
    monkeypatch.setattr(suite, "run_eval", checked_run_eval)
    raw = tiny_config(tiny_llama_dir, tmp_path / "run", tmp_path / "baselines")
    result = run_experiment(config_from_dict(raw), data_dir=shared_data)
    assert result.ran == list(STAGES)
    assert len(trained) == 1 and alive_when_eval_loads == [False]

    timings = read_json(tmp_path / "run" / "timings.json")
    assert list(timings["seconds_by_stage"]) == list(STAGES)
    assert timings["total_seconds"] == round(sum(timings["seconds_by_stage"].values()), 3)
    assert list(timings["memory_after_stage"]) == list(STAGES)
    for snap in [timings["memory_at_start"], *timings["memory_after_stage"].values()]:
        assert 0 < snap["rss_mb"] <= snap["peak_rss_mb"]
        assert "cuda_allocated_mb" not in snap  # no GPU here: only what was measured is written
