"""``intvit rtl-run``: the embedded MNIST ViT, whole inference, on the accelerator's RTL (Verilator + AxiRam).

The default run builds the small 8x8 accelerator (``docs/configs/small_8x8.toml``) and runs
two test images as one batch-2 program (``--batch 2``, which exercises batch 1's code paths as
well): logits equal to the golden executor's, RTL cycles within 2 % of ``sim.schedule``. Batch 1
on the same accelerator, the full-size accelerator (8 images), the small-scratchpad and
narrow-AXI configs, and ``--workers 2`` against ``--workers 1`` are ``slow``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from intvit.cli import main

SMALL = "docs/configs/small_8x8.toml"
HERE = Path(__file__).parent


def rtl_run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["rtl-run", *args])
    except SystemExit as exc:              # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_work(tmp_path_factory):
    """One work folder for the 8x8 runs of this module: the Verilator build is made once."""
    return tmp_path_factory.mktemp("rtl-8x8")


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "--images"),
    (["--images", "3", "--batch", "2"], "--images 3 is not a multiple of --batch 2"),
    (["--config", "no-such.toml"], "no-such.toml"),
    (["--workers", "2", "--cluster", "tcp://127.0.0.1:1"], "--workers and --cluster"),
    (["--cluster", "tcp://127.0.0.1:1"], "--cluster needs --work-dir"),
])
def test_user_errors_are_one_line(capsys, args, message):
    code, out, err = rtl_run(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def check_claims(data: dict, images: int) -> None:
    """The issue's two claims, per image: logits bit-exact with golden, |RTL - predicted| <= 2 % of predicted."""
    assert len(data["images"]) == images
    for row in data["images"]:
        assert row["logits"] == row["golden_logits"], f"image {row['image']}: logits differ"
        assert abs(row["rtl_cycles"] - row["sim_cycles"]) <= 0.02 * row["sim_cycles"], \
            f"image {row['image']}: RTL {row['rtl_cycles']} cycles, predicted {row['sim_cycles']}"


@pytest.mark.parametrize("config, images, batch", [
    (SMALL, 2, 2),
    pytest.param(SMALL, 1, 1, marks=pytest.mark.slow),
    pytest.param(None, 8, 1, marks=pytest.mark.slow),
    pytest.param("docs/configs/small_scratchpads.toml", 1, 1, marks=pytest.mark.slow),
    pytest.param("docs/configs/narrow_axi.toml", 1, 1, marks=pytest.mark.slow),
])
def test_mnist_on_rtl_is_bit_exact_and_within_two_percent(capsys, tmp_path, small_work, config, images, batch):
    work = small_work if config == SMALL else tmp_path / "work"
    args = ["--images", str(images), "--batch", str(batch), "--calib-size", "256",
            "--json", str(tmp_path / "out.json"), "--work-dir", str(work)]
    if config:
        args += ["--config", config]
    code, out, err = rtl_run(capsys, *args)
    assert code == 0, err
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["batch"] == batch
    check_claims(data, images)


@pytest.mark.slow
def test_workers_give_the_same_json(capsys, tmp_path, small_work):
    """Two images on two Dask workers: the JSON file equals the in-process run's byte for byte."""
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"workers{workers}.json"
        code, _, err = rtl_run(capsys, "--config", SMALL, "--images", "2", "--calib-size", "256",
                               "--work-dir", str(small_work), "--workers", workers, "--json", str(out))
        assert code == 0, err
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    check_claims(json.loads(outputs[0]), 2)


@pytest.mark.slow
def test_runs_of_one_model_go_side_by_side(tmp_path):
    """``harness.runner``: one Verilator build, two runs at once in folders of their own, only the ports public."""
    from amaranth import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from intvit.harness.runner import build, run

    class Counter(wiring.Component):
        def __init__(self):
            super().__init__({"step": In(8), "count": Out(16)})

        def elaborate(self, platform):
            m = Module()
            m.d.sync += self.count.eq(self.count + self.step)
            return m

    model = build(Counter(), toplevel="counter", build_dir=tmp_path / "build")
    control = (model.build_dir / "counter.vlt").read_text()
    assert {line.split('"')[-2] for line in control.splitlines()[1:]} == {"clk", "rst", "step", "count"}
    results = {}

    def one(step: int) -> None:
        results[step] = run(model, "bench_counter", {"step": step, "cycles": 10 + step}, module_paths=(HERE,),
                            run_dir=tmp_path / f"run{step}")

    threads = [threading.Thread(target=one, args=(step,)) for step in (3, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[3]["count"] == 3 * 13 and results[5]["count"] == 5 * 15
    for step in (3, 5):
        assert (tmp_path / f"run{step}" / "sim.log").exists()
