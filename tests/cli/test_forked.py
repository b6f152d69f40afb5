"""``intvit.forked``: the work runs in a forked child while the parent does its own and hands it an array.

The test process has torch loaded (so ``run_beside`` runs in-process there); the forked path
is checked in fresh interpreters without torch: results and errors come back intact, a child
that dies is one line, and a cold ``intvit simulate`` prints what an in-process run prints.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from intvit.cli import main
from intvit.forked import Handover, run_beside
from intvit.quant.errors import IntVitError

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from intvit.forked import Handover, run_beside
    from intvit.quant.errors import IntVitError

    parent, seen = os.getpid(), []
    case = sys.argv[1]
    handover = Handover(64)
    def work():
        if case == "value":
            return os.getpid(), {"w": np.arange(6, dtype=np.int8).reshape(2, 3)}
        if case == "handover":
            return os.getpid(), {"w": handover.get() * 2}
        if case == "intvit":
            raise IntVitError("images/: no images found")
        if case == "oserror":
            open("/nonexistent/intvit/weights.pt")
        if case == "dies":
            os._exit(3)
        if case == "slow":
            import time; time.sleep(30)
    def meanwhile():
        seen.append(os.getpid())
        if case == "handover":
            handover.put(np.arange(6, dtype=np.int16).reshape(2, 3))
        if case == "slow":
            raise IntVitError("meanwhile failed")
    try:
        pid, arrays = run_beside(work, meanwhile, "calibration")
        print(json.dumps({"child": pid != parent, "meanwhile_here": seen == [parent],
                          "w": arrays["w"].tolist(), "torch": "torch" in sys.modules}))
    except (IntVitError, OSError) as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                          "cause": type(exc.__cause__).__name__ if exc.__cause__ else None}))
""")


def forked(case: str) -> dict:
    run = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_the_work_runs_in_a_child_and_its_result_comes_back():
    assert forked("value") == {"child": True, "meanwhile_here": True, "w": [[0, 1, 2], [3, 4, 5]], "torch": False}


def test_the_parent_hands_an_array_over_to_the_child_in_shared_memory():
    assert forked("handover") == {"child": True, "meanwhile_here": True, "w": [[0, 2, 4], [6, 8, 10]],
                                  "torch": False}


def test_a_handover_refuses_more_than_its_buffer_holds():
    handover = Handover(16)
    with pytest.raises(IntVitError, match="cannot hand over 24 bytes: the buffer holds 16"):
        handover.put(np.zeros(3, np.float64))
    handover.put(np.full((2, 2), 7, np.int32))
    assert handover.get().tolist() == [[7, 7], [7, 7]]


def test_errors_in_the_child_are_raised_here_with_their_type_and_its_traceback():
    error = forked("intvit")
    assert error == {"error": "IntVitError", "message": "images/: no images found", "cause": "ChildTraceback"}
    error = forked("oserror")
    assert error["error"] == "FileNotFoundError" and "/nonexistent/intvit/weights.pt" in error["message"]


def test_a_child_that_dies_is_one_line():
    assert forked("dies") == {"error": "IntVitError", "cause": None,
                              "message": "calibration stopped: its process ended with exit status 3"}


def test_a_failed_meanwhile_stops_the_child_at_once():
    run = subprocess.run([sys.executable, "-c", SCRIPT, "slow"], capture_output=True, text=True, timeout=20)
    assert json.loads(run.stdout)["message"] == "meanwhile failed"


def test_with_torch_loaded_it_runs_here():
    import torch  # noqa: F401

    order = []
    assert run_beside(lambda: order.append("work") or os.getpid(), lambda: order.append("meanwhile"), "x") == os.getpid()
    assert order == ["meanwhile", "work"]


def test_a_cold_simulate_calibrates_apart_and_prints_what_an_in_process_run_prints(tmp_path, capsys):
    import torch  # noqa: F401  (here: calibration in this process)

    args = ["simulate", "--no-cache", "--calib-size", "32", "--batch-size", "16"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "intvit.cli", *args], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert main(args) == 0
    assert run.stdout == capsys.readouterr().out
