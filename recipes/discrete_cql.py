"""Offline discrete-action CQL (CQL(H) on a DQN backbone), end to end.

    python recipes/discrete_cql.py                                  # embedded CartPole dataset, 2-3 minutes on 2 CPU cores
    python recipes/discrete_cql.py loss.cql_alpha=0                 # plain (double) DQN on the same data
    python recipes/discrete_cql.py loss.num_qvalue_nets=2 optim.target_update=hard optim.target_update_period=500
    python recipes/discrete_cql.py discrete_dataset=D4RL/minigrid/fourrooms-v0 dataset.download=true
    python recipes/discrete_cql.py resume=true hydra.run.dir=<run dir>   # continue a stopped run

Config: configs/discrete_cql.yaml + a preset of configs/discrete_dataset/; the schema is
:class:`DiscreteConfig` below (the ``loss`` section is derived from
``DiscreteCQLLoss.__init__``). Same run engine, outputs and exit codes as
``recipes/offline_cql.py``: metrics.jsonl, summary.json, learning_curve.png,
checkpoints/last.pt, csv/tensorboard/wandb logs; the final line prints the normalized score
of the greedy policy (full episodes).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, make_dataclass
from pathlib import Path
from typing import Optional

import gymnasium as gym
import torch
from torch import nn
from torchrl.data import Categorical
from torchrl.modules import MLP, QValueActor
from torchrl.objectives import HardUpdate

from cql_modules.objectives.discrete import DiscreteCQLLoss
from cql_modules.train.build import load_data, setup_run
from cql_modules.train.cli import hydra_entry
from cql_modules.train.config import ConfigError, OfflineConfig, loss_fields, register_configs, validate_config
from cql_modules.train.loop import RunEngine
from cql_modules.train.summary import fmt
from cql_modules.train.update import UpdateStep

log = logging.getLogger("discrete_cql")


# ---------------------------------------------------------------- configuration
@dataclass
class DiscreteNetworkConfig:
    """The Q-network: a ReLU MLP from the (flat) observation to one value per action."""

    hidden_dim: int = 256
    n_hidden_layers: int = 2


DiscreteLossConfig = make_dataclass(
    "DiscreteLossConfig", loss_fields(DiscreteCQLLoss, skip=("self", "value_network", "action_space")),
)
DiscreteLossConfig.__doc__ = "Keyword arguments of DiscreteCQLLoss (same names and defaults)."


@dataclass
class DiscreteOptimConfig:
    """Adam on the Q-networks (and alpha'), and the target-network update."""

    lr: float = 1e-3
    alpha_prime_lr: Optional[float] = None  #: None: lr
    target_update: str = "soft"  #: soft (SoftUpdate, Polyak tau) or hard (HardUpdate: copy)
    tau: float = 5e-3  #: Polyak rate of the soft update
    target_update_period: int = 1  #: updates between target updates (hard: between copies)


@dataclass
class DiscreteConfig(OfflineConfig):
    """``OfflineConfig`` with the discrete learner's ``network``, ``loss`` and ``optim``."""

    network: DiscreteNetworkConfig = field(default_factory=DiscreteNetworkConfig)
    loss: DiscreteLossConfig = field(default_factory=DiscreteLossConfig)
    optim: DiscreteOptimConfig = field(default_factory=DiscreteOptimConfig)


def check_discrete_learner(check, c: DiscreteConfig) -> None:
    for key in ("network.hidden_dim", "network.n_hidden_layers", "loss.num_qvalue_nets", "loss.temperature",
                "optim.lr", "optim.target_update_period"):
        check.positive(key)
    check.positive("loss.cql_alpha", allow_zero=True)
    check.positive("optim.alpha_prime_lr", optional=True)
    check(0 < c.loss.gamma <= 1, "loss.gamma", "must be in (0, 1]")
    check(c.loss.loss_function in ("l2", "l1", "smooth_l1"), "loss.loss_function", "must be l2, l1 or smooth_l1")
    check(c.loss.reduction in ("mean", "sum"), "loss.reduction", "must be mean or sum (an update needs a scalar loss)")
    check(c.optim.target_update in ("soft", "hard"), "optim.target_update", "must be soft or hard")
    check(c.precision == "fp32", "precision", "must be fp32: the discrete learner has no bf16 path")
    check(not c.cuda_graph, "cuda_graph", "must be false: the discrete learner has no CUDA-graph path")
    check(0 < c.optim.tau <= 1, "optim.tau", "must be in (0, 1]")


register_configs("discrete_cql_schema", DiscreteConfig)


# ---------------------------------------------------------------- learner
class DiscreteUpdateStep(UpdateStep):
    """``UpdateStep`` (one backward, one Adam step) whose target update is TorchRL's
    ``HardUpdate`` (a copy every ``target_update_period`` updates) when ``hard``."""

    def __init__(self, loss, optimizer, *, hard: bool, tau: float, target_update_period: int, compile=False):
        super().__init__(loss, optimizer, tau=tau, target_update_period=target_update_period, compile=compile)
        if hard:
            self.target_updater = HardUpdate(loss, value_network_update_interval=target_update_period)
            self.target_update_period = 1  # HardUpdate counts its own steps


def build_discrete_learner(c: DiscreteConfig, info, device):
    """``(actor, loss, update)``: a greedy ``QValueActor``, ``DiscreteCQLLoss``, Adam."""
    if not isinstance(info.action_space, gym.spaces.Discrete):
        raise ConfigError(f"dataset.name: {info.name} has {info.action_space} actions; this recipe needs Discrete "
                          "ones (recipes/offline_cql.py handles continuous actions)")
    n = c.network
    net = MLP(in_features=info.observation_space.shape[0], out_features=int(info.action_space.n),
              num_cells=[n.hidden_dim] * n.n_hidden_layers, activation_class=nn.ReLU)
    actor = QValueActor(net, in_keys=["observation"], spec=Categorical(int(info.action_space.n))).to(device)
    try:
        loss = DiscreteCQLLoss(actor, **asdict(c.loss)).to(device)
    except ValueError as err:
        raise ConfigError(f"loss: {err}") from err
    o = c.optim
    groups = [{"name": "critic", "params": list(loss.value_network_params.values(True, True)), "lr": o.lr}]
    if loss.lagrange:
        groups.append({"name": "alpha_prime", "params": [loss.log_alpha_prime], "lr": o.alpha_prime_lr or o.lr})
    optimizer = torch.optim.Adam(groups)
    update = DiscreteUpdateStep(loss, optimizer, hard=o.target_update == "hard", tau=o.tau,
                                target_update_period=o.target_update_period, compile=c.compile)
    return actor, loss, update


# ---------------------------------------------------------------- the run
def train(cfg, run_dir: str | Path) -> dict:
    """Run offline discrete CQL with config ``cfg`` in ``run_dir``; return the summary dict."""
    c = validate_config(cfg, DiscreteConfig, learner_checks=check_discrete_learner)
    device = setup_run(c)  # seeds, threads, device

    # 1. Data: categorical actions are int64 [B] in the buffer, read by the loss as such.
    rb, info = load_data(c, device)
    log.info("dataset %s: %d transitions, behaviour normalized score %s", info.name, info.num_transitions,
             fmt(info.behaviour_score))

    # 2. Q-network(s), the loss and the update step.
    actor, loss, update = build_discrete_learner(c, info, device)

    # 3. Train on uniform batches; the engine logs, evaluates the greedy policy on full
    #    episodes, checkpoints, resumes and writes the summary (recipes/offline_cql.py).
    engine = RunEngine(c, run_dir, info, actor, loss, update, sample=rb.sample, replay_buffer=rb, device=device)
    return engine.run(c.num_updates, desc="discrete CQL").finish()


main = hydra_entry(train, "discrete_cql")  # one-line errors with exit codes, resume from the run's own config, SIGTERM = Ctrl-C


if __name__ == "__main__":
    main()
