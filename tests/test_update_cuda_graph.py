"""``UpdateStep(cuda_graph=True)``: the whole update replayed as a CUDA graph. On a machine
without CUDA only the refusals run; with CUDA, graph replays must give the eager steps'
parameters (same draws, same batches), the behaviour-cloning warm-up included."""

import copy

import pytest
import torch

from cql_reference import record_samples
from helpers import make_batch, make_loss
from cql_modules.train.update import UpdateStep, cuda_graph_problem, make_optimizer

pytest_plugins = ("run_fixtures",)  # cli: the recipe's real command line, in-process

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_graph_refused_on_cpu():
    loss = make_loss()
    with pytest.raises(ValueError, match="cuda_graph: needs the loss on a CUDA device"):
        UpdateStep(loss, make_optimizer(loss, capturable=True), cuda_graph=True)


@needs_cuda
def test_cuda_graph_needs_capturable_optimizer_and_period_one():
    loss = make_loss().cuda()
    assert "capturable" in cuda_graph_problem(loss, make_optimizer(loss), 1)
    assert "target_update_period" in cuda_graph_problem(loss, make_optimizer(loss, capturable=True), 2)
    assert cuda_graph_problem(loss, make_optimizer(loss, capturable=True), 1) is None


@needs_cuda
@pytest.mark.parametrize("bc_steps", [0, 5])
def test_cuda_graph_replays_the_eager_steps(bc_steps):
    steps = 8
    base = make_loss(num_actions=3, bc_steps=bc_steps).cuda()
    batches = [make_batch(B=8, seed=s).cuda() for s in range(steps)]
    recorder = make_loss(num_actions=3, bc_steps=bc_steps)
    rec = record_samples(recorder)
    recorder(batches[0].cpu())  # fills rec with one step's draws
    rec = {k: v.cuda() for k, v in rec.items()}
    params = {}
    for graph in (False, True):
        loss = copy.deepcopy(base)
        # the same draws every step (replayed graphs reuse their static tensors)
        loss._sample_policy = lambda dist, n: (rec["actions"], rec["logp"])
        loss._sample_uniform = lambda shape: rec["uniform"]
        update = UpdateStep(loss, make_optimizer(loss, capturable=True), tau=0.05, cuda_graph=graph, cuda_graph_warmup=2)
        for b in batches:
            update(b.clone())
        assert update.n_steps == steps and int(loss.n_updates) == steps
        params[graph] = {k: v.detach().cpu() for k, v in loss.state_dict().items() if v.is_floating_point()}
    for k, v in params[False].items():
        torch.testing.assert_close(params[True][k], v, rtol=1e-5, atol=1e-6)


def test_the_recipes_refuse_cuda_graph_off_cuda_in_one_line(cli, tmp_path):
    from tiny_runs import tiny_overrides

    from cql_modules.train.cli import EXIT_CODES

    code, err = cli(*tiny_overrides(), "cuda_graph=true", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == EXIT_CODES["config"] and len(err) == 1, err
    assert err[0].startswith("config error: cuda_graph: needs the loss on a CUDA device")


def test_the_discrete_recipe_refuses_cuda_graph():
    from tiny_runs import load_recipe

    from cql_modules.train.config import ConfigError, validate_config

    recipe = load_recipe("discrete_cql")
    with pytest.raises(ConfigError, match=r"^cuda_graph: must be false"):
        validate_config({"cuda_graph": True}, recipe.DiscreteConfig, check_dataset=False,
                        learner_checks=recipe.check_discrete_learner)
