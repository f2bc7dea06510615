"""An independent plain-torch (float64) computation of docs/cql.md, sections 1-5.

It reads the networks' weights as plain tensors and evaluates every critic with its own
explicit matmuls, one critic and one proposal at a time: nothing is shared with
``cql_modules.objectives.cql`` except the random samples, which the tests record from the loss
(``record_samples``) so that both sides see the same actions.
"""
from __future__ import annotations

import math

import torch


def record_samples(loss):
    """Wrap the loss's samplers so that every draw is stored in the returned dict."""
    rec: dict[str, torch.Tensor] = {}
    orig_policy, orig_uniform = loss._sample_policy, loss._sample_uniform

    def sample_policy(dist, n):
        a, lp = orig_policy(dist, n)
        rec["actions"], rec["logp"] = a.detach().clone(), lp.detach().clone()
        return a, lp

    def sample_uniform(shape):
        u = orig_uniform(shape)
        rec["uniform"] = u.detach().clone()
        return u

    loss._sample_policy = sample_policy
    loss._sample_uniform = sample_uniform
    return rec


def _layers_from(params: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    idx = sorted({int(name.split(".")[-2]) for name in params})
    return [(params[f"{i}.weight"].double(), params[f"{i}.bias"].double()) for i in idx]


def critic_layers(loss, k: int, target: bool = False):
    """Plain (W, b) list of critic k, read from the loss's stacked parameters."""
    td = loss.target_qvalue_network_params if target else loss.qvalue_network_params
    params = {".".join(key[1:]): v[k].detach() for key, v in td.items(True, True)}
    return _layers_from(params)


def mlp(layers, x: torch.Tensor) -> torch.Tensor:
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


def actor_params(actor):
    named = {n: p.detach() for n, p in actor.named_parameters()}
    mult = next(v for n, v in named.items() if n.endswith("log_std_multiplier")).double()
    off = next(v for n, v in named.items() if n.endswith("log_std_offset")).double()
    lin = [(n, p) for n, p in named.items() if n.endswith(".weight") or n.endswith(".bias")]
    weights = [p for n, p in lin if n.endswith(".weight")]
    biases = [p for n, p in lin if n.endswith(".bias")]
    return [(w.double(), b.double()) for w, b in zip(weights, biases)], mult, off


def actor_loc_std(actor, obs: torch.Tensor):
    layers, mult, off = actor_params(actor)
    raw = mlp(layers, obs.double())
    loc, raw_log_std = raw.chunk(2, dim=-1)
    log_std = torch.clamp(mult * raw_log_std + off, -20.0, 2.0)
    return loc, log_std.exp()


def tanh_normal_log_prob(loc, std, action, low, high):
    """log density of low + (high-low) * (tanh(u) + 1) / 2, u ~ N(loc, std), at ``action``."""
    low, high = low.double(), high.double()
    y = 2.0 * (action.double() - low) / (high - low) - 1.0
    u = torch.atanh(y)
    normal = -0.5 * ((u - loc) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    log_det = torch.log(1 - y**2) + torch.log((high - low) / 2)
    return (normal - log_det).sum(-1)


def reference_cql(loss, td, rec, *, K, N, gamma, importance_sample=True, lagrange=False,
                  target_action_gap=-1.0, temperature=1.0, cql_alpha=10.0, max_target_backup=False,
                  backup_entropy=False, clip_diff_min=-math.inf, clip_diff_max=math.inf,
                  bc_active=False, alpha_multiplier=1.0, auto_alpha=True, calibrated=False):
    """Returns the scalar losses of docs/cql.md and a few per-critic metrics, in float64."""
    d = torch.float64
    s, s2 = td["observation"].to(d), td["next", "observation"].to(d)
    a = td["action"].to(d)
    B = s.shape[0]
    r = td["next", "reward"].to(d).reshape(B)
    term = td["next", "terminated"].reshape(B).to(d)
    low, high = loss.action_low.to(d), loss.action_high.to(d)
    log_u = -torch.log(high - low).sum()
    A = low.numel()
    acts, logp = rec["actions"].to(d), rec["logp"].to(d)
    nt = N if max_target_backup else 1
    a_pi, logp_pi = acts[0, 0], logp[0, 0]
    a_tgt, logp_tgt = acts[:nt, 1], logp[:nt, 1]
    a_cur, logp_cur = acts[nt:, 0], logp[nt:, 0]
    a_next, logp_next = acts[nt:, 1], logp[nt:, 1]
    a_rand = rec["uniform"].to(d)

    crit = [critic_layers(loss, k) for k in range(K)]
    tcrit = [critic_layers(loss, k, target=True) for k in range(K)]

    def Q(layers, obs, act):
        return mlp(layers, torch.cat([obs, act], -1))[..., 0]

    # 1. temperature
    if auto_alpha:
        log_alpha = loss.log_alpha.detach().to(d)
        alpha = log_alpha.exp() * alpha_multiplier
        loss_alpha = -(log_alpha * (logp_pi - A)).mean()
    else:
        alpha = torch.tensor(alpha_multiplier, dtype=d)
        loss_alpha = torch.tensor(0.0, dtype=d)

    # 2. actor
    if bc_active:
        loc, std = actor_loc_std(loss.actor_network, s)
        eps = 1e-6 * (high - low)
        logp_data = tanh_normal_log_prob(loc, std, a.clamp(low + eps, high - eps), low, high)
        loss_actor = (alpha * logp_pi - logp_data).mean()
    else:
        q_pi = torch.stack([Q(c, s, a_pi) for c in crit]).min(0).values
        loss_actor = (alpha * logp_pi - q_pi).mean()

    # 3. target
    per_action_min = torch.stack(
        [torch.stack([Q(c, s2, a_tgt[n]) for c in tcrit]).min(0).values for n in range(nt)]
    )  # [nt, B]: min over critics first
    if max_target_backup:
        v, idx = per_action_min.max(0)  # then max over actions
        logp_v = logp_tgt.gather(0, idx[None])[0]
    else:
        v, logp_v = per_action_min[0], logp_tgt[0]
    if backup_entropy:
        v = v - alpha * logp_v
    y = r + gamma * (1 - term) * v

    # 4. penalty per critic
    out = {"average_target_q": v.mean()}
    loss_q = torch.tensor(0.0, dtype=d)
    gaps = []
    mc = td["mc_return"].to(d).reshape(B) if calibrated else None
    for k, c in enumerate(crit):
        q_data = Q(c, s, a)
        td_k = ((q_data - y) ** 2).mean()
        q_rand = torch.stack([Q(c, s, a_rand[n]) for n in range(N)])
        q_cur = torch.stack([Q(c, s, a_cur[n]) for n in range(N)])
        q_next = torch.stack([Q(c, s, a_next[n]) for n in range(N)])  # scored at s
        if calibrated:
            q_cur, q_next = torch.maximum(q_cur, mc), torch.maximum(q_next, mc)
        if importance_sample:
            X = torch.cat([q_rand - log_u, q_next - logp_next, q_cur - logp_cur])  # [3N, B]
        else:
            X = torch.cat([q_rand, q_data[None], q_next, q_cur])  # [3N+1, B]
        ood = temperature * torch.logsumexp(X / temperature, dim=0)
        gap = torch.clamp(ood - q_data, clip_diff_min, clip_diff_max).mean()
        gaps.append(gap)
        if lagrange:
            ap = torch.clamp(loss.log_alpha_prime.detach().to(d).exp(), 0.0, 1e6)
            pen = ap * cql_alpha * (gap - target_action_gap)
        else:
            pen = cql_alpha * gap
        loss_q = loss_q + td_k + pen
        out[f"qf{k + 1}_loss"] = td_k
        out[f"cql_qf{k + 1}_diff"] = gap
        out[f"cql_min_qf{k + 1}_loss"] = pen
        out[f"average_qf{k + 1}"] = q_data.mean()
        out[f"cql_q{k + 1}_next_actions"] = torch.stack([Q(c, s, a_next[n]) for n in range(N)]).mean()
    out.update(loss_actor=loss_actor, loss_qvalue=loss_q, loss_alpha=loss_alpha)
    if lagrange:
        ap = torch.clamp(loss.log_alpha_prime.detach().to(d).exp(), 0.0, 1e6)
        out["loss_alpha_prime"] = -0.5 * ap * cql_alpha * sum(g - target_action_gap for g in gaps)
    return out
