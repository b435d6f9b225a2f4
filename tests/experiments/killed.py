"""A pipeline run that kills itself (SIGKILL: no cleanup, no atexit) at a chosen point of its progress."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path


def run_killed(config_module: str, config_name: str, out: Path, stage: str, done: int, timeout: float) -> None:
    """Run ``run_experiment(<config_module>.<config_name>, out)`` in a child process that SIGKILLs itself
    when progress reports ``done`` finished items of a stage starting with ``stage``; assert it died so.

    The kill is triggered by the run's own progress, so it lands mid-way on every machine, however
    fast or loaded.
    """
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path[:0] = {sys.path!r}
        from {config_module} import {config_name} as config
        from sparsemia.experiments import run_experiment

        def progress(stage, done, total):
            if stage.startswith({stage!r}) and done == {done}:
                os.kill(os.getpid(), signal.SIGKILL)

        run_experiment(config, {str(out)!r}, progress=progress)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], timeout=timeout)
    assert proc.returncode == -signal.SIGKILL
