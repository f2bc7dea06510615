"""tools/finetune_compare.py: the CQL vs Cal-QL table (offline and final scores and success
rates, the dip after the switch, regrets) against hand computations on synthetic runs."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("finetune_compare", ROOT / "tools" / "finetune_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(path: Path, calibrated: bool, seed: int, scores: list[float], success: list[float], train_regret: float):
    """A finished fine-tuning run: evaluations every 100 updates, the switch after update 200."""
    path.mkdir(parents=True)
    records = [{"step": 100 * (k + 1), "d4rl_normalized_score": s, "eval/success_rate": p}
               for k, (s, p) in enumerate(zip(scores, success))]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"status": "completed", "dataset": "cql-modules/pointmaze/medium-v2", "seed": seed,
               "config": {"seed": seed, "dataset": {"name": "cql-modules/pointmaze/medium-v2"},
                          "loss": {"calibrated": calibrated}},
               "updates": 100 * len(scores), "offline_updates": 200, "offline_normalized_score": scores[1],
               "final_normalized_score": scores[-1], "train_regret": train_regret, "eval_regret": 0.5,
               "wall_time_s": 120.0}
    (path / "summary.json").write_text(json.dumps(summary))


def test_table_against_hand_computation(tmp_path, capsys):
    _run(tmp_path / "cql-0", False, 0, [10, 50, 20, 40, 60], [0.1, 0.5, 0.2, 0.4, 0.6], 0.4)
    _run(tmp_path / "cql-1", False, 1, [0, 70, 80, 30, 90], [0.0, 0.7, 0.8, 0.3, 0.9], 0.2)
    _run(tmp_path / "calql-0", True, 0, [0, 40, 45, 50, 55], [0.0, 0.4, 0.5, 0.5, 0.6], 0.3)
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "metrics.jsonl").write_text('{"step": 100}\n')
    _tool().main([str(tmp_path), "--out", str(tmp_path / "out"), "--window", "200", "--tail", "2"])
    table = (tmp_path / "out" / "finetune_table.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines() if "calibrated=" in line}
    cql, calql = rows["loss.calibrated=False"], rows["loss.calibrated=True"]
    # offline score (update 200), final score, success at 200 and at the end: mean ± std (ddof 1)
    assert cql[1:4] == ["2", "60.0 ± 14.1", "75.0 ± 21.2"]
    # mean of the last 2 evaluations of each phase: offline (10+50)/2, (0+70)/2; final (40+60)/2, (30+90)/2
    assert cql[4:6] == ["32.5 ± 3.5", "55.0 ± 7.1"]
    assert cql[6:8] == ["0.6 ± 0.1", "0.8 ± 0.2"]  # success at the end of each phase
    # dip: offline score minus the lowest evaluation in the first 200 online updates (0 if none lower)
    assert cql[8] == "35.0 ± 7.1"  # seed 0: 50 - min(20, 40) = 30; seed 1: 70 - min(80, 30) = 40
    assert calql[1:9] == ["1", "40.0", "55.0", "20.0", "52.5", "0.4", "0.6", "0.0"]
    assert cql[9] == "0.3 ± 0.1"  # training regret
    assert "not averaged: killed" in table
    assert (tmp_path / "out" / "curve_cql-modules_pointmaze_medium-v2.png").exists()


def test_named_variants(tmp_path, capsys):
    # NAME=DIR: each directory's runs form one variant under that name, whatever their configs
    _run(tmp_path / "a" / "cql-0", False, 0, [10, 50, 20, 40, 60], [0.1, 0.5, 0.2, 0.4, 0.6], 0.4)
    _run(tmp_path / "a" / "calql-0", True, 0, [0, 40, 45, 50, 70], [0.0, 0.4, 0.5, 0.5, 0.6], 0.3)
    _run(tmp_path / "b" / "cql-1", False, 1, [0, 70, 80, 30, 90], [0.0, 0.7, 0.8, 0.3, 0.9], 0.2)
    tool = _tool()
    tool.main([f"mixed={tmp_path / 'a'}", f"other={tmp_path / 'b'}", "--out", str(tmp_path / "out"), "--tail", "1"])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in
            (tmp_path / "out" / "finetune_table.md").read_text().splitlines()[2:]}
    assert set(rows) == {"mixed", "other"}
    assert rows["mixed"][1:4] == ["2", "45.0 ± 7.1", "65.0 ± 7.1"]
    assert rows["other"][1:4] == ["1", "70.0", "90.0"]
    with pytest.raises(SystemExit):
        tool.main([f"mixed={tmp_path / 'a'}", str(tmp_path / "b"), "--out", str(tmp_path / "out")])
