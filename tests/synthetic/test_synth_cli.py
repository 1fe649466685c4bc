"""`lsa synth` end to end: bad input exits 2 with one line; a tiny run writes every output."""

import json

import pytest

from lsa_ds import cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "bogus"], "unknown --task 'bogus'"),
        (["--pe", "alibi"], "unknown --pe 'alibi'"),
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert cli.main(["synth", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_tiny_run_writes_results_table_and_figure(tmp_path):
    out = tmp_path / "synth"
    argv = ["synth", "--task", "mean", "--task", "length-invsqrt", "--task", "length", "--seeds", "2",
            "--steps", "5", "--eval-samples", "4", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {(r["task"], r["seed"]) for r in results["runs"]} == {
        (t, s) for t in ("mean", "length", "length-invsqrt") for s in (0, 1)
    }
    assert all(len(r["mse_by_length"]) == 50 for r in results["runs"])
    table = (out / "table.md").read_text()
    for needle in ("| mean | rope |", "| length-invsqrt | rope |", "mean: predict 0.5", "length: predict 10",
                   "41-50", "1/sqrt(n)"):
        assert needle in table
    png = (out / "mse_vs_length.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
