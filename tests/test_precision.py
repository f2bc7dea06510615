"""The recipes' ``precision`` option (fp32 / bf16 / auto): its mapping onto
``CQLLoss(critic_compute_dtype=...)``, the ``auto`` rule on the CPU's flags (mocked both ways),
and the refusals, one of them through the recipe's real command line."""
from __future__ import annotations

import pytest
import torch
from tiny_runs import load_recipe, tiny_overrides

from cql_modules.train import build
from cql_modules.train.cli import EXIT_CODES
from cql_modules.train.config import ConfigError, OfflineConfig, validate_config

pytest_plugins = ("run_fixtures",)  # cli: the recipe's real command line, in-process

NATIVE = {"avx512_bf16": True}
NO_BF16 = {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False}


def with_flags(monkeypatch, flags: dict) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)


def config(**overrides) -> OfflineConfig:
    return validate_config(overrides, check_dataset=False)


@pytest.mark.parametrize("flags, expected", [(NATIVE, True), ({"amx_bf16": True}, True), (NO_BF16, False), ({}, False)])
def test_native_bf16_reads_the_cpu_flags(monkeypatch, flags, expected):
    with_flags(monkeypatch, flags)
    assert build.native_bf16("cpu") is expected


@pytest.mark.parametrize("precision, flags, dtype", [
    ("fp32", NATIVE, None), ("bf16", NATIVE, "bfloat16"),
    ("auto", NATIVE, "bfloat16"), ("auto", NO_BF16, None), ("fp32", NO_BF16, None),
])
def test_precision_maps_onto_critic_compute_dtype(monkeypatch, precision, flags, dtype):
    with_flags(monkeypatch, flags)
    assert build.critic_compute_dtype(config(precision=precision), "cpu") == dtype


def test_the_loss_argument_alone_still_works(monkeypatch):
    with_flags(monkeypatch, NO_BF16)  # the low-level argument is not second-guessed
    assert build.critic_compute_dtype(config(loss={"critic_compute_dtype": "bfloat16"}), "cpu") == "bfloat16"


def test_bf16_without_native_bf16_and_both_switches_are_refused(monkeypatch):
    with_flags(monkeypatch, NO_BF16)
    with pytest.raises(ConfigError, match=r"^precision: bf16 needs native bf16 matmul.*precision=auto"):
        build.critic_compute_dtype(config(precision="bf16"), "cpu")
    with pytest.raises(ConfigError, match=r"^precision: sets loss.critic_compute_dtype"):
        config(precision="bf16", loss={"critic_compute_dtype": "bfloat16"})
    with pytest.raises(ConfigError, match=r"^precision: must be fp32, bf16, auto"):
        config(precision="fp16")


def test_the_discrete_recipe_refuses_bf16():
    recipe = load_recipe("discrete_cql")
    with pytest.raises(ConfigError, match=r"^precision: must be fp32"):
        validate_config({"precision": "bf16"}, recipe.DiscreteConfig, check_dataset=False,
                        learner_checks=recipe.check_discrete_learner)


def test_the_command_line_refuses_bf16_without_native_bf16_in_one_line(cli, monkeypatch, tmp_path):
    with_flags(monkeypatch, NO_BF16)
    code, err = cli(*tiny_overrides(), "precision=bf16", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == EXIT_CODES["config"] and len(err) == 1, err
    assert err[0].startswith("config error: precision: bf16 needs native bf16 matmul") and "precision=fp32" in err[0]
