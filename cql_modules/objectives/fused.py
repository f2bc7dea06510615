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

One critic at a time, and nothing large is allocated: the GEMMs write (``out=``) the
activations and input gradients into buffers kept across calls (the ``workspace`` that
``CQLLoss`` owns). Why not oneDNN's linear, 12-19% faster than torch's GEMM at these shapes
on an AMD EPYC (Zen 4)? It has no ``out=`` form, and its fresh ~2 MB outputs per block made
glibc's malloc return pages to the OS and fault them in again (~7000 page faults per update
at CORL's shape): the allocation-free pass made the whole update 1.06x faster at 1 thread
and 1.09x at 2 there (paired, README). Running the critics concurrently, each on its own thread, measured no
faster at 2 threads (docs/cql.md, section 7).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cql_modules.objectives.terms import CriticLossOptions, critic_loss_terms

__all__ = ["FusedCriticConfig", "FusedCriticGrad", "critic_loss_grad"]


@dataclass(frozen=True)
class FusedCriticConfig:
    """The critic-loss options plus the blocking of the fused pass."""

    terms: CriticLossOptions
    block_rows: int  # rows per block (CQLLoss.fused_block_rows, by default from cache_blocking.py)
    compute_dtype: torch.dtype | None = None  # hidden layers' dtype (bf16 mode), last layer stays
    # buffers reused across calls (CQLLoss keeps one per loss); a fresh one allocates per call
    workspace: dict = field(default_factory=dict, compare=False, repr=False)


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


def _buffer(workspace: dict, key, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The workspace's ``[rows, cols]`` buffer ``key``, (re)allocated when its shape, dtype or
    device changed."""
    t = workspace.get(key)
    if t is None or t.shape != (rows, cols) or t.dtype != dtype or t.device != device:
        t = workspace[key] = torch.empty(rows, cols, dtype=dtype, device=device)
    return t


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
        # per layer, the K critics' views (unbound once: indexing a tensor per block costs dispatch)
        w_t = [W.transpose(1, 2).to(dt) for W, dt in zip(Ws, dts)]  # [K, in, out] views
        w_c = [W.to(dt).unbind(0) for W, dt in zip(Ws, dts)]  # [out, in] each
        b_c = [b.to(dt).unbind(0) for b, dt in zip(bs, dts)]
        grad_w = [torch.zeros(w.shape, dtype=full, device=x.device) for w in w_t]  # [K, in, out]
        grad_b = [torch.zeros(b.shape, dtype=full, device=x.device) for b in bs]
        w_t, grad_w_k, grad_b_k = ([t.unbind(0) for t in ts] for ts in (w_t, grad_w, grad_b))
        q = torch.empty(K, rows, Ws[-1].shape[1], dtype=full, device=x.device)
        x_c = x.to(dts[0])
        states = max(1, cfg.block_rows // m)
        thr_bwd = torch.ops.aten.threshold_backward.grad_input

        def buf(key, cols, dtype):
            return _buffer(cfg.workspace, key, min(B, states) * m, cols, dtype, x.device)

        for s0 in range(0, B, states):
            s1 = min(B, s0 + states)
            r = (s1 - s0) * m
            # critic k: ins[k][i] = the input of layer i in that layer's dtype, acts[k][i] = the
            # ReLU output of layer i in its own dtype (the mask of layer i's backward)
            ins, acts = [], []
            for k in range(K):
                ins.append([x_c[s0 * m : s1 * m]])
                acts.append([])
                for i in range(n_layers - 1):
                    h = buf(("act", k, i), Ws[i].shape[1], dts[i])[:r]
                    acts[k].append(torch.addmm(b_c[i][k], ins[k][i], w_t[i][k], out=h).relu_())
                    if dts[i + 1] != dts[i]:
                        h = buf(("in", k, i + 1), Ws[i].shape[1], dts[i + 1])[:r].copy_(h)
                    ins[k].append(h)
                torch.addmm(b_c[-1][k], ins[k][-1], w_t[-1][k], out=q[k, s0 * m : s1 * m])
            mc = mc_return[s0:s1] if mc_return is not None else None
            dq = critic_loss_grad(q[:, s0 * m : s1 * m].view(K, s1 - s0, m), y[s0:s1],
                                  log_density[s0:s1], mc, alpha_prime, state_weight[s0:s1], cfg.terms)
            for k in range(K):
                g = dq[k].reshape(r, 1)
                for i in range(n_layers - 1, -1, -1):
                    if dts[i] == full:
                        grad_w_k[i][k].addmm_(ins[k][i].t(), g)  # [in, out]: weight^T
                    else:
                        grad_w_k[i][k].add_(torch.mm(ins[k][i].t(), g))
                    grad_b_k[i][k].add_(g.sum(0, dtype=full))
                    if i == 0:
                        break
                    dx = buf(("dx", i, dts[i]), Ws[i].shape[2], dts[i])[:r]
                    if g.shape[-1] == 1:  # a 1-wide layer: an outer product, not a matmul
                        torch.mul(g, w_c[i][k], out=dx)
                    else:
                        torch.mm(g, w_c[i][k], out=dx)
                    if dts[i - 1] != dts[i]:
                        dx = buf(("dx", i, dts[i - 1]), Ws[i].shape[2], dts[i - 1])[:r].copy_(dx)
                    g = thr_bwd(dx, acts[k][i - 1], 0, grad_input=dx)  # ReLU mask, in place
        ctx.grads = (
            *[gw.transpose(1, 2).contiguous() for gw in grad_w],
            *grad_b,
        )
        ctx.mark_non_differentiable(q)
        return q.view(K, B, m), x.new_zeros(())

    @staticmethod
    def backward(ctx, _grad_q, grad_carrier):
        # not in place: a retained graph may run this backward again
        return (None,) * 7 + tuple(g * grad_carrier for g in ctx.grads)
