"""Cache-blocked forward + backward of the CQL critic loss for ReLU-MLP ensembles on CPU.

Why: on CPU the critic pass of a CQL update (K critics x (1 + 3N) actions x B states) is
bound by memory traffic, not FLOPs. Autograd keeps every activation of the whole pass
(K x 3 x [7936, 256] fp32 = 48 MB at CORL's shape) until the backward, so each ReLU,
bias copy, ReLU mask and bias-gradient pass streams megabytes from DRAM, and even the
matmuls run ~25% below their in-cache speed. But the critic loss of a state depends only
on the Q values of *that* state's 1 + 3N actions (TD error, logsumexp, Cal-QL bound), so
its gradient can be formed block by block: for a block of states, run the K critics
forward, take dLoss/dQ of the block, and back-propagate at once while every activation is
still in L2. Only the parameter gradients accumulate across blocks (docs/cql.md, section 7).

dLoss/dQ of a block is autograd's own gradient of
:func:`cql_modules.objectives.terms.critic_loss_terms` with respect to the block's small
``[K, b, 1 + 3N]`` Q tensor: no formula is restated here, and the tie rules of
``torch.maximum`` and ``torch.clamp`` are autograd's. ``CQLLoss`` computes the loss
*values* from the (detached) Q values returned here and adds :class:`FusedCriticGrad`'s
zero-valued carrier, whose backward hands the precomputed gradients (times the upstream
scalar) to the critic parameters. The critic inputs get no gradient: ``CQLLoss`` takes
this path only when they do not require one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cql_modules.objectives.terms import CriticLossOptions, critic_loss_terms

__all__ = ["FusedCriticConfig", "FusedCriticGrad", "critic_loss_grad"]


@dataclass(frozen=True)
class FusedCriticConfig:
    """The critic-loss options plus the blocking of the fused pass."""

    terms: CriticLossOptions
    block_rows: int  # rows per block (CQLLoss.fused_block_rows; cache_blocking.py derives one from L2)
    compute_dtype: torch.dtype | None = None  # hidden layers' dtype (bf16 mode), last layer stays


def critic_loss_grad(
    q: torch.Tensor,
    y: torch.Tensor,
    log_density: torch.Tensor,
    mc_return: torch.Tensor | None,
    alpha_prime: torch.Tensor | None,
    state_weight: torch.Tensor,
    opts: CriticLossOptions,
) -> torch.Tensor:
    """dLoss/dQ ``[K, b, 1 + 3N]`` for a block of states (state-major, action 0 = data).

    ``Loss = sum_states state_weight * sum_k (td_k + penalty_k)``, the terms from
    :func:`critic_loss_terms`; ``state_weight`` ``[b]`` is the reduction's weight of each
    state (1/B for a mean, priority weights / their sum with prioritized replay).
    """
    with torch.enable_grad():  # autograd.Function.forward runs with grad disabled
        # two leaves, not slices of one: autograd then allocates no zero-filled gradients
        q_data, q_proposals = q[..., 0].detach().requires_grad_(), q[..., 1:].detach().requires_grad_()
        t = critic_loss_terms(q_data, q_proposals, y, log_density, mc_return, alpha_prime, opts)
        loss = ((t.td + t.penalty).sum(0) * state_weight).sum()
        d_data, d_proposals = torch.autograd.grad(loss, (q_data, q_proposals))
        return torch.cat([d_data[..., None], d_proposals], dim=-1)


class FusedCriticGrad(torch.autograd.Function):
    """``apply(cfg, x, y, log_density, mc_return, alpha_prime, state_weight, *weights, *biases)``.

    Args:
        x: ``[B * (1 + 3N), in]`` critic inputs, state-major (the 1 + 3N actions of a
            state are consecutive rows, the dataset action first).
        y: ``[B]`` TD targets; log_density: ``[B, 3N]`` proposal log densities;
            mc_return: ``[B]`` or None; alpha_prime: the Lagrange multiplier or None;
            state_weight: ``[B]`` the reduction's weight of each state.
        weights, biases: the ensemble's stacked ``[K, out, in]`` / ``[K, out]`` layers.

    Returns ``(q, carrier)``: ``q`` ``[K, B, 1 + 3N]`` (no gradient) and a zero scalar
    whose gradient ``g`` sends ``g * dLoss/dparams`` to the critic parameters.
    """

    @staticmethod
    def forward(ctx, cfg, x, y, log_density, mc_return, alpha_prime, state_weight, *params):
        n_layers = len(params) // 2
        Ws, bs = params[:n_layers], params[n_layers:]
        K, rows = Ws[0].shape[0], x.shape[0]
        m = 1 + 3 * cfg.terms.num_actions
        B = rows // m
        # Like ensemble_mlp: hidden layers in compute_dtype, the last one (Q) in full precision;
        # weight gradients accumulate in the parameters' dtype.
        full = Ws[-1].dtype
        dts = [cfg.compute_dtype or full] * (n_layers - 1) + [full]
        # Activations stay contiguous ([K, rows, width]): each layer writes its bias into
        # the output block (in cache) and the matmul accumulates onto it. Folding the bias
        # in as a column of ones (row stride width + 1) made the forward matmuls 10-20%
        # slower (unaligned rows; benchmarks/bench_layer_layouts.py).
        w_t = [W.transpose(1, 2).contiguous().to(dt) for W, dt in zip(Ws, dts)]  # [K, in, out]
        b_row = [b[:, None].to(dt) for b, dt in zip(bs, dts)]  # [K, 1, out]
        w_dx = [W.to(dt) for W, dt in zip(Ws, dts)]
        grad_w = [torch.zeros(w.shape, dtype=full, device=x.device) for w in w_t]
        grad_b = [torch.zeros(b.shape, dtype=full, device=x.device) for b in b_row]
        q = torch.empty(K, rows, Ws[-1].shape[1], dtype=full, device=x.device)
        x_k = x.to(dts[0]).expand(K, rows, x.shape[1])

        states = max(1, cfg.block_rows // m)
        cap = min(B, states) * m
        # Scratch reused by every block so that it stays cache-resident.
        acts = [torch.empty(K, cap, W.shape[1], dtype=dt, device=x.device) for W, dt in zip(Ws[:-1], dts)]
        width = max((W.shape[2] for W in Ws[1:]), default=0)  # 0: a single Linear critic
        grads = [torch.empty(K, cap, width, dtype=dts[0], device=x.device) for _ in range(2)]
        thr_bwd = torch.ops.aten.threshold_backward.grad_input
        for s0 in range(0, B, states):
            s1 = min(B, s0 + states)
            r = (s1 - s0) * m
            ins = [x_k[:, s0 * m : s1 * m]]  # the input of each layer, in that layer's dtype
            for i in range(n_layers - 1):
                h = acts[i][:, :r]
                h.copy_(b_row[i].expand_as(h)).baddbmm_(ins[i], w_t[i]).relu_()
                ins.append(h if dts[i + 1] == dts[i] else h.to(dts[i + 1]))
            qb = q[:, s0 * m : s1 * m]
            qb.copy_(b_row[-1].expand_as(qb)).baddbmm_(ins[-1], w_t[-1])
            mc = mc_return[s0:s1] if mc_return is not None else None
            dq = critic_loss_grad(qb.view(K, s1 - s0, m), y[s0:s1], log_density[s0:s1], mc,
                                  alpha_prime, state_weight[s0:s1], cfg.terms)
            g = dq.view(K, r, 1)
            for i in range(n_layers - 1, -1, -1):
                g = g.to(dts[i])
                if dts[i] == full:
                    grad_w[i].baddbmm_(ins[i].transpose(1, 2), g)  # [K, in, out]: weight^T
                else:
                    grad_w[i].add_(torch.bmm(ins[i].transpose(1, 2), g))
                grad_b[i].add_(g.sum(1, keepdim=True, dtype=full))
                if i == 0:
                    break
                buf = grads[i % 2][:, :r, : Ws[i].shape[2]]  # in the dtype of layer i - 1
                if g.shape[-1] == 1:  # a 1-wide layer: an outer product, not a matmul
                    torch.mul(g, w_dx[i], out=buf)
                elif buf.dtype == g.dtype:
                    torch.bmm(g, w_dx[i], out=buf)
                else:
                    buf.copy_(torch.bmm(g, w_dx[i]))
                thr_bwd(buf, acts[i - 1][:, :r], 0, grad_input=buf)  # ReLU mask, in place
                g = buf
        ctx.grads = (
            *[gw.transpose(1, 2).contiguous() for gw in grad_w],
            *[gb[:, 0].contiguous() for gb in grad_b],
        )
        ctx.mark_non_differentiable(q)
        return q.view(K, B, m), x.new_zeros(())

    @staticmethod
    def backward(ctx, _grad_q, grad_carrier):
        # not in place: a retained graph may run this backward again
        return (None,) * 7 + tuple(g * grad_carrier for g in ctx.grads)
