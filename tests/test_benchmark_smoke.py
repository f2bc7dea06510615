"""Smoke test of benchmarks/bench_update.py: runs main() on a tiny shape and checks the
JSON it writes. No timing is asserted (the machines are shared and noisy)."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from cql_reference import record_samples
from helpers import ACT, make_batch, make_loss

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load("bench_update")


def test_corl_structured_matches_cqlloss():
    """The CORL-structured contestant computes CQLLoss's values and critic gradients
    (same weights, same samples, float64): it is a peer, not a different algorithm."""
    corl_mod = _load("corl_structured")
    N, B = 3, 8
    loss = make_loss(num_actions=N).double()
    # the buffer was computed in float32 before .double(); CORL's constant is float64's log(0.5 ** A)
    loss.uniform_log_density.fill_(ACT * math.log(0.5))
    td = make_batch(B=B).double()
    rec = record_samples(loss)
    out = loss(td.clone())
    out["loss_qvalue"].backward()

    def critic_copy(k, target):
        params = loss.target_qvalue_network_params if target else loss.qvalue_network_params
        net = copy.deepcopy(loss.qvalue_network.module).double()
        net.load_state_dict({".".join(key[1:]): v[k].detach() for key, v in params.items(True, True)})
        return net

    corl = corl_mod.CORLStructuredCQL(loss.actor_network.module[0].module, critic_copy(0, False),
                                      critic_copy(1, False), ACT, num_actions=N)
    corl.target_critic_1, corl.target_critic_2 = critic_copy(0, True), critic_copy(1, True)
    acts, logp = rec["actions"], rec["logp"]  # [1 + N, 2 (s, s'), B, A]
    # CORL's actor calls, in its order: pi(s), pi(s'), N at s, N at s' (state-major)
    queue = [(acts[0, 0], logp[0, 0]), (acts[0, 1], logp[0, 1]),
             (acts[1:, 0].transpose(0, 1), logp[1:, 0].T), (acts[1:, 1].transpose(0, 1), logp[1:, 1].T)]
    corl.actor = lambda obs, repeat=None: queue.pop(0)
    corl.random_actions = lambda b: rec["uniform"].transpose(0, 1)
    mine = corl.losses(td["observation"], td["action"], td["next", "observation"], td["next", "reward"].reshape(B),
                       td["next", "terminated"].reshape(B).double())
    assert not queue
    tol = {"rtol": 1e-10, "atol": 1e-12}
    for key in ("loss_actor", "loss_qvalue", "loss_alpha"):
        torch.testing.assert_close(mine[key], out[key].detach(), **tol, msg=key)
    mine["loss_qvalue"].backward()
    ours = {key: v.grad for key, v in loss.qvalue_network_params.items(True, True)}
    for k, critic in enumerate((corl.critic_1, corl.critic_2)):
        for name, p in critic.named_parameters():
            torch.testing.assert_close(p.grad, ours[("module", *name.split("."))][k], **tol)


def test_corl_structured_train_steps_three_optimizers():
    corl_mod = _load("corl_structured")
    loss = make_loss(num_actions=2)
    critics = [copy.deepcopy(loss.qvalue_network.module) for _ in range(2)]
    corl = corl_mod.CORLStructuredCQL(loss.actor_network.module[0].module, *critics, ACT, num_actions=2)
    before = [p.detach().clone() for p in corl.parameters()]
    target_before = [p.detach().clone() for p in corl.target_critic_1.parameters()]
    out = corl.train(make_batch(B=8))
    assert set(out) == {"loss_actor", "loss_qvalue", "loss_alpha"}
    assert all(not torch.equal(a, b) for a, b in zip(before, corl.parameters()))  # every group stepped
    assert any(not torch.equal(a, b) for a, b in zip(target_before, corl.target_critic_1.parameters()))


def test_flop_count_matches_spec_anchor(bench):
    # reference.md: one CORL-shape CQL update is about 13-14 GFLOP
    f = bench.flop_counts(B=256, N=10, hidden=256, layers=3)
    assert 13e9 < f["cql_spec_minimal"] < 14e9
    assert f["cql_spec_minimal"] < f["ours_evaluated"] < f["torchrl_cql_evaluated"]
    assert f["sac_minimal"] < f["cql_spec_minimal"] / 10
    assert f["cql_spec_minimal"] < f["corl_structured_evaluated"]


def test_modes_table_entries_are_component_kwargs(bench):
    assert bench.OUR_MODES["eager"] == {}
    for mode in bench.OUR_MODES.values():
        assert set(mode) <= set(bench.MODE_COMPONENTS)
        assert all(isinstance(kw, dict) for kw in mode.values())


def test_main_tiny_shape_writes_json(bench, tmp_path, monkeypatch):
    # a mode the installed UpdateStep cannot run is reported, not fatal
    monkeypatch.setitem(bench.OUR_MODES, "bogus", {"step": {"no_such_option": True}})
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    result = bench.main([
        "--threads", "1",
        "--hidden", "16", "--batch-size", "8", "--num-actions", "2",
        "--rounds", "1", "--steps", "2", "--warmup", "1",
        "--dataset-size", "256", "--peak-seconds", "0.005", "--peak-square", "64",
        "--modes", "eager,eager-2048-blocks,bogus", "--json", str(out),
    ])
    assert torch.get_num_threads() == threads  # restored
    data = json.loads(out.read_text())
    assert data["schema_version"] == bench.SCHEMA_VERSION
    assert data["timestamp"] == result["timestamp"]

    cfg = data["config"]
    assert (cfg["batch_size"], cfg["hidden"], cfg["rounds"], cfg["steps"]) == (8, 16, 1, 2)
    assert cfg["device"] == "cpu" and cfg["threads"] == 1 and data["machine"]["torch_threads"] == 1

    for key in ("cpu_model", "cpu_flags", "cpu_caches_per_core_bytes", "lscpu_caches", "torch", "torchrl",
                "tensordict", "torch_threads", "device_name"):
        assert key in data["machine"]
    if Path("/sys/devices/system/cpu/cpu0/cache").exists():
        assert data["machine"]["cpu_caches_per_core_bytes"]["L2"] > 0
    for dtype in ("fp32", "bf16"):
        assert "gflops" in data["peaks"][dtype] and data["peaks"][dtype]["by_shape"]
    assert data["peaks"]["fp32"]["gflops"] > 0
    assert data["flops_per_update"]["cql_spec_minimal"] > 0
    assert data["sampling_ms_median"] > 0

    rows = {r["name"]: r for r in data["results"]}
    assert set(rows) == {"ours:eager", "ours:eager-2048-blocks", "ours:bogus", "corl-structured", "torchrl-cql",
                         "torchrl-sac"}
    bogus = rows.pop("ours:bogus")
    assert bogus["status"] == "unsupported" and "no_such_option" in bogus["error"]
    for r in rows.values():
        assert r["status"] == "ok", r
        assert len(r["updates_per_s_rounds"]) == 1
        for key in ("updates_per_s_median", "ms_per_update_median", "ratio_vs_torchrl_cql", "ratio_vs_corl",
                    "ratio_vs_corl_paired_median", "ratio_vs_corl_paired_min", "ratio_vs_corl_paired_max",
                    "ratio_vs_torchrl_cql_paired_median", "gflops_per_s", "fraction_fp32_peak", "fraction_bf16_peak",
                    "reference_flops", "evaluated_flops"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (r["name"], key)
        assert r["updates_per_s_best"] >= r["updates_per_s_median"]
        assert len(r["foreign_load_rounds"]) == 1 and "updates_per_s_quiet_median" in r
        mem = r["memory"]
        assert mem["batch_size"] == 8 and mem["peak_mb"] > 0 and mem["step_increase_mb"] > 0
    assert rows["torchrl-cql"]["ratio_vs_torchrl_cql"] == pytest.approx(1.0)
    assert rows["corl-structured"]["ratio_vs_corl_paired_median"] == pytest.approx(1.0)
    assert rows["corl-structured"]["evaluated_flops"] > rows["ours:eager"]["evaluated_flops"]

    table = _load("speed_table").table([out])
    assert "| CORL-structured update |" in table and "ours, fp32 (default)" in table
    assert rows["torchrl-sac"]["flops_accounting"] == "sac_minimal"
    assert rows["ours:eager"]["flops_accounting"] == "cql_spec_minimal"


def test_cuda_graph_needs_cuda(bench):
    with pytest.raises(SystemExit, match="--cuda-graph needs --device cuda"):
        bench.main(["--cuda-graph", "--rounds", "0"])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_path_matches_cpu():
    """The CUDA path (batched ensemble matmuls, fused Adam) gives the CPU path's (fused
    critic) loss values and critic gradients for the same weights and samples."""
    from cql_modules.train.update import make_optimizer

    N, B = 3, 8
    losses = {"cpu": make_loss(num_actions=N)}
    losses["cuda"] = copy.deepcopy(losses["cpu"]).cuda()
    td = make_batch(B=B)
    rec = record_samples(losses["cpu"])
    out = {"cpu": losses["cpu"](td.clone())}
    # replay the CPU draws on CUDA
    losses["cuda"]._sample_policy = lambda dist, n: (rec["actions"].cuda(), rec["logp"].cuda())
    losses["cuda"]._sample_uniform = lambda shape: rec["uniform"].cuda()
    out["cuda"] = losses["cuda"](td.clone().cuda())
    grads = {}
    for dev, loss in losses.items():
        out[dev]["loss_qvalue"].backward()
        grads[dev] = {k: v.grad.cpu() for k, v in loss.qvalue_network_params.items(True, True)}
    for key in ("loss_actor", "loss_qvalue", "loss_alpha"):
        torch.testing.assert_close(out["cuda"][key].cpu(), out["cpu"][key].detach(), rtol=1e-4, atol=1e-5)
    for key, g in grads["cpu"].items():
        torch.testing.assert_close(grads["cuda"][key], g, rtol=1e-3, atol=1e-5)
    opt = make_optimizer(losses["cuda"])
    assert opt.defaults["fused"]
    opt.step()
    assert all(torch.isfinite(p).all() for g in opt.param_groups for p in g["params"])


@needs_cuda
def test_bench_cuda_graph_tiny(bench, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--device", "cuda", "--cuda-graph", "--hidden", "16", "--batch-size", "8", "--num-actions", "2",
                "--rounds", "1", "--steps", "3", "--dataset-size", "256", "--peak-seconds", "0.005",
                "--peak-square", "64", "--modes", "eager", "--baselines", "none", "--json", str(out)])
    row = json.loads(out.read_text())["results"][0]
    assert row["status"] == "ok", row
    assert row["hours_per_million_updates"] > 0


def test_bf16_learning_tabulates_runs(tmp_path, capsys):
    mod = _load("bf16_learning")
    for prec, seed, final, qf1 in (("fp32", 0, 100.0, [-5.0, -3.0]), ("fp32", 1, 90.0, [-4.0, -1.0]),
                                   ("bf16", 0, 80.0, [-2.0, 7.0])):
        d = tmp_path / f"{prec}-seed{seed}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"final_normalized_score": final, "best_normalized_score": final + 1}))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "average_qf1": q}) + "\n"
                                                 for i, q in enumerate(qf1)))
    runs = mod.main(["--tabulate", str(tmp_path)])
    assert [r["average_qf1_final"] for r in runs["fp32"]] == [-3.0, -1.0]
    assert runs["bf16"][0]["best"] == 81.0
    assert "| fp32 | 2 | 95.0 ± 7.1 | 96.0 ± 7.1 | -2.0 ± 1.4 |" in capsys.readouterr().out


def test_default_block_rows_from_threads_and_l3():
    from cql_modules.objectives.cache_blocking import ROWS_PER_THREAD, cpu_cache_bytes, default_block_rows

    l3 = 32 << 20
    # ROWS_PER_THREAD per thread ...
    assert default_block_rows(256, 2, 3, torch.float32, threads=1, l3_bytes=l3) == ROWS_PER_THREAD == 2048
    assert default_block_rows(256, 2, 3, torch.float32, threads=2, l3_bytes=l3) == 4096
    # ... while the K critics' hidden activations, K x layers x width values per row, fit in L3
    assert default_block_rows(256, 2, 3, torch.float32, threads=16, l3_bytes=l3) == 5440  # 32 MiB / 6 KiB, floor 64
    assert default_block_rows(256, 2, 3, torch.bfloat16, threads=16, l3_bytes=l3) == 10880
    assert default_block_rows(256, 10, 3, torch.float32, threads=2, l3_bytes=l3) == 1088
    assert default_block_rows(4096, 10, 4, torch.float64, threads=1, l3_bytes=1 << 20) == 64  # floor
    caches = cpu_cache_bytes()
    assert all(isinstance(v, int) and v > 0 for v in caches.values())
    assert default_block_rows(256, 2, 3) >= 64


def test_profile_and_block_scripts_tiny(tmp_path):
    tiny = ["--threads", "1", "--steps", "1", "--batch-size", "8", "--hidden", "16", "--num-actions", "2"]
    threads = torch.get_num_threads()
    try:
        prof = _load("profile_update").main([*tiny, "--json", str(tmp_path / "p.json")])
        blocks = _load("bench_block_rows").main([*tiny, "--rounds", "1", "--rows", "31,62"])
    finally:
        torch.set_num_threads(threads)
    phases = {r["phase"]: r for r in prof["phases"]}
    assert set(phases) == set(_load("profile_update").PHASES)
    assert phases["loss forward"]["critic penalty matmuls"] > 0 and prof["total"]["wall_ms"] > 0
    assert {31, 62, blocks["default_block_rows"]} == set(blocks["rates"])
    assert json.loads((tmp_path / "p.json").read_text())["mode"] == "eager"


def test_layer_layouts_tiny():
    threads = torch.get_num_threads()
    try:
        res = _load("bench_layer_layouts").main(["--rows", "8", "--width", "4", "--trials", "1"])
    finally:
        torch.set_num_threads(threads)
    assert len(res[8]) == 5 and all(v > 0 for v in res[8].values())


def test_cpu_suite_commands(capsys):
    _load("cpu_suite").main(["--dry-run", "--name", "some-cpu", "--only", "2t,1t"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "--threads 2" in lines[0] and "--threads 1" in lines[1]
    assert lines[0].endswith("--json benchmarks/results/some-cpu-2t.json") and "corl-structured" in lines[0]
