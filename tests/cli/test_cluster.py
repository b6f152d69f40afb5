"""``--workers``/``--cluster`` and ``sweep --search`` against a real local Dask cluster of 2 worker processes.

One LocalCluster serves the whole module (the machine has 2 cores); each test compares a
cluster run with the in-process run byte for byte.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys

import distributed
import numpy as np
import pytest
import torch
from PIL import Image

from intvit.cli import main
from intvit.cluster import engine
from intvit.cluster.search import SearchSpace, objective_values, pareto_mask, search
from intvit.commands.sweep import shape_program, simulate_point
from intvit.quant.checkpoint import save_weights
from intvit.quant.config import ViTConfig
from intvit.quant.model import ViT
from intvit.sim.config import load_config

ACCURACY = ["accuracy", "--limit", "32", "--batch-size", "8", "--calib-size", "8"]
SWEEP = ["sweep", "--arrays", "8x8,16x16,32x32,64x64", "--dataflows", "os,ws", "--bandwidths", "8,64"]
# A 256-point space: 8 arrays x 2 dataflows x 4 bandwidths x 2 lane counts x 2 buffer sizes.
SPACE = SearchSpace(arrays=((8, 8), (8, 32), (16, 16), (32, 8), (32, 32), (16, 64), (64, 16), (64, 64)),
                    dataflows=("os", "ws"), bandwidths=(4, 16, 64, 256), lanes=(2, 8), buffers=(4096, 65536))


@pytest.fixture(scope="module")
def cluster():
    """The LocalCluster that ``--workers 2`` starts; tests join it with ``--cluster ADDRESS``."""
    with engine.open_client(workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        yield client


@pytest.fixture(scope="module")
def accuracy_json(tmp_path_factory) -> bytes:
    """The in-process run's JSON, the reference every cluster run must equal."""
    path = tmp_path_factory.mktemp("accuracy") / "one.json"
    assert main([*ACCURACY, "--json", str(path)]) == 0
    return path.read_bytes()


def test_accuracy_on_cluster_is_byte_identical(cluster, accuracy_json, tmp_path, capfd):
    path = tmp_path / "cluster.json"
    assert main([*ACCURACY, "--cluster", cluster.scheduler.address, "--json", str(path)]) == 0
    assert path.read_bytes() == accuracy_json
    assert "died" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def wide_head(tmp_path_factory) -> tuple[str, str]:
    """Weights of a one-block ViT with DeiT-Tiny's 192 -> 1000 head, and a 1,000-class folder of 40 images.

    The head's float GEMM splits its reduction by torch thread, so its logits' last bits
    depend on the thread count: workers must use the starting process's.
    """
    root = tmp_path_factory.mktemp("wide")
    config = ViTConfig(name="wide-head", img_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3,
                       num_classes=1000)
    torch.manual_seed(0)
    save_weights(ViT(config).eval(), root / "wide.safetensors")
    rng = np.random.default_rng(0)
    for label in range(config.num_classes):
        folder = root / "images" / f"c{label:04d}"
        folder.mkdir(parents=True)
        for i in range(5 if label < 8 else 0):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(root / "wide.safetensors"), str(root / "images")


def test_float_head_bits_survive_the_cluster(cluster, wide_head, tmp_path):
    assert torch.get_num_threads() > 1      # workers have one thread by default: otherwise nothing to catch
    weights, images = wide_head
    args = ["accuracy", "--weights", weights, "--data", images, "--batch-size", "8", "--calib-size", "8"]
    one, two = tmp_path / "one.json", tmp_path / "cluster.json"
    assert main([*args, "--json", str(one)]) == 0
    assert main([*args, "--cluster", cluster.scheduler.address, "--json", str(two)]) == 0
    assert two.read_bytes() == one.read_bytes()


def test_sweep_on_cluster_is_byte_identical(cluster, tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "cluster.csv"
    assert main([*SWEEP, "--out", str(one)]) == 0
    assert main([*SWEEP, "--cluster", cluster.scheduler.address, "--out", str(two)]) == 0
    assert two.read_bytes() == one.read_bytes() and len(one.read_text().splitlines()) == 17


class KillOnce(distributed.WorkerPlugin):
    """Kills its worker process (SIGKILL, no goodbye) when it starts item ``index`` of an intvit map, once."""

    def __init__(self, marker: str, index: int):
        self.marker, self.index = marker, index

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and isinstance(key, tuple) and key[1] == self.index:
            try:
                open(self.marker, "x").close()
            except FileExistsError:     # the restarted worker, or the other one: leave them be
                return
            os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_is_rerun_with_one_notice(cluster, accuracy_json, tmp_path, capfd):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this test module
    marker = tmp_path / "killed"
    cluster.register_plugin(KillOnce(str(marker), index=2), name="kill-once")
    try:
        path = tmp_path / "cluster.json"
        assert main([*ACCURACY, "--cluster", cluster.scheduler.address, "--json", str(path)]) == 0
    finally:
        cluster.unregister_worker_plugin("kill-once")
        cluster.wait_for_workers(2, timeout=60)
    assert marker.exists()
    assert path.read_bytes() == accuracy_json
    notices = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(notices) == 1, notices
    assert notices[0].startswith("intvit accuracy: 1 worker died during the run (tcp://")
    assert re.search(r"; \d+ batch(es)? re-run on the others, result complete$", notices[0]), notices[0]


@pytest.mark.slow     # a second cluster start; the fixture's cluster is the one --workers starts
def test_workers_starts_a_local_cluster(tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    small = ["sweep", "--arrays", "8x8,16x16", "--dataflows", "os", "--bandwidths", "8"]
    assert main([*small, "--out", str(one)]) == 0
    assert main([*small, "--workers", "2", "--out", str(two)]) == 0
    assert two.read_bytes() == one.read_bytes()


@pytest.fixture(scope="module")
def evaluate():
    args = argparse.Namespace(model="mnist", weights=None, seed=0, program=None)
    program, base = shape_program(args), load_config(None)
    return lambda points: [simulate_point(program, "native", 1, SearchSpace.config(base, p)) for p in points]


def test_search_finds_the_full_grid_front_from_a_quarter(evaluate):
    # Seeded TPE with a quarter of the budget: every point of its front is the grid front's point
    # of the same MACs or within 1 % of its latency, and with most seeds exactly the grid's front.
    # (The 1,024-MAC arrays 32x32 and 64x16 are 0.4 % apart on MNIST; seed 0 finds only the first.)
    objectives = ["latency_us", "macs"]
    grid = search(SPACE, evaluate, objectives, budget=SPACE.size)
    assert len(grid) == SPACE.size == 256
    values = [objective_values(row, objectives) for row in grid]
    true_front = {v for v, front in zip(values, pareto_mask(values)) if front}
    best = {macs: latency for latency, macs in true_front}
    exact = 0
    for seed in range(4):
        found = search(SPACE, evaluate, objectives, budget=SPACE.size // 4, seed=seed)
        assert len(found) <= 64
        front = {objective_values(row, objectives) for row in found if row["pareto"]}
        assert front & true_front, f"seed {seed}: no searched configuration is on the full grid's Pareto front"
        for latency, macs in front:
            assert macs in best and latency <= 1.01 * best[macs], f"seed {seed}: {latency} us at {macs} MACs"
        exact += front == true_front
    assert exact >= 3, f"{exact} of 4 seeds found the grid's front exactly"
    assert found == search(SPACE, evaluate, objectives, budget=64, seed=3)     # seeded: the same search again


def test_search_on_cluster_equals_in_process(cluster, tmp_path, capsys):
    space = ["--arrays", "8x8,16x16,32x32,64x64", "--dataflows", "os,ws", "--bandwidths", "8,64",
             "--lanes", "2,8", "--buffers", "4096,65536", "--search", "--trials", "24"]
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert main(["sweep", *space, "--out", str(one)]) == 0
    printed = capsys.readouterr().out
    assert main(["sweep", *space, "--cluster", cluster.scheduler.address, "--out", str(two)]) == 0
    assert two.read_bytes() == one.read_bytes()
    assert "24 of 64 configurations evaluated (tpe, seed 0)" in printed and "Pareto front of latency_us" in printed


def test_pareto_mask():
    assert pareto_mask([(1, 5), (2, 2), (3, 3), None, (1, 5), (5, 1)]) == [True, True, False, False, True, True]


@pytest.mark.parametrize("args, message", [
    (["--workers", "2", "--cluster", "tcp://127.0.0.1:1"], "--workers and --cluster: give one"),
    (["--cluster", " "], "--cluster: empty scheduler address"),
    (["--cluster", "tcp://127.0.0.1:1"], "--cluster tcp://127.0.0.1:1: cannot connect to a Dask scheduler"),
    (["--search", "--objectives", "latency_us,speed"], "--objectives: unknown objective 'speed'"),
    (["--search", "--lanes", "8,0"], "--lanes: '0' is not a positive integer"),
])
def test_user_errors(args, message, capsys, monkeypatch):
    monkeypatch.setattr(engine, "CONNECT_TIMEOUT_S", 1)
    assert main(["sweep", "--arrays", "8x8", "--dataflows", "os", "--bandwidths", "8", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"intvit sweep: error: {message}") and err.count("\n") == 1


def test_workers_without_dask_names_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)     # import distributed -> ImportError
    assert main([*ACCURACY, "--workers", "2"]) == 2
    assert capsys.readouterr().err == ("intvit accuracy: error: --workers 2 needs Dask distributed, which is not "
                                       "installed: pip install intvit[cluster]\n")


def test_search_without_optuna_names_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main([*SWEEP, "--search", "--trials", "4"]) == 2
    assert capsys.readouterr().err == ("intvit sweep: error: --search needs Optuna, which is not installed: "
                                       "pip install intvit[cluster]\n")


def test_in_process_runs_never_import_dask_or_optuna(tmp_path):
    script = ("import sys; from intvit.cli import main; "
              "code = main(['sweep', '--arrays', '8x8', '--dataflows', 'os', '--bandwidths', '8']); "
              "print(sorted(m for m in ('dask', 'distributed', 'optuna') if m in sys.modules)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
