"""The dispatcher itself: --debug on either side of the command, strict JSON output."""

import json

import pytest

from intvit.quant.errors import IntVitError
from intvit.cli import main
from intvit.commands.common import write_json


@pytest.mark.parametrize("argv", [["--debug", "accuracy", "--data", "/no/such/dir"],
                                  ["accuracy", "--debug", "--data", "/no/such/dir"]])
def test_debug_shows_the_traceback_before_or_after_the_command(argv):
    with pytest.raises(IntVitError, match="no such directory"):
        main(argv)


def test_without_debug_one_line_and_exit_2(capsys):
    assert main(["accuracy", "--data", "/no/such/dir"]) == 2
    assert capsys.readouterr().err == "intvit accuracy: error: /no/such/dir: no such directory\n"


def test_json_is_strict_for_perfect_sqnr(tmp_path):
    path = tmp_path / "r.json"
    write_json({"layer_sqnr_db": {"input": float("inf"), "x": 12.5}, "v": [float("-inf")]}, str(path))
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data == {"layer_sqnr_db": {"input": "inf", "x": 12.5}, "v": ["-inf"]}
