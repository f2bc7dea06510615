"""Mutation check of the loss tests: break one formula at a time, expect a failing test.

    python tools/mutation_check.py      # prints CAUGHT/MISSED per mutation (~30 min on 2 shared cores)
    python tools/mutation_check.py ensemble.py fused.py   # only the mutations of these files

Each entry: (file, original text, broken text). The source is restored after each run.
It edits the files it tests: run it on a copy of the repository when others share the
working tree (``cp -r . /tmp/mut && cd /tmp/mut && python tools/mutation_check.py``).
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_loss_formula.py", "tests/test_loss_defects.py", "tests/test_networks.py",
         "tests/test_fused_critic.py", "tests/test_contract.py"]
TERMS, LOSS, FUSED = "cql_modules/objectives/terms.py", "cql_modules/objectives/cql.py", "cql_modules/objectives/fused.py"
ENSEMBLE = "cql_modules/objectives/ensemble.py"
muts = [
 # the terms (docs/cql.md, sections 2-5)
 (TERMS, "-(log_alpha * (log_prob + target_entropy).detach())", "-(log_alpha * (log_prob - target_entropy).detach())"),
 (TERMS, "-(log_alpha * (log_prob + target_entropy).detach())", "-(log_alpha * (log_prob + target_entropy))"),
 (TERMS, "return alpha.detach() * log_prob - q_pi.amin(0)", "return alpha.detach() * log_prob - q_pi.amax(0)"),
 (TERMS, "return alpha.detach() * log_prob - log_prob_data", "return alpha.detach() * log_prob + log_prob_data"),
 (TERMS, "per_action = q_next.amin(0)", "per_action = q_next.amax(0)"),
 (TERMS, "v_next, idx = per_action.max(-1)", "v_next, idx = per_action.min(-1)"),
 (TERMS, "log_prob_v = log_prob_next.gather(-1, idx[:, None]).squeeze(-1)", "log_prob_v = log_prob_next[:, 0]"),
 (TERMS, "v_next = v_next - alpha * log_prob_v", "v_next = v_next + alpha * log_prob_v"),
 (TERMS, "(~terminated.bool())", "(terminated.bool() | True)"),
 (TERMS, "return torch.maximum(q, mc_return)", "return torch.minimum(q, mc_return)"),
 (TERMS, "x = q_proposals - log_density", "x = q_proposals + log_density"),
 (TERMS, "x = torch.cat([q_data[..., None], q_proposals], dim=-1)", "x = q_proposals"),
 (TERMS, "ood = temperature * torch.logsumexp(x / temperature, dim=-1)", "ood = torch.logsumexp(x, dim=-1)"),
 (TERMS, "return (ood - q_data).clamp(clip_diff_min, clip_diff_max)", "return ood - q_data"),
 (TERMS, "return alpha_prime.detach() * cql_alpha * (gap - target_action_gap)", "return cql_alpha * (gap - target_action_gap)"),
 (TERMS, "return alpha_prime.detach() * cql_alpha * (gap - target_action_gap)", "return alpha_prime * cql_alpha * (gap - target_action_gap)"),
 (TERMS, "-0.5 * alpha_prime * cql_alpha", "-1.0 * alpha_prime * cql_alpha"),
 (TERMS, "(gap - target_action_gap).detach().sum(0)", "(gap - target_action_gap).sum(0)"),
 (TERMS, "distance_loss(q_data, y.expand_as(q_data), loss_function)", "distance_loss(q_data, y.expand_as(q_data), 'l1')"),
 (TERMS, "q_policy = calibrate(q_policy, mc_return[:, None])", "q_policy = calibrate(q_policy, mc_return[:, None] - 1e3)"),
 # sampling, critic inputs, reduction (cql.py, ensemble.py)
 (LOSS, "return self.log_alpha.exp() * self.alpha_multiplier", "return self.log_alpha.exp()"),
 (TERMS, "return log_alpha_prime.exp().clamp(0.0, 1e6)", "return log_alpha_prime.exp().clamp(0.0, 2.0)"),
 (LOSS, "self.n_updates < self.bc_steps", "self.n_updates <= self.bc_steps"),
 (LOSS, "self._q_values(self.qvalue_network_params.detach(), self._critic_inputs(td, smp.a_pi",
        "self._q_values(self.qvalue_network_params, self._critic_inputs(td, smp.a_pi"),
 (LOSS, "reward, terminated, self.gamma,", "reward, terminated, 0.99,"),
 (LOSS, "a_next, a_cur = actions[:, 1, n_target:].detach()", "a_next, a_cur = actions[:, 0, n_target:].detach()"),
 (LOSS, "a_target=actions[:, 1, :n_target].detach()", "a_target=actions[:, 0, :n_target].detach()"),
 (LOSS, "[self.uniform_log_density.expand_as(lp_next), lp_next, lp_cur]", "[self.uniform_log_density.expand_as(lp_next), lp_cur, lp_next]"),
 (ENSEMBLE, "x[:, None].expand(*actions.shape[:2], x.shape[-1])", "x[:, None].expand(*actions.shape[:2], x.shape[-1]).flip(0)"),
 (LOSS, "-torch.log(high - low).sum()", "torch.log(high - low).sum()"),
 (LOSS, "weights = weights.reshape(B) if weights is not None else None", "weights = None"),
 (LOSS, "return weights / weights.sum() if self.reduction", "return weights / B if self.reduction"),
 (LOSS, "(q[..., 0].detach() - y).abs().amax(0)", "(q[..., 0].detach() - y).abs().amin(0)"),
 # the fused critic pass (fused.py)
 (FUSED, "loss = ((t.td + t.penalty).sum(0) * state_weight).sum()", "loss = (t.td + t.penalty).sum() / state_weight.numel()"),
 (FUSED, "return torch.cat([d_data[..., None], d_proposals], dim=-1)", "return torch.cat([d_data[..., None], d_proposals.flip(-1)], dim=-1)"),
 (FUSED, "g = thr_bwd(dx, acts[k][i - 1], 0, grad_input=dx)", "g = dx"),
 (FUSED, "b_c = [b.to(dt).unbind(0) for b, dt in zip(bs, dts)]", "b_c = [(0 * b.to(dt)).unbind(0) for b, dt in zip(bs, dts)]"),
 (FUSED, "grad_b_k[i][k].add_(g.sum(0, dtype=full))", "grad_b_k[i][k].add_(g[:1].sum(0, dtype=full))"),
 (FUSED, "torch.mul(g, w_c[i][k], out=dx)", "torch.mul(g, w_c[i][0], out=dx)"),
 (FUSED, "torch.addmm(b_c[i][k], ins[k][i], w_t[i][k], out=h).relu_()", "torch.addmm(b_c[i][k], ins[k][i], w_t[i][k], out=h)"),
 # networks (docs/cql.md, section 8)
 ("cql_modules/modules.py", "gain=math.sqrt(2)", "gain=1.0"),
 ("cql_modules/modules.py", ".clamp(-20.0, 2.0)", ".clamp(-20.0, 0.5)"),
]
only = sys.argv[1:]
muts = [m for m in muts if not only or any(o in m[0] for o in only)]
missed = 0
for f, a, b in muts:
    f = ROOT / f
    src = f.read_text()
    assert src.count(a) == 1, (a, src.count(a))
    f.write_text(src.replace(a, b))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", *TESTS, "-p", "no:warnings"],
                           capture_output=True, text=True, cwd=ROOT)
        missed += r.returncode == 0
        print(("CAUGHT " if r.returncode else "MISSED ") + f"{f.name}: {a[:70]}", flush=True)
    finally:
        f.write_text(src)
print(f"{len(muts) - missed}/{len(muts)} caught")
sys.exit(1 if missed else 0)
