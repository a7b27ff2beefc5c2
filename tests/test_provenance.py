"""Provenance (version, git commit, dirty tree) on every output, and pre-registration of a design."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from zhtune.artifacts import begin_stage, finish_stage, git_state, provenance
from zhtune.cli import app
from zhtune.config import config_from_dict, load_config
from zhtune.errors import UserError
from zhtune.io import read_json
from zhtune.registration import (check_registration, design_figures, design_hash, equivalence_probability,
                                 provenance_note, register, registration_path, registration_sentence)
from experiment_helpers import tiny_config

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / ".gitignore").write_text("runs/\n")
    (root / "code.py").write_text("x = 1\n")
    git(root, "add", ".")
    git(root, "commit", "-qm", "first")
    return root


# ----------------------------------------------------------------------------- provenance
def test_git_state_follows_the_checkout(repo, tmp_path):
    head = git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "code.py") == {"git_commit": head, "git_dirty": False}
    (repo / "new.py").write_text("untracked\n")  # untracked files are not a dirty tree
    assert git_state(repo / "code.py")["git_dirty"] is False
    (repo / "code.py").write_text("x = 2\n")
    assert git_state(repo / "code.py") == {"git_commit": head, "git_dirty": True}
    git(repo, "commit", "-qam", "second")
    assert git_state(repo / "code.py") == {"git_commit": git(repo, "rev-parse", "HEAD"), "git_dirty": False}
    # code that the checkout does not track (a package installed into an ignored folder) and code
    # outside any checkout have no commit
    (repo / "runs").mkdir()
    (repo / "runs" / "installed.py").write_text("")
    assert git_state(repo / "runs" / "installed.py") == {"git_commit": None, "git_dirty": None}
    (tmp_path / "loose.py").write_text("")
    assert git_state(tmp_path / "loose.py") == {"git_commit": None, "git_dirty": None}


def test_committed_outputs_and_docs_do_not_make_the_code_dirty(repo):
    """A run that resumes from outputs committed in the same repository rewrites them: that is not a
    change to the code. The package's folder and pyproject.toml are the code."""
    (repo / "pkg").mkdir()
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    (repo / "results").mkdir()
    (repo / "results" / "out.json").write_text("{}\n")
    (repo / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "code and outputs")
    code = repo / "pkg" / "code.py"
    (repo / "results" / "out.json").write_text('{"resumed": true}\n')
    (repo / "code.py").write_text("x = 3\n")  # outside the package: documentation, scripts
    assert git_state(code)["git_dirty"] is False
    (repo / "pyproject.toml").write_text("[project]\nname = 'p'\ndependencies = ['torch']\n")
    assert git_state(code)["git_dirty"] is True
    git(repo, "checkout", "--", "pyproject.toml")
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    assert git_state(code)["git_dirty"] is True


def test_a_resumed_stage_keeps_its_first_start(tmp_path, monkeypatch):
    import zhtune.artifacts as artifacts

    times = iter(["2026-12-03T15:57:10Z", "2026-12-03T16:42:49Z", "2026-12-03T17:00:00Z"])
    monkeypatch.setattr(artifacts, "utc_timestamp", lambda: next(times))
    stage = tmp_path / "eval"
    begin_stage(stage, "evaluate", "fp")
    (stage / "chunk.json").write_text("{}")
    begin_stage(stage, "evaluate", "fp")  # the same settings: resumed, the work kept
    marker = read_json(stage / "stage-started.json")
    assert marker["started"] == "2026-12-03T15:57:10Z" and (stage / "chunk.json").exists()
    assert [r["started"] for r in marker["resumed"]] == ["2026-12-03T16:42:49Z"]
    assert marker["resumed"][0]["provenance"] == provenance()
    begin_stage(stage, "evaluate", "other")  # other settings: a fresh start
    marker = read_json(stage / "stage-started.json")
    assert marker["started"] == "2026-12-03T17:00:00Z" and "resumed" not in marker
    assert not (stage / "chunk.json").exists()


def test_provenance_names_this_checkout():
    from zhtune import __version__

    prov = provenance()
    assert prov["zhtune_version"] == __version__
    src = Path(__file__).resolve().parents[1] / "src" / "zhtune" / "artifacts.py"
    import zhtune.artifacts

    if Path(zhtune.artifacts.__file__).resolve() != src:
        pytest.skip("zhtune is not imported from this checkout")
    assert prov["git_commit"] == git(src.parent, "rev-parse", "HEAD")
    assert isinstance(prov["git_dirty"], bool)


def test_stage_markers_and_comparison_record_provenance(tmp_path):
    from zhtune.analysis.forgetting import write_comparison

    begin_stage(tmp_path / "s", "train", "fp")
    finish_stage(tmp_path / "s", "train", "fp", 1.5)
    for marker in ("stage-started.json", "stage-finished.json"):
        assert read_json(tmp_path / "s" / marker)["provenance"] == provenance()

    class Fake:
        def to_dict(self):
            return {"n_questions": 3}

    written = read_json(write_comparison(Fake(), tmp_path / "comparison.json"))
    assert written == {"n_questions": 3, "provenance": provenance()}


def test_provenance_note():
    assert provenance_note({"zhtune_version": "1", "git_commit": "abcdef123", "git_dirty": True}) == \
        "Code: zhtune 1, commit abcdef1 with uncommitted changes."
    assert provenance_note({"zhtune_version": "1", "git_commit": None, "git_dirty": None}) == \
        "Code: zhtune 1, not from a git checkout."
    assert registration_sentence({"status": "unregistered"}) == "The design was not pre-registered."


# ----------------------------------------------------------------------------- design figures
def test_design_figures_reproduce_the_cpu_study_design():
    """configs/cpu-study.yaml's design: 1,600 Chinese questions at 10% discordance show "no gain beyond
    2 points" with probability 0.81; 950 English ones 0.62 (0.86 at 5%)."""
    assert equivalence_probability(1600, 0.10, 2.0) == pytest.approx(0.81, abs=0.005)
    assert equivalence_probability(950, 0.10, 2.0) == pytest.approx(0.62, abs=0.005)
    assert equivalence_probability(950, 0.05, 2.0) == pytest.approx(0.867, abs=0.001)  # printed 0.86
    # a design effect is fewer independent questions
    assert equivalence_probability(1600, 0.10, 2.0, design_effect=1.15) == pytest.approx(
        equivalence_probability(1600 / 1.15, 0.10, 2.0))


def test_design_figures_count_the_configs_questions(shared_data):
    cfg = load_config(None, ["eval.benchmarks=[ceval,cmmlu,mmlu]", "eval.max_per_benchmark=100",
                             "analysis.gain_margin=3", "analysis.forgetting_margin=2"])
    figs = design_figures(cfg, shared_data)
    assert {b: f["n"] for b, f in figs["benchmarks"].items()} == {"ceval": 100, "cmmlu": 100, "mmlu": 100}
    assert figs["pooled"]["zh"]["n"] == 200 and figs["pooled"]["zh"]["benchmarks"] == ["ceval", "cmmlu"]
    assert figs["pooled"]["zh"]["margin"] == 3 and figs["pooled"]["en"]["margin"] == 2
    zh = figs["pooled"]["zh"]["at_discordance"]
    assert [r["discordance"] for r in zh] == [0.05, 0.10, 0.15]
    # more changed answers: a larger detectable change, a smaller chance of showing equivalence
    assert zh[0]["min_detectable_change"] < zh[1]["min_detectable_change"] < zh[2]["min_detectable_change"]
    assert zh[0]["p_no_change_beyond_margin"] > zh[1]["p_no_change_beyond_margin"]


# ----------------------------------------------------------------------------- registration
def _study(repo: Path, tiny_llama_dir, **extra) -> Path:
    raw = tiny_config(tiny_llama_dir, repo / "runs" / "study", repo / "runs" / "baselines", **extra)
    path = repo / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    git(repo, "add", "study.yaml")
    git(repo, "commit", "-qm", "design")
    return path


def test_register_and_check(repo, tiny_llama_dir, shared_data):
    from zhtune.eval.suite import load_questions

    config = _study(repo, tiny_llama_dir)
    cfg = load_config(config)
    path, record = register(cfg, config, data_dir=shared_data)
    assert path == registration_path(config) == repo / "study.registration.json"
    assert read_json(path) == record
    assert record["design_hash"] == design_hash(cfg)
    assert record["config_commit"] == git(repo, "rev-parse", "HEAD")
    assert record["design_figures"]["benchmarks"]["ceval"]["n"] == len(load_questions(cfg.eval, shared_data)["ceval"])

    # not yet committed: the check says so, and so would the report
    uncommitted = check_registration(cfg, config)
    assert uncommitted["status"] == "matches" and uncommitted["registration_committed"] is False
    assert "NOT committed" in registration_sentence(uncommitted)
    git(repo, "add", path.name)
    git(repo, "commit", "-qm", "register")
    ok = check_registration(cfg, config)
    assert ok["status"] == "matches" and ok["registration_committed"] and ok["committed_before_check"]
    assert ok["registration_commit"] == git(repo, "rev-parse", "HEAD")
    assert f"committed in {ok['registration_commit'][:7]}" in registration_sentence(ok)

    # where outputs go and batch sizes are not the design; a LoRA rank is
    moved = load_config(config, ["output.dir=elsewhere", "eval.batch_size=2"])
    assert check_registration(moved, config)["status"] == "matches"
    changed = load_config(config, ["lora.rank=8"])
    with pytest.raises(UserError, match=r"lora.rank: 4 -> 8"):
        check_registration(changed, config)
    loud = check_registration(changed, config, ignore_mismatch=True)
    assert loud["status"] == "changed" and loud["differences"] == ["lora.rank"]
    assert "DIFFERS" in registration_sentence(loud)
    assert check_registration(cfg, repo / "other.yaml")["status"] == "unregistered"
    with pytest.raises(UserError, match="no such registration file"):
        check_registration(cfg, config, registration_file=repo / "missing.json")


def test_registration_refuses_an_uncommitted_config(repo, tiny_llama_dir, shared_data):
    config = _study(repo, tiny_llama_dir)
    config.write_text(config.read_text().replace("rank: 4", "rank: 5"))
    with pytest.raises(UserError, match="not committed"):
        register(load_config(config), config, data_dir=shared_data)
    _, record = register(load_config(config), config, data_dir=shared_data, allow_uncommitted=True)
    assert record["design"]["lora.rank"] == 5 and record["provenance"]["zhtune_version"]


def _registered_grid(repo: Path, tiny_llama_dir, shared_data) -> Path:
    """A committed config with the grid train.seed = 42, 7, registered (the registration not committed)."""
    raw = tiny_config(tiny_llama_dir, repo / "runs" / "s", repo / "runs" / "b")
    raw["sweep"] = {"grid": {"train.seed": [42, 7]}}
    config = repo / "grid.yaml"
    config.write_text(yaml.safe_dump(raw))
    git(repo, "add", "grid.yaml")
    git(repo, "commit", "-qm", "grid")
    register(load_config(config), config, data_dir=shared_data)
    return config


def test_a_registered_grid_registers_its_variants(repo, tiny_llama_dir, shared_data):
    config = _registered_grid(repo, tiny_llama_dir, shared_data)
    second = check_registration(load_config(config, ["train.seed=7"]), config)
    assert second["status"] == "matches" and second["variant"] == {"train.seed": 7}
    assert "registered variant train.seed = 7" in registration_sentence(second)
    with pytest.raises(UserError, match="train.seed"):
        check_registration(load_config(config, ["train.seed=8"]), config)


def test_sweep_checks_the_registration_of_its_grid(repo, tiny_llama_dir, shared_data, tmp_path):
    """zhtune sweep on a registered config: a grid the registration does not name is refused before any
    work; the registered grid is checked as matching and results.md / sweep.json cite it."""
    from zhtune.sweep.results import write_results

    config = _registered_grid(repo, tiny_llama_dir, shared_data)
    git(repo, "add", "grid.registration.json")
    git(repo, "commit", "-qm", "register")
    runner = CliRunner()
    for extra in (["lora.rank=4,8"], ["train.seed=42,7,1"], ["lora.rank=16"]):  # a new axis, seed, setting
        r = runner.invoke(app, ["sweep", str(config), *extra, "--data-dir", str(shared_data)])
        assert isinstance(r.exception, UserError) and "differs from its registration" in str(r.exception), extra
    assert not (repo / "runs" / "s").exists()
    checked = check_registration(load_config(config), config)
    assert checked["status"] == "matches"
    summary = write_results(tmp_path, [], {}, None, checked)
    assert summary["registration"] == checked
    assert f"Pre-registered design {checked['design_hash']}" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_run_checks_and_records_the_registration(repo, tiny_llama_dir, shared_data):
    """zhtune register, commit, zhtune run: experiment.json, report.json and the report's footer cite
    the registration; a changed design is refused before anything runs."""
    config = _study(repo, tiny_llama_dir)
    runner = CliRunner()
    r = runner.invoke(app, ["register", str(config), "--data-dir", str(shared_data)])
    assert r.exit_code == 0, r.output
    git(repo, "add", "study.registration.json")
    git(repo, "commit", "-qm", "register")
    refused = runner.invoke(app, ["run", str(config), "lora.rank=8", "--data-dir", str(shared_data)])
    assert isinstance(refused.exception, UserError) and "differs from its registration" in str(refused.exception)
    assert not (repo / "runs" / "study" / "experiment.json").exists()
    r = runner.invoke(app, ["run", str(config), "--data-dir", str(shared_data)])
    assert r.exit_code == 0, r.output
    experiment = read_json(repo / "runs" / "study" / "experiment.json")
    reg = experiment["registration"]
    assert reg["status"] == "matches" and reg["registration_commit"] == git(repo, "rev-parse", "HEAD")
    assert experiment["launched"] <= experiment["finished"] and experiment["provenance"] == provenance()
    report = read_json(repo / "runs" / "study" / "report" / "report.json")
    assert report["registration"] == reg and report["provenance"] == provenance()
    footer = (repo / "runs" / "study" / "report" / "report.md").read_text()
    assert f"Pre-registered design {reg['design_hash']}" in footer
    summary = read_json(next((repo / "runs" / "study" / "eval").glob("*/summary.json")))
    assert summary["provenance"] == provenance()
    assert read_json(repo / "runs" / "study" / "compare" / "comparison.json")["provenance"] == provenance()


def test_qwen_study_design_is_what_its_comments_say(shared_data, tmp_path):
    """configs/qwen-study.yaml: the sizes and probabilities its design comments state, and the second
    seed a registered variant that shares the first one's baseline and prepared data."""
    from zhtune.config import config_path, resolve_config
    from zhtune.experiment import stage_fingerprints

    cfg = resolve_config("qwen-study")
    figs = design_figures(cfg, shared_data)
    zh, en = figs["pooled"]["zh"], figs["pooled"]["en"]
    assert (zh["n"], en["n"], zh["margin"], en["margin"]) == (900, 450, 3.0, 3.0)
    at = {lang: {r["discordance"]: r for r in f["at_discordance"]} for lang, f in (("zh", zh), ("en", en))}
    assert at["zh"][0.10]["p_no_change_beyond_margin"] == pytest.approx(0.84, abs=0.005)
    assert at["zh"][0.10]["min_detectable_change"] == pytest.approx(3.2, abs=0.05)
    assert at["en"][0.10]["p_no_change_beyond_margin"] == pytest.approx(0.59, abs=0.005)
    assert at["en"][0.05]["p_no_change_beyond_margin"] == pytest.approx(0.84, abs=0.005)
    assert cfg.eval.control_probes and cfg.eval.formulation == "cloze"

    reg = tmp_path / "qwen-study.registration.json"
    register(cfg, config_path("qwen-study"), data_dir=shared_data, output=reg, allow_uncommitted=True)
    seed7 = resolve_config("qwen-study", overrides=["train.seed=7", "output.dir=runs/qwen-study-seed7"])
    checked = check_registration(seed7, config_path("qwen-study"), registration_file=reg)
    assert checked["status"] == "matches" and checked["variant"] == {"train.seed": 7}
    a, b = stage_fingerprints(cfg, shared_data), stage_fingerprints(seed7, shared_data)
    assert a["baseline"] == b["baseline"] and a["prepare"] == b["prepare"] and a["train"] != b["train"]
