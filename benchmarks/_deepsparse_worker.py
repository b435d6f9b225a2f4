"""DeepSparse, driven over a pipe by ``bench_engines.py``.

DeepSparse needs its own environment (Python <= 3.11, an older onnx and numpy
than sparsemia's), so the benchmark starts this script with that environment's
interpreter and talks to it in JSON lines: one request on stdin, one answer on
stdout. The timing loop runs here, in the worker, so the pipe's round trip is
not part of a measured forward.

Requests (answers are ``{"ok": ...}`` or ``{"error": "one line"}``):

    {"cmd": "compile", "onnx": PATH, "batch": B, "threads": T}
    {"cmd": "run", "input": NPY, "output": NPY}     # one forward, output written to NPY
    {"cmd": "time", "calls": N}                      # N timed forwards on the last input
    {"cmd": "quit"}
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    # Answers go to the original stdout; anything the engine prints goes to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    import numpy as np

    engine = None
    inputs = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            cmd = request["cmd"]
            if cmd == "quit":
                break
            if cmd == "compile":
                from deepsparse import compile_model

                engine = compile_model(request["onnx"], batch_size=request["batch"], num_cores=request["threads"])
                answer = {"ok": True}
            elif cmd == "run":
                inputs = [np.ascontiguousarray(np.load(request["input"]))]
                np.save(request["output"], engine.run(inputs)[0])
                answer = {"ok": True}
            elif cmd == "time":
                times = []
                for _ in range(int(request["calls"])):
                    start = time.perf_counter()
                    engine.run(inputs)
                    times.append(time.perf_counter() - start)
                answer = {"ok": times}
            else:
                answer = {"error": f"unknown command {cmd!r}"}
        except Exception as exc:  # reported to the benchmark, which skips the engine
            answer = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
