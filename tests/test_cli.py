"""The command line's error layer: one line on stderr naming the option or file, exit 2; nothing left behind."""

from __future__ import annotations

import pickle
import random

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
    if args[0] != "reproduce":  # reproduce states its configuration first, then loads the data
        assert out == "", out  # nothing announced before the input is refused
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expect in err, err
    return err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: 3\ndefenses: [none\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "random.pt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(256)))
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


def test_stage_lines_name_each_finished_piece_and_say_what_finished_earlier():
    from sparsemia.cli import _StageLines

    lines: list[str] = []
    stages = _StageLines(["none", "admm"], named=True, write=lines.append)
    for call in [("targets", 0, 2), ("targets", 1, 2), ("targets", 2, 2),
                 ("shadows (none)", 1, 2), ("shadows (none)", 2, 2),
                 ("attacks", 0, 2), ("attacks", 1, 2), ("attacks", 1, 2), ("attacks", 2, 2),
                 ("targets", 0, 2), ("targets", 1, 2)]:  # the next seed starts the stages again
        stages(*call)
    body = [line.split("] ", 1)[1] for line in lines]
    assert body[2] == "shadows (none): 1/2 finished earlier"
    assert [b.split(" (")[0] for b in body] == [
        "trained target none", "trained target admm", "shadows",
        "trained shadow models of none", "attacked none", "attacked admm", "trained target none"]
    assert all(line.startswith("[0:0") for line in lines)
    assert body[0].endswith("s; 1/2)") and body[3].endswith("s; task 2/2)")


def test_reproduce_prints_a_line_per_finished_stage_when_output_is_not_a_terminal(monkeypatch, tmp_path, capsys):
    import sparsemia.experiments as experiments

    def fake_run(cfg, out, *, progress, **kwargs):
        for done in range(len(cfg.defenses) + 1):
            progress("targets", done, len(cfg.defenses))
        return {"rows": []}

    monkeypatch.setattr(experiments, "run_experiment", fake_run)
    code, out, err = _run(capsys, "reproduce", "--quick", "--defenses", "none,magnitude", "--out", tmp_path / "r")
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert lines[0].startswith("reproduce: mnist-lenet5-quick, defenses none, magnitude")
    assert "trained target none (" in lines[1] and "trained target magnitude (" in lines[2]
    assert "report:" in lines[-1]


def test_train_shows_every_epoch_when_output_is_not_a_terminal(tmp_path, capsys):
    code, out, err = _run(capsys, "train", "-o", tmp_path / "m.safetensors", "--data", "digits", "--model", "mlp",
                          "--members", "40", "--test", "20", "--epochs", "3")
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert lines[0] == "training mlp (none, 3 epochs)"
    assert [line.split(":")[0] for line in lines[1:4]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "wrote" in lines[4]


def test_the_readme_names_exactly_the_commands_that_take_config_and_seed():
    import re
    from pathlib import Path

    import typer

    from sparsemia.cli import app

    group = typer.main.get_command(app)
    options = {name: {opt for param in command.params for opt in getattr(param, "opts", ())}
               for name, command in group.commands.items()}
    with_config = {name for name, opts in options.items() if "--config" in opts}
    assert with_config == {name for name, opts in options.items() if "--seed" in opts}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sentence = re.search(r"The commands that do work \(([^)]*)\)\s+accept\s+`--config FILE.yaml`", readme)
    assert sentence is not None, "the README's sentence on --config / --seed moved or changed"
    assert set(re.findall(r"`(\w+)`", sentence.group(1))) == with_config
    # the README's exceptions: "`info` takes no options and `report` only `--out`"
    assert set(options) - with_config == {"info", "report"}
    assert options["info"] - {"--help"} == set() and options["report"] - {"--help"} == {"--out"}
    assert re.search(r"`info` takes no options and `report`\s+only `--out`", readme)
