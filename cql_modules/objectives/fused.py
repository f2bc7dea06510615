"""Cache-blocked forward + backward of the CQL critic loss for ReLU-MLP ensembles on CPU.

Why: on CPU the critic pass of a CQL update (K critics x (1 + 3N) actions x B states) is
bound by memory traffic, not FLOPs. Autograd keeps every activation of the whole pass
(K x 3 x [7936, 256] fp32 = 48 MB at CORL's shape) until the backward, so each ReLU,
bias copy, ReLU mask and bias-gradient pass streams megabytes from DRAM, and even the
matmuls run ~25% below their in-cache speed. But the critic loss of a state depends only
on the Q values of *that* state's 1 + 3N actions (TD error, logsumexp, Cal-QL bound), so
its gradient can be formed block by block: for a block of states, run the K critics
forward, compute dLoss/dQ in closed form, and back-propagate at once while every
activation is still in L2. Only the parameter gradients accumulate across blocks.

The closed-form dLoss/dQ below mirrors the autograd of ``CQLLoss``'s own formulas
(section 4 of cql-spec.md) exactly, including the tie rules of ``torch.maximum`` and
``torch.clamp``; ``tests/test_fused_critic.py`` checks it against autograd for every
loss option. ``CQLLoss`` computes its loss *values* with its ordinary code on the
(detached) Q values returned here and adds :class:`FusedCriticGrad`'s zero-valued
carrier, whose backward hands the precomputed gradients (times the upstream scalar) to
the critic parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FusedCriticConfig", "FusedCriticGrad", "critic_loss_grad"]


@dataclass(frozen=True)
class FusedCriticConfig:
    """The loss options that shape dLoss/dQ (mirrors ``CQLLoss``'s attributes)."""

    num_actions: int
    importance_sample: bool
    temperature: float
    clip_diff_min: float
    clip_diff_max: float
    calibrated: bool
    loss_function: str
    block_rows: int = 2048
    compute_dtype: torch.dtype | None = None  # hidden layers' dtype (bf16 mode), last layer stays


def _td_grad(err: torch.Tensor, loss_function: str) -> torch.Tensor:
    """d distance_loss(q, y) / dq for ``err = q - y`` (TorchRL's l2 / l1 / smooth_l1)."""
    if loss_function == "l2":
        return 2.0 * err
    if loss_function == "l1":
        return torch.sign(err)
    return err.clamp(-1.0, 1.0)  # smooth_l1 with beta = 1


def critic_loss_grad(
    q: torch.Tensor,
    y: torch.Tensor,
    log_density: torch.Tensor,
    mc_return: torch.Tensor | None,
    penalty_scale: torch.Tensor,
    weight: float,
    cfg: FusedCriticConfig,
) -> torch.Tensor:
    """dLoss/dQ for a block of states, ``[K, b, 1 + 3N]`` (state-major, action 0 = data).

    ``Loss = weight * sum_{k, states} (td + penalty)`` with ``penalty = penalty_scale *
    clamp(tau * logsumexp(X / tau) - Q_data)`` as in ``CQLLoss.forward``; ``X`` holds the
    3N proposals (minus their log densities with importance sampling; plus ``Q_data``
    without). ``penalty_scale`` is ``cql_alpha`` (times the detached alpha' with Lagrange).
    """
    n = cfg.num_actions
    q_data, props = q[..., 0], q[..., 1:]
    if cfg.calibrated:
        # torch.maximum(q, mc) passes the gradient where q > mc, half of it on ties
        mc = mc_return[None, :, None]
        pol = props[..., n:]
        cal = (pol > mc).to(q.dtype) + 0.5 * (pol == mc).to(q.dtype)
        props = torch.cat([props[..., :n], torch.maximum(pol, mc)], dim=-1)
    tau = cfg.temperature
    if cfg.importance_sample:
        x = props - log_density[None, :, 1:]
    else:
        x = torch.cat([q_data[..., None], props], dim=-1)
    z = x / tau
    lse = torch.logsumexp(z, dim=-1)
    soft = torch.exp(z - lse[..., None])  # softmax, reusing the logsumexp
    gap = tau * lse - q_data
    inside = (gap >= cfg.clip_diff_min) & (gap <= cfg.clip_diff_max)  # clamp's backward mask
    coef = (penalty_scale * weight) * inside.to(q.dtype)  # [K, b]
    d = coef[..., None] * soft
    if cfg.importance_sample:
        d_data = -coef
        d_props = d
    else:
        d_data = d[..., 0] - coef
        d_props = d[..., 1:]
    if cfg.calibrated:
        d_props = torch.cat([d_props[..., :n], d_props[..., n:] * cal], dim=-1)
    d_data = d_data + weight * _td_grad(q_data - y[None, :], cfg.loss_function)
    return torch.cat([d_data[..., None], d_props], dim=-1)


class FusedCriticGrad(torch.autograd.Function):
    """``apply(cfg, x, y, log_density, mc_return, penalty_scale, weight, *weights, *biases)``.

    Args:
        x: ``[B * (1 + 3N), in]`` critic inputs, state-major (the 1 + 3N actions of a
            state are consecutive rows, the dataset action first).
        y: ``[B]`` TD targets; log_density: ``[B, 1 + 3N]`` proposal log densities
            (column 0 unused); mc_return: ``[B]`` or None; penalty_scale: scalar tensor;
            weight: the reduction's per-state weight (1/B for a mean, 1 for a sum).
        weights, biases: the ensemble's stacked ``[K, out, in]`` / ``[K, out]`` layers.

    Returns ``(q, carrier)``: ``q`` ``[K, B, 1 + 3N]`` (no gradient) and a zero scalar
    whose gradient ``g`` sends ``g * dLoss/dparams`` to the critic parameters.
    """

    @staticmethod
    def forward(ctx, cfg, x, y, log_density, mc_return, penalty_scale, weight, *params):
        n_layers = len(params) // 2
        Ws, bs = params[:n_layers], params[n_layers:]
        K, rows = Ws[0].shape[0], x.shape[0]
        m = 1 + 3 * cfg.num_actions
        B = rows // m
        # Like ensemble_mlp: hidden layers in compute_dtype, the last one (Q) in full precision;
        # weight gradients accumulate in the parameters' dtype.
        full = Ws[-1].dtype
        dts = [cfg.compute_dtype or full] * (n_layers - 1) + [full]
        # Biases ride in the matmuls: every layer input carries a column of ones and
        # every weight its bias as an extra row ([K, in + 1, out]). This saves addmm's
        # bias copy in the forward and the bias-gradient reduction in the backward: the
        # bias gradient is the extra row of the (transposed) weight gradient.
        w_aug = [torch.cat([W.transpose(1, 2), b[:, None]], dim=1).to(dt) for W, b, dt in zip(Ws, bs, dts)]
        w_dx = [W.to(dt) for W, dt in zip(Ws, dts)]
        grad_aug = [torch.zeros(w.shape, dtype=full, device=x.device) for w in w_aug]
        q = torch.empty(K, rows, Ws[-1].shape[1], dtype=full, device=x.device)
        x_aug = torch.cat([x, x.new_ones(rows, 1)], dim=1).to(dts[0]).expand(K, rows, x.shape[1] + 1)

        states = max(1, cfg.block_rows // m)
        cap = min(B, states) * m
        # Scratch reused by every block so that it stays cache-resident.
        acts = [torch.empty(K, cap, W.shape[1] + 1, dtype=dt, device=x.device) for W, dt in zip(Ws[:-1], dts)]
        for a in acts:
            a[..., -1] = 1.0
        width = max((W.shape[2] for W in Ws[1:]), default=0)  # 0: a single Linear critic
        grads = [torch.empty(K, cap, width, dtype=dts[0], device=x.device) for _ in range(2)]
        thr_bwd = torch.ops.aten.threshold_backward.grad_input
        for s0 in range(0, B, states):
            s1 = min(B, s0 + states)
            r = (s1 - s0) * m
            xb = x_aug[:, s0 * m : s1 * m]
            ins = [xb]  # the input of each layer, in that layer's dtype
            for i in range(n_layers - 1):
                h = acts[i][:, :r]
                torch.bmm(ins[i], w_aug[i], out=h[..., :-1]).relu_()
                ins.append(h if dts[i + 1] == dts[i] else h.to(dts[i + 1]))
            qb = q[:, s0 * m : s1 * m]
            torch.bmm(ins[-1], w_aug[-1], out=qb)
            mc = mc_return[s0:s1] if mc_return is not None else None
            dq = critic_loss_grad(qb.view(K, s1 - s0, m), y[s0:s1], log_density[s0:s1], mc,
                                  penalty_scale, weight, cfg)
            g = dq.view(K, r, 1)
            for i in range(n_layers - 1, -1, -1):
                g = g.to(dts[i])
                if dts[i] == full:
                    grad_aug[i].baddbmm_(ins[i].transpose(1, 2), g)  # [K, in + 1, out]: weight^T and bias
                else:
                    grad_aug[i].add_(torch.bmm(ins[i].transpose(1, 2), g))
                if i == 0:
                    break
                buf = grads[i % 2][:, :r, : Ws[i].shape[2]]  # in the dtype of layer i - 1
                if g.shape[-1] == 1:  # a 1-wide layer: an outer product, not a matmul
                    torch.mul(g, w_dx[i], out=buf)
                elif buf.dtype == g.dtype:
                    torch.bmm(g, w_dx[i], out=buf)
                else:
                    buf.copy_(torch.bmm(g, w_dx[i]))
                thr_bwd(buf, acts[i - 1][:, :r, :-1], 0, grad_input=buf)  # ReLU mask, in place
                g = buf
        ctx.grads = (
            *[ga[:, :-1].transpose(1, 2).contiguous() for ga in grad_aug],
            *[ga[:, -1].contiguous() for ga in grad_aug],
        )
        ctx.mark_non_differentiable(q)
        return q.view(K, B, m), x.new_zeros(())

    @staticmethod
    def backward(ctx, _grad_q, grad_carrier):
        # not in place: a retained graph may run this backward again
        return (None,) * 7 + tuple(g * grad_carrier for g in ctx.grads)
