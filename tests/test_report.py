"""recipes/report.py: the table numbers against hand computations (synthetic run directories
in the runs' file format, and a real 2 datasets x 2 seeds sweep), rliable's aggregates
against a hand-computed bootstrap, failed and unfinished runs listed and never averaged."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import DATASET, run_recipe, tiny_overrides

from cql_modules.report import (
    Group,
    Run,
    aggregate,
    domain_of,
    read_reference,
    write_report,
)

pytest_plugins = ("run_fixtures",)  # minari_root, tiny_run, tiny_finetune_run


def write_run(path: Path, dataset: str, seed: int, finals: list[float], *, status: str = "completed",
              cql_alpha: float = 10.0, summary: bool = True, dataset_config: dict | None = None, **extra) -> Path:
    """A run directory as the recipes write it: metrics.jsonl (one evaluation per 1000 updates)
    and summary.json (final = last evaluation, best = max)."""
    path.mkdir(parents=True)
    steps = [1000 * (i + 1) for i in range(len(finals))]
    with open(path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"step": step, "loss_qvalue": 1.0, "d4rl_normalized_score": score}) + "\n" for step, score in zip(steps, finals))
    if summary:
        data = {"status": status, "message": None if status == "completed" else f"{status} at update 1000",
                "dataset": dataset, "seed": seed, "updates": steps[-1],
                "final_normalized_score": finals[-1], "best_normalized_score": max(finals),
                "behaviour_normalized_score": 40.0, "updates_per_s": 20.0 + seed, "train_time_s": 50.0,
                "wall_time_s": 100.0 * (seed + 1),
                "config": {"seed": seed, "device": "auto", "num_threads": 1,
                           "dataset": dataset_config or {"name": dataset},
                           "loss": {"cql_alpha": cql_alpha}, "logger": {"every": 1000}}, **extra}
        (path / "summary.json").write_text(json.dumps(data))
    return path


@pytest.fixture
def sweep(tmp_path):
    """hopper-medium-v2: 3 seeds (cql_alpha 10) + 1 seed (cql_alpha 5); walker2d-medium-v2:
    2 seeds; plus a failed run and a killed one (no summary)."""
    write_run(tmp_path / "a/0", "hopper-medium-v2", 0, [30.0, 50.0], reevaluations=[
        {"n_episodes": 10, "normalized_score_mean": 1.0}, {"n_episodes": 100, "normalized_score_mean": 52.0}])
    write_run(tmp_path / "a/1", "hopper-medium-v2", 1, [65.0, 60.0], reevaluations=[
        {"n_episodes": 100, "normalized_score_mean": 58.0}])
    write_run(tmp_path / "a/2", "hopper-medium-v2", 2, [40.0, 70.0])
    write_run(tmp_path / "a/3", "walker2d-medium-v2", 0, [70.0, 80.0])
    write_run(tmp_path / "a/4", "walker2d-medium-v2", 1, [95.0, 90.0])
    write_run(tmp_path / "b/0", "hopper-medium-v2", 0, [20.0, 45.0], cql_alpha=5.0)
    write_run(tmp_path / "b/1", "walker2d-medium-v2", 2, [10.0], status="failed")
    write_run(tmp_path / "b/2", "walker2d-medium-v2", 3, [12.0, 13.0], summary=False)
    return tmp_path


def table_rows(report: str, section: str, *, header: bool = False) -> list[list[str]]:
    body = report.split(f"## {section}")[1].split("\n## ")[0]
    rows = [ln.strip("| ").split(" | ") for ln in body.splitlines() if ln.startswith("|")]
    return rows[:1] if header else rows[2:]  # the header, or the rows without header and alignment


def test_per_dataset_table_matches_a_hand_computation(sweep, tmp_path):
    report = write_report([sweep / "a", sweep / "b"], tmp_path / "out", reps=200).read_text()
    rows = {(r[0], r[1]): r for r in table_rows(report, "Per dataset")}
    assert set(rows) == {("hopper-medium-v2", "loss.cql_alpha=10.0"), ("hopper-medium-v2", "loss.cql_alpha=5.0"),
                         ("walker2d-medium-v2", "loss.cql_alpha=10.0")}
    hopper = rows["hopper-medium-v2", "loss.cql_alpha=10.0"]
    # final 50, 60, 70: mean 60, sample std 10; best 50, 65, 70: mean 61.67, std sqrt((136.1 + 11.1 + 69.4) / 2) = 10.41
    # wall time (100 + 200 + 300) / 3 s = 3m20s; updates/s (20 + 21 + 22) / 3 = 21
    assert hopper[2:9] == ["3", "60.0 ± 10.0", "61.7 ± 10.4", "40.0", "2000", "3m20s", "21.0"]
    # re-evaluated: the last recipes/evaluate.py result of each run that has one: 52, 58
    assert hopper[9] == f"55.0 ± {np.std([52, 58], ddof=1):.1f} (2 runs x 100 episodes)"
    assert hopper[10:] == ["59.08 ± 3.77", "70.80 ± 1.98"]  # CORL's published CQL (refdata/corl_cql.csv)
    walker = rows["walker2d-medium-v2", "loss.cql_alpha=10.0"]
    assert walker[2:5] == ["2", "85.0 ± 7.1", "87.5 ± 10.6"]  # final 80, 90: std 7.07; best 80, 95: std 10.61
    assert rows["hopper-medium-v2", "loss.cql_alpha=5.0"][2:4] == ["1", "45.0"]
    assert "Reference: CORL (Tarasov et al." in report
    assert table_rows(report, "Runs not included")[0][0] == "b/1"  # relative to the directories' common parent


def test_preset_differences_between_datasets_are_not_variants(tmp_path):
    """Dataset presets set fields per dataset (CORL: reward normalization for hopper-medium
    only): one variant; a field that differs within a dataset is one."""
    write_run(tmp_path / "0", "hopper-medium-v2", 0, [50.0],
              dataset_config={"name": "hopper-medium-v2", "normalize_reward": True})
    write_run(tmp_path / "1", "walker2d-medium-v2", 0, [70.0],
              dataset_config={"name": "walker2d-medium-v2", "normalize_reward": False})
    report = write_report([tmp_path], tmp_path / "out", reps=200).read_text()
    assert [r[:2] for r in table_rows(report, "Per dataset")] == [["hopper-medium-v2", "CQL"],
                                                                  ["walker2d-medium-v2", "CQL"]]
    (row,) = table_rows(report, "Per domain and overall")
    assert row[:5] == ["CQL", "locomotion", "2", "2", "60.0"]


def test_failed_and_unfinished_runs_are_listed_not_averaged(sweep, tmp_path):
    report = write_report([sweep], tmp_path / "out", reps=200).read_text()
    listed = {r[0]: r for r in table_rows(report, "Runs not included")}
    assert set(listed) == {"b/1", "b/2"}
    assert listed["b/1"][2] == "failed" and listed["b/1"][4] == "failed at update 1000"
    assert listed["b/2"][2] == "no summary (running or killed)" and listed["b/2"][3] == "2000"
    assert "8 runs found" in report and "6 completed" in report
    walker = [r for r in table_rows(report, "Per dataset") if r[0] == "walker2d-medium-v2"]
    assert len(walker) == 1 and walker[0][2] == "2"  # the failed and the killed runs are not counted


def test_domain_table_matches_a_hand_computation(sweep, tmp_path):
    report = write_report([sweep / "a"], tmp_path / "out", reps=200).read_text()
    (row,) = table_rows(report, "Per domain and overall")
    # one variant (no differing field in a/), locomotion: datasets hopper (50, 60, 70), walker2d (80, 90)
    # mean = (60 + 85) / 2 = 72.5; IQM of 50, 60, 70, 80, 90 (25% trimmed: one cut each side) = 70
    assert row[:5] == ["CQL", "locomotion", "2", "5", "72.5"] and row[6] == "70.0"
    assert row[8] == f"{(59.08 + 80.75) / 2:.2f}"  # the reference mean over the same datasets


def test_bootstrap_confidence_intervals_by_hand():
    """Task A runs {0, 10}, task B runs {20, 20}. Resampling each task's runs: A's mean is
    0, 5 or 10 (p = 1/4, 1/2, 1/4), B's is 20, so the mean over tasks is 10, 12.5 or 15:
    95% CI [10, 15]. IQM of the pooled 4 runs (one cut each side): resamples {0,0,20,20} -> 10
    (p = 1/4), {0,10,20,20} or {10,10,20,20} -> 15: CI [10, 15]; point estimate (10 + 20)/2."""

    def group(dataset, scores):
        return Group(dataset, "CQL", [Run(Path(f"/{dataset}/{i}"), {"status": "completed",
                                                                     "final_normalized_score": s}, [])
                                      for i, s in enumerate(scores)])

    (row,) = aggregate([group("hopper-medium-v2", [0.0, 10.0]), group("walker2d-medium-v2", [20.0, 20.0])],
                       reps=4000)
    assert row["mean"] == 12.5 and row["mean_ci"] == (10.0, 15.0)
    assert row["iqm"] == 15.0 and row["iqm_ci"] == (10.0, 15.0)
    assert row["runs"] == 4 and row["domain"] == "locomotion"


def test_domains_and_reference_file():
    assert [domain_of(d) for d in ("hopper-medium-v2", "mujoco/walker2d/expert-v0", "antmaze-umaze-v2",
                                   "D4RL/antmaze/large-play-v1", "pen-human-v1", "cql-modules/pendulum/mixed-v0")] \
        == ["locomotion", "locomotion", "antmaze", "antmaze", "adroit", "pendulum"]
    table, source = read_reference()
    assert len(table) == 9 and source.startswith("CORL (Tarasov et al.")
    assert np.mean([r["last_mean"] for r in table.values()]) == pytest.approx(78.28, abs=0.005)
    assert np.mean([r["best_mean"] for r in table.values()]) == pytest.approx(84.68, abs=0.005)


def test_report_of_a_real_sweep(minari_root, tmp_path):
    """A real 2 datasets x 2 seeds --multirun of tiny runs, then the real report command line:
    every number of the table from the runs' own summaries, computed here by hand."""
    from cql_modules.data import BehaviourSpec, build_minari_dataset

    second = "test/pendulum/results-b-v0"
    build_minari_dataset(second, "Pendulum-v1", [BehaviourSpec("random", 6), BehaviourSpec("scripted", 2)],
                         reference_episodes=2, num_envs=4, progress=False)
    run_recipe("--multirun", *tiny_overrides(), f"dataset.name={DATASET},{second}", "seed=0,1",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    out = run_recipe(str(tmp_path / "sweep"), "--out", str(tmp_path / "report"), "--reps", "200",
                     cwd=tmp_path, recipe="report.py")
    assert out.stdout.strip() == f"report written to {tmp_path / 'report' / 'report.md'}"
    report = (tmp_path / "report" / "report.md").read_text()
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert len(summaries) == 4
    rows = {r[0]: r for r in table_rows(report, "Per dataset")}
    assert set(rows) == {DATASET, second}
    for name, row in rows.items():
        mine = [s for s in summaries if s["dataset"] == name]
        final = [s["final_normalized_score"] for s in mine]
        best = [s["best_normalized_score"] for s in mine]
        assert row[1] == "CQL" and row[2] == "2"
        assert row[3] == f"{np.mean(final):.1f} ± {np.std(final, ddof=1):.1f}"
        assert row[4] == f"{np.mean(best):.1f} ± {np.std(best, ddof=1):.1f}"
        assert row[5] == f"{mine[0]['behaviour_normalized_score']:.1f}" and row[6] == "8"
        assert row[8] == f"{np.mean([s['updates_per_s'] for s in mine]):.1f}"
    (domain,) = table_rows(report, "Per domain and overall")
    means = [np.mean([s["final_normalized_score"] for s in summaries if s["dataset"] == d]) for d in rows]
    assert domain[:5] == ["CQL", "pendulum", "2", "4", f"{np.mean(means):.1f}"]
    assert "None: every run found completed." in report
    assert f"Generated by `python recipes/report.py {tmp_path / 'sweep'} --out" in report
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert len(pngs) == 2 and all(f"]({p})" in report for p in pngs)
    assert re.search(r"Reference:", report) is None  # no CORL dataset in this sweep


def test_report_of_a_fine_tuning_run(tiny_finetune_run, tmp_path):
    """A real offline-to-online run: its offline-phase score and regret columns, its curve."""
    report = write_report([tiny_finetune_run], tmp_path / "out", reps=200).read_text()
    summary = json.loads((tiny_finetune_run / "summary.json").read_text())
    (row,) = table_rows(report, "Per dataset")
    (header,) = table_rows(report, "Per dataset", header=True)
    assert header[9:11] == ["offline phase", "eval regret"]
    assert row[3] == f"{summary['final_normalized_score']:.1f}" and row[6] == "12"
    assert row[9] == f"{summary['offline_normalized_score']:.1f}" and row[10] == f"{summary['eval_regret']:.3f}"
    assert (tmp_path / "out" / f"curve_{DATASET.replace('/', '_')}.png").is_file()
