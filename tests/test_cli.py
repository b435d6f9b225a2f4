"""The command line's error layer: one line on stderr naming the option or file, exit 2; nothing left behind."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from sparsemia.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(capsys, *args, expect: str, code: int = 2) -> str:
    got, out, err = _run(capsys, *args)
    assert got == code, (got, out, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expect in err, err
    return err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: 3\ndefenses: [none\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "random.pt").write_bytes(os.urandom(256))
    return tmp_path


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["nosuchcmd"], "No such command 'nosuchcmd'"),
        (["prune", "--sparsity"], "Option '--sparsity' requires an argument"),
        (["reproduce", "--seeds", "0"], "'--seeds'"),
        (["attack", "--num-shadows", "0", "--out", "x"], "'--num-shadows'"),
        (["reproduce", "--num-shadows", "1", "--out", "{tmp}/r"], "--num-shadows: expected at least 4"),
        (["reproduce", "--config", "{tmp}/bad.yaml"], "--config: {tmp}/bad.yaml line 3, column 1: invalid YAML"),
        (["reproduce", "--config", "{tmp}/list.yaml"], "--config: expected a mapping"),
        (["reproduce", "--config", "{tmp}/missing.yaml"], "--config: file not found"),
        (["reproduce", "--out", "{tmp}/afile"], "--out: {tmp}/afile is a file, expected a directory"),
        (["reproduce", "--out", "{tmp}/afile/sub"], "--out: {tmp}/afile is a file"),
        (["report", "--out", "{tmp}/afile"], "--out: {tmp}/afile is a file; expected a run directory"),
        (["report", "--out", "{tmp}"], "holds no results.json"),
        (["train", "-o", "{tmp}", "--epochs", "1"], "output: {tmp} is a directory, expected a file path"),
        (["train", "-o", "{tmp}/afile/m.safetensors"], "output: {tmp}/afile is a file"),
        (["attack", "{tmp}/random.pt", "--out", "{tmp}/a"], "model_path: expected the sidecar {tmp}/random.pt.json"),
        (["attack", "--weights", "{tmp}/random.pt", "--model-arch", "lenet5", "--data", "digits", "--splits",
          "{tmp}/s.json", "--out", "{tmp}/a"], "weights: {tmp}/random.pt is neither a safetensors file"),
        (["attack", "--weights", "{tmp}/random.pt", "--out", "{tmp}/a"], "--model-arch: needed with --weights"),
        (["attack", "--out", "{tmp}/a"], "MODEL_PATH or --weights: give exactly one"),
        (["attack", "{tmp}/afile", "--out", "{tmp}/afile"], "--out: {tmp}/afile is a file"),
        (["prune", "{tmp}/random.pt", "--model-arch", "lenet5", "-o", "{tmp}/p.safetensors"],
         "model_path: {tmp}/random.pt is neither a safetensors file"),
        (["prune", "{tmp}/missing.safetensors", "-o", "{tmp}/p.safetensors"], "model_path: no file at"),
        (["bench", "--quick", "--json", "{tmp}"], "--json: {tmp} is a directory, expected a file path"),
        (["bench", "--quick", "--sizes", "abc"], "--sizes: expected comma-separated int values"),
        (["reproduce", "--preset", "cifar10-vgg16", "--data-root", "{tmp}/nowhere", "--out", "{tmp}/c"],
         "--data-root: {tmp}/nowhere does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(files, capsys, args, expect):
    before = sorted(p.name for p in files.iterdir())
    _one_line_error(capsys, *[a.format(tmp=files) for a in args], expect=expect.format(tmp=files))
    assert sorted(p.name for p in files.iterdir()) == before  # nothing written, not even a directory


def test_device_cuda_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    _one_line_error(capsys, "reproduce", "--device", "cuda", "--out", tmp_path / "r", expect="--device: 'cuda'")
    assert not (tmp_path / "r").exists()


class _CreatesFile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_every_command_refuses_a_code_running_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save(_CreatesFile(str(marker)), evil)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(_CreatesFile(str(marker)), protocol=2))
    splits = tmp_path / "splits.json"
    splits.write_text('{"target_members": [0], "target_non_members": [1], "attacker_pool": [], "test": []}')
    for path in (evil, legacy):
        for args in (
            ["attack", "--weights", path, "--model-arch", "lenet5", "--data", "digits", "--splits", splits,
             "--out", tmp_path / "a"],
            ["prune", path, "--model-arch", "lenet5", "-o", tmp_path / "p.safetensors"],
        ):
            _one_line_error(capsys, *args, expect="could run code when loaded; refused")
    assert not marker.exists()
    assert not (tmp_path / "a").exists() and not (tmp_path / "p.safetensors").exists()


def test_interrupt_exits_130_with_the_resume_hint(monkeypatch, tmp_path, capsys):
    import sparsemia.experiments as experiments

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run_experiment", interrupted)
    code, _, err = _run(capsys, "reproduce", "--quick", "--out", tmp_path / "r")
    assert code == 130 and err == "interrupted; rerun the same command to resume\n"
