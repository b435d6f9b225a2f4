"""The reproduce pipeline: artifacts, resume after a kill, config guard, executors, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsemia.experiments import (
    ConfigMismatchError,
    ExperimentConfig,
    RunDir,
    run_experiment,
    write_report,
)
from sparsemia.experiments.rundir import atomic_write_bytes
from sparsemia.mia import load_scores
from tests.experiments.killed import run_killed

TINY = ExperimentConfig(
    preset="tiny",
    target_members=60,
    target_non_members=60,
    defense_reference=60,
    test_size=100,
    attacker_reference=60,
    epochs=3,
    batch_size=32,
    defenses=("none", "magnitude"),
    attacks=("loss", "shadow", "lira_offline", "lira_online_fixed_var", "rmia"),
    num_shadows=4,
    shadows_per_task=2,
    finetune_epochs=1,
    n_bootstrap=20,
    speed_batch=16,
)

ROW_KEYS = {
    "defense", "attack", "target_train_acc", "target_test_acc", "attack_acc", "auc", "tpr_at_1pct_fpr",
    "tpr_at_0.1pct_fpr", "sparsity", "model_bytes", "speedup_vs_dense",
}


def _comparable(results: dict, with_speed: bool = False) -> list[dict]:
    # Speed is measured once, with the target, and stored: a resumed run reports the
    # stored figure, while a run in another directory measures its own.
    keys = sorted(ROW_KEYS if with_speed else ROW_KEYS - {"speedup_vs_dense"})
    return [{k: r[k] for k in keys} for r in results["rows"]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    return out, run_experiment(TINY, out)


def test_run_writes_every_artifact(finished):
    out, results = finished
    assert len(results["rows"]) == len(TINY.defenses) * len(TINY.attacks)
    for row in results["rows"]:
        assert set(row) >= ROW_KEYS
        assert 0.0 <= row["auc"] <= 1.0
        score, is_member, index = load_scores(out / "scores" / f"{row['defense']}__{row['attack']}.npz")
        assert score.shape == is_member.shape == index.shape == (120,)
        assert is_member.sum() == 60
    pruned = [r for r in results["rows"] if r["defense"] == "magnitude"]
    assert all(r["sparsity"] == pytest.approx(0.9, abs=0.01) for r in pruned)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(results["rows"]))
    assert "torch" in on_disk["versions"] and on_disk["config"]["num_shadows"] == 4
    report = (out / "report.md").read_text()
    assert "| none | loss |" in report and "roc_none.png" in report
    assert (out / "privacy_utility.png").stat().st_size > 1000
    assert (out / "splits.json").is_file()


def test_rerun_resumes_without_recomputing(finished):
    out, results = finished
    before = {p: p.stat().st_mtime_ns for p in (out / "targets").iterdir()}
    (out / "attacks" / "magnitude__loss.json").unlink()
    again = run_experiment(TINY, out)
    assert {p: p.stat().st_mtime_ns for p in (out / "targets").iterdir()} == before
    assert _comparable(again, with_speed=True) == _comparable(results, with_speed=True)


def test_a_killed_run_resumes_to_the_same_results(finished, tmp_path):
    _, uninterrupted = finished
    out = tmp_path / "killed"
    run_killed("tests.experiments.test_pipeline", "TINY", out, stage="shadows", done=1, timeout=600)
    written = sorted(out.glob("shadows/*/*.npz"))
    assert len(written) == 1, written  # killed mid-way: one task of four finished
    assert not (out / "results.json").exists() and not list(out.glob("attacks/*.json"))
    resumed = run_experiment(TINY, out)
    assert _comparable(resumed) == _comparable(uninterrupted)


def test_other_config_is_refused_unless_forced(finished, tmp_path):
    out = tmp_path / "guard"
    RunDir(out).prepare({"experiment": TINY.to_dict(), "seeds": 1})
    RunDir(out).write_json("targets/none.json", {"finished": True})  # the run finished something
    other = TINY.with_overrides(sparsity=0.8)
    with pytest.raises(ConfigMismatchError, match="different configuration"):
        run_experiment(other, out)
    (out / "stale.txt").write_text("old")
    RunDir(out).prepare({"experiment": other.to_dict(), "seeds": 1}, force=True)
    assert not (out / "stale.txt").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigMismatchError, match="not empty"):
        run_experiment(TINY, foreign)


def test_a_run_that_finished_nothing_does_not_block_its_directory(tmp_path):
    out = tmp_path / "failed"
    broken = TINY.with_overrides(dataset="purchase100", model="mlp", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="data_root"):
        run_experiment(broken, out)
    assert not out.exists()  # created by the failed run, so removed with it
    out.mkdir()
    with pytest.raises(FileNotFoundError, match="data_root"):
        run_experiment(broken, out)
    assert out.is_dir() and list(out.iterdir()) == []
    RunDir(out).prepare({"experiment": broken.to_dict(), "seeds": 1})  # as left by an older, killed run
    RunDir(out).prepare({"experiment": TINY.to_dict(), "seeds": 1})  # claimed by the corrected command
    assert RunDir(out).read_json("config.json")["experiment"]["dataset"] == TINY.dataset


def test_cuda_device_without_cuda_is_refused_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(ValueError, match=r"^device: 'cuda' asked for, but"):
        run_experiment(TINY.with_overrides(device="cuda"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_atomic_writes_leave_no_partial_file(tmp_path):
    run = RunDir(tmp_path)

    def interrupted(f):
        f.write(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(run.path("model.npz"), interrupted)
    assert not run.exists("model.npz")
    with pytest.raises(TypeError, match="only tensors"):
        run.save_torch("model.safetensors", {"x": object()})
    assert not run.exists("model.safetensors")
    assert list(tmp_path.iterdir()) == []
    run.write_json("a.json", {"v": np.float32(1.5)})
    assert run.read_json("a.json") == {"v": 1.5}


def test_config_validation():
    with pytest.raises(ValueError, match="sparsity"):
        TINY.with_overrides(sparsity=1.0)
    with pytest.raises(ValueError, match="defenses"):
        TINY.with_overrides(defenses=("none", "bogus"))
    with pytest.raises(ValueError, match="num_shadows"):
        TINY.with_overrides(num_shadows=2)
    with pytest.raises(ValueError, match="unknown option"):
        ExperimentConfig.from_dict({"epochz": 3})


def test_too_few_shadows_for_lira_is_a_clear_error(tmp_path):
    cfg = TINY.with_overrides(num_shadows=5, target_members=60, target_non_members=200)
    with pytest.raises(ValueError, match="IN and two OUT"):
        run_experiment(cfg, tmp_path / "few")


def test_report_can_be_rewritten(finished):
    out, _ = finished
    (out / "report.md").unlink()
    write_report(out)
    assert (out / "report.md").read_text().startswith("# sparsemia report")


def test_ray_executor_matches_local(finished, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'sparsemia[ray]')")
    import ray

    _, local = finished
    try:
        results = run_experiment(TINY, tmp_path / "ray", executor="ray")
    finally:
        ray.shutdown()
    assert _comparable(results) == _comparable(local)
