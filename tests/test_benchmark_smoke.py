"""Smoke test of benchmarks/bench_update.py: runs main() on a tiny shape and checks the
JSON it writes. No timing is asserted (the machines are shared and noisy)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_update.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_update", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flop_count_matches_spec_anchor(bench):
    # reference.md: one CORL-shape CQL update is about 13-14 GFLOP
    f = bench.flop_counts(B=256, N=10, hidden=256, layers=3)
    assert 13e9 < f["cql_spec_minimal"] < 14e9
    assert f["cql_spec_minimal"] < f["ours_evaluated"] < f["torchrl_cql_evaluated"]
    assert f["sac_minimal"] < f["cql_spec_minimal"] / 10


def test_modes_table_entries_are_component_kwargs(bench):
    assert bench.OUR_MODES["eager"] == {}
    for mode in bench.OUR_MODES.values():
        assert set(mode) <= set(bench.MODE_COMPONENTS)
        assert all(isinstance(kw, dict) for kw in mode.values())


def test_main_tiny_shape_writes_json(bench, tmp_path, monkeypatch):
    # a mode the installed UpdateStep cannot run is reported, not fatal
    monkeypatch.setitem(bench.OUR_MODES, "bogus", {"step": {"no_such_option": True}})
    out = tmp_path / "bench.json"
    result = bench.main([
        "--hidden", "16", "--batch-size", "8", "--num-actions", "2",
        "--rounds", "1", "--steps", "2", "--warmup", "1",
        "--dataset-size", "256", "--peak-seconds", "0.005", "--peak-square", "64",
        "--modes", "eager,bogus", "--json", str(out),
    ])
    data = json.loads(out.read_text())
    assert data["schema_version"] == bench.SCHEMA_VERSION
    assert data["timestamp"] == result["timestamp"]

    cfg = data["config"]
    assert (cfg["batch_size"], cfg["hidden"], cfg["rounds"], cfg["steps"]) == (8, 16, 1, 2)
    assert cfg["device"] == "cpu" and cfg["threads"] == torch.get_num_threads()

    for key in ("cpu_model", "torch", "torchrl", "tensordict", "torch_threads", "device_name"):
        assert key in data["machine"]
    for dtype in ("fp32", "bf16"):
        assert "gflops" in data["peaks"][dtype] and data["peaks"][dtype]["by_shape"]
    assert data["peaks"]["fp32"]["gflops"] > 0
    assert data["flops_per_update"]["cql_spec_minimal"] > 0
    assert data["sampling_ms_median"] > 0

    rows = {r["name"]: r for r in data["results"]}
    assert set(rows) == {"ours:eager", "ours:bogus", "torchrl-cql", "torchrl-sac"}
    bogus = rows.pop("ours:bogus")
    assert bogus["status"] == "unsupported" and "no_such_option" in bogus["error"]
    for r in rows.values():
        assert r["status"] == "ok", r
        assert len(r["updates_per_s_rounds"]) == 1
        for key in ("updates_per_s_median", "ms_per_update_median", "ratio_vs_torchrl_cql", "gflops_per_s",
                    "fraction_fp32_peak", "fraction_bf16_peak", "reference_flops", "evaluated_flops"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (r["name"], key)
        assert r["updates_per_s_best"] >= r["updates_per_s_median"]
        assert len(r["foreign_load_rounds"]) == 1 and "updates_per_s_quiet_median" in r
        mem = r["memory"]
        assert mem["batch_size"] == 8 and mem["peak_mb"] > 0 and mem["step_increase_mb"] > 0
    assert rows["torchrl-cql"]["ratio_vs_torchrl_cql"] == pytest.approx(1.0)
    assert rows["torchrl-sac"]["flops_accounting"] == "sac_minimal"
    assert rows["ours:eager"]["flops_accounting"] == "cql_spec_minimal"
