"""`zhtune sweep` on a cluster: a local Ray cluster (head + 2 CPU worker nodes on 127.0.0.1) and
the Slurm job array through submitit's local executor, against the single-machine sweep.

Everything stays small: the tiny model, 4 training steps, one thread per worker process."""
from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from zhtune.config import load_config, shipped_config
from zhtune.errors import UserError
from zhtune.sweep import run_sweep
from zhtune.train.checkpoints import checkpoint_is_complete

# Columns that must agree between launchers (train_seconds is a wall time and may not).
SAME = ("run", "lora.rank", "lora.dropout", "status", "chinese_gain", "chinese_gain_ci", "english_forgetting",
        "english_forgetting_ci", "trainable_params", "pareto")
POINTS = {"rank4-dropout0.05", "rank4-dropout0.1", "rank8-dropout0.05", "rank8-dropout0.1"}


def small_grid(model_dir: Path, out: Path, *extra: str):
    """configs/sweep-cpu-small.yaml (rank 4, 8 x dropout 0.05, 0.1) on the tiny model, in seconds."""
    return load_config(shipped_config("sweep-cpu-small"), [
        f"model.name_or_path={model_dir}", "data.sample_size=48", "data.max_length=128",
        "data.val_size=0.1", "lora.alpha=8", "train.max_steps=4", "train.save_steps=2",
        "train.logging_steps=1", "train.learning_rate=1e-3", "train.report_to=[]",
        "eval.max_per_benchmark=20", "eval.perplexity_chars=1500", f"output.dir={out}", *extra])


def results(out: Path) -> dict[str, dict]:
    with open(out / "results.csv", encoding="utf-8") as f:
        return {r["run"]: {k: r[k] for k in SAME} for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def one_thread():
    """One thread per process, here and in the workers (which inherit the environment): the two
    cores are shared with other work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("MKL_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, shared_data, tmp_path_factory, one_thread) -> Path:
    """The same grid swept on this machine, in this process."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    cache = out.parent / "baselines"
    summary = run_sweep(small_grid(tiny_llama_dir, out, f"output.baseline_cache={cache}"),
                        data_dir=shared_data)
    assert summary["failed"] == [] and {r["run"] for r in summary["runs"]} == POINTS
    return out


@pytest.fixture(scope="module")
def ray_cluster(one_thread):
    """Head (no CPUs: it only schedules) + 2 worker nodes with 1 CPU each, all on 127.0.0.1."""
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        # Ray takes the machine's network address unless told it is a one-machine cluster.
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        node = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 0, "include_dashboard": False, **node})
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=1, **node)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()


@pytest.mark.slow  # 1-2 min on 2 shared cores: the reference sweep (shared) and the Ray sweep
def test_ray_sweep_equals_single_machine(tiny_llama_dir, shared_data, tmp_path, reference, ray_cluster):
    out = tmp_path / "sweep"
    summary = run_sweep(small_grid(tiny_llama_dir, out, "sweep.launcher=ray",
                                   f"sweep.address={ray_cluster.address}"), data_dir=shared_data)
    assert summary["failed"] == []
    assert results(out) == results(reference)
    # The baseline was evaluated once, into the sweep folder (every node sees it), not per point.
    assert len(list((out / "baselines").glob("*/base/summary.json"))) == 1
    for name in POINTS:
        exp = json.loads((out / "runs" / name / "experiment.json").read_text())
        assert "baseline" in exp["skipped"], name
        status = json.loads((out / "runs" / name / "sweep-status.json").read_text())
        assert status["state"] == "done" and status["pid"] != os.getpid()
    assert "Best settings" in (out / "results.md").read_text()


def test_ray_refuses_folder_workers_cannot_see(tiny_llama_dir, shared_data, tmp_path, ray_cluster,
                                                monkeypatch):
    # /proc/self/cwd is each process's own folder: this test's tmp_path here, the Ray workers'
    # start folder there, like a local disk mounted at the same path on every node.
    monkeypatch.chdir(tmp_path)
    cfg = small_grid(tiny_llama_dir, Path("/proc/self/cwd/sweep"), "sweep.launcher=ray",
                     f"sweep.address={ray_cluster.address}")
    with pytest.raises(UserError, match="not visible from"):
        run_sweep(cfg, data_dir=shared_data)
    assert not (tmp_path / "sweep" / "baselines").exists()  # refused before any work


def _kill_when_checkpointed(point_dir: Path, killed: list, sig=signal.SIGKILL, timeout=300) -> None:
    """Kill the worker running the point once its training has written a checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status_file = point_dir / "sweep-status.json"
        # complete, by the rule resuming uses: trainer_state.json appearing is not enough, a kill
        # while it is being written leaves a checkpoint that resuming rightly discards
        ckpts = [p for p in (point_dir / "train" / "checkpoints").glob("checkpoint-*") if checkpoint_is_complete(p)]
        if ckpts and status_file.exists():
            status = json.loads(status_file.read_text())
            if status["state"] == "running":
                os.kill(status["pid"], sig)
                killed.append(status["pid"])
                return
        time.sleep(0.02)


@pytest.mark.slow  # 40-60 s on 2 shared cores
def test_ray_worker_killed_mid_point_resumes(tiny_llama_dir, shared_data, tmp_path, ray_cluster):
    out = tmp_path / "sweep"
    cfg = small_grid(tiny_llama_dir, out, "sweep.launcher=ray", f"sweep.address={ray_cluster.address}",
                     "sweep.grid={lora.rank: [4, 8]}", "train.max_steps=40")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_checkpointed, args=(out / "runs" / "rank8", killed))
    killer.start()
    summary = run_sweep(cfg, data_dir=shared_data)
    killer.join()
    assert killed, "the point finished before a checkpoint could be seen"
    assert summary["failed"] == [] and all(r["status"] == "done" for r in summary["runs"])
    point = out / "runs" / "rank8"
    assert json.loads((point / "sweep-status.json").read_text())["attempt"] == 2
    log = (point / "sweep-worker.log").read_text()
    assert "attempt 2" in log and "resuming from checkpoint" in log
    meta = json.loads((point / "train" / "adapter" / "zhtune_adapter.json").read_text())
    assert meta["metrics"]["resumed_from"] >= 2 and meta["metrics"]["steps"] == 40


@pytest.mark.slow  # 50-70 s on 2 shared cores (plus the shared reference sweep)
def test_slurm_job_array_equals_single_machine(tiny_llama_dir, shared_data, tmp_path, reference):
    pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    summary = run_sweep(small_grid(tiny_llama_dir, out, "sweep.launcher=slurm",
                                   "sweep.slurm.cluster=local", "sweep.slurm.time_min=20"),
                        data_dir=shared_data)
    assert summary["failed"] == []
    assert results(out) == results(reference)
    # One submitit folder per job: the baseline and the four array tasks.
    assert len([d for d in (out / "slurm").iterdir() if d.name.isdigit()]) == 5


@pytest.mark.slow  # 40-60 s on 2 shared cores
def test_slurm_dead_job_reported_then_rerun_finishes_it(tiny_llama_dir, shared_data, tmp_path, one_thread):
    pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    args = ["sweep.launcher=slurm", "sweep.slurm.cluster=local", "sweep.grid={lora.rank: [4, 8]}",
            "train.max_steps=40"]
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_checkpointed, args=(out / "runs" / "rank8", killed))
    killer.start()
    summary = run_sweep(small_grid(tiny_llama_dir, out, *args, "sweep.max_retries=0"), data_dir=shared_data)
    killer.join()
    assert killed and summary["failed"] == ["rank8"]
    assert {r["run"]: r["status"] for r in summary["runs"]} == {"rank4": "done", "rank8": "failed"}
    assert "## Failed runs\n\n- rank8: job" in (out / "results.md").read_text()
    done_before = (out / "runs" / "rank4" / "experiment.json").stat().st_mtime

    summary = run_sweep(small_grid(tiny_llama_dir, out, *args), data_dir=shared_data)
    assert summary["failed"] == [] and all(r["status"] == "done" for r in summary["runs"])
    assert (out / "runs" / "rank4" / "experiment.json").stat().st_mtime == done_before  # not rerun
    meta = json.loads((out / "runs" / "rank8" / "train" / "adapter" / "zhtune_adapter.json").read_text())
    assert meta["metrics"]["resumed_from"] >= 2


def test_shipped_slurm_config_and_no_sbatch(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    from zhtune.sweep.grid import grid_points

    cfg = load_config(shipped_config("sweep-lora-grid-slurm"), [f"output.dir={tmp_path / 'grid'}"])
    assert cfg.sweep.launcher == "slurm" and cfg.sweep.slurm.partition
    assert len(grid_points(cfg, None, tmp_path / "grid")) == 36
    # Without Slurm on this machine the real cluster is refused with what to do instead.
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    with pytest.raises(UserError, match="no sbatch here"):
        run_sweep(small_grid(tiny_llama_dir, tmp_path / "sweep", "sweep.launcher=slurm"),
                  data_dir=shared_data)
