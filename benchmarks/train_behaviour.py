#!/usr/bin/env python
"""Train a behaviour policy briefly with SAC (TorchRL's ``SACLoss``) and save it as a policy file.

A deliberately small online SAC loop on one gymnasium env, stopped by a wall-clock budget:
the policy only has to be a plausible "medium" behaviour policy for
``recipes/collect_dataset.py --mix POLICY.pt:...`` (see the README's Speed section for the
dataset built from it), not a tuned agent. The actor is ``cql_modules.make_actor`` (what
``save_policy_file`` stores); observations are raw (no normalizer in the file).

    python benchmarks/train_behaviour.py --env Hopper-v5 --minutes 8 --out hopper-sac.pt
"""
from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import SACLoss, SoftUpdate

from cql_modules.data import save_policy_file
from cql_modules.modules import bounded_action_spec, make_actor, make_critic


def evaluate(env: gym.Env, actor, episodes: int, seed: int) -> float:
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
                action = actor(TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}))["action"]
            obs, reward, terminated, truncated, _ = env.step(action.numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the training loop")
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=2, help="hidden layers of actor and critics")
    p.add_argument("--random-steps", type=int, default=5000, help="uniform-random steps before learning")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="policy file to write")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    env, eval_env = gym.make(a.env), gym.make(a.env)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    spec = bounded_action_spec(act_dim, env.action_space.low, env.action_space.high)
    actor = make_actor(obs_dim, spec, hidden_dim=a.hidden_dim, n_hidden_layers=a.layers)
    critic = make_critic(obs_dim, act_dim, hidden_dim=a.hidden_dim, n_hidden_layers=a.layers)
    loss = SACLoss(actor, critic, num_qvalue_nets=2, loss_function="l2", action_spec=spec)
    loss.make_value_estimator(gamma=0.99)
    target = SoftUpdate(loss, tau=5e-3)
    optim = torch.optim.Adam(loss.parameters(), lr=a.lr)
    buffer = ReplayBuffer(storage=LazyTensorStorage(1_000_000), batch_size=a.batch_size)

    obs, _ = env.reset(seed=a.seed)
    start, step, episode_return, returns = time.monotonic(), 0, 0.0, []
    while time.monotonic() - start < 60 * a.minutes:
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        if step < a.random_steps:
            action = torch.as_tensor(env.action_space.sample(), dtype=torch.float32)
        else:
            with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                action = actor(TensorDict({"observation": obs_t}))["action"]
        next_obs, reward, terminated, truncated, _ = env.step(action.numpy())
        buffer.add(TensorDict({
            "observation": obs_t, "action": action,
            "next": {"observation": torch.as_tensor(next_obs, dtype=torch.float32),
                     "reward": torch.tensor([reward], dtype=torch.float32),
                     # SAC bootstraps through time-outs: only a true termination ends the value
                     "done": torch.tensor([terminated]), "terminated": torch.tensor([terminated])},
        }))  # fmt: skip
        episode_return += float(reward)
        obs, step = next_obs, step + 1
        if terminated or truncated:
            returns.append(episode_return)
            obs, _ = env.reset()
            episode_return = 0.0
        if step >= a.random_steps:  # one update per environment step
            losses = loss(buffer.sample())
            optim.zero_grad()
            (losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]).backward()
            optim.step()
            target.step()
        if step % 5000 == 0:
            recent = np.mean(returns[-10:]) if returns else float("nan")
            print(f"step {step}  {time.monotonic() - start:.0f} s  episodes {len(returns)}  "
                  f"mean return (last 10, stochastic) {recent:.1f}", flush=True)
    score = evaluate(eval_env, actor, 5, seed=a.seed + 10_000)
    print(f"done: {step} steps in {time.monotonic() - start:.0f} s; deterministic return over 5 episodes {score:.1f}")
    save_policy_file(actor, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
