"""Mutation check of the loss tests: break one formula at a time, expect a failing test.

    python tools/mutation_check.py      # prints CAUGHT/MISSED per mutation (~5 min on 2 cores)

Each entry: (file, original text, broken text). The source is restored after each run.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_loss_formula.py", "tests/test_loss_defects.py", "tests/test_networks.py", "tests/test_fused_critic.py"]
muts = [
 ("cql_modules/objectives/cql.py", "q_next_b - logp_next", "q_next_b + logp_next"),
 ("cql_modules/objectives/cql.py", "self.temperature * torch.logsumexp(x / self.temperature", "torch.logsumexp(x"),
 ("cql_modules/objectives/cql.py", "q_targ_min = q_targ.amin(0)", "q_targ_min = q_targ.amax(0)"),
 ("cql_modules/objectives/cql.py", "q_pi[:, 0].amin(0)", "q_pi[:, 0].amax(0)"),
 ("cql_modules/objectives/cql.py", "penalty_scale = alpha_prime.detach() * self.cql_alpha", "penalty_scale = torch.tensor(self.cql_alpha)"),
 ("cql_modules/objectives/cql.py", "shifted.detach().sum(0)", "shifted.sum(0)"),
 ("cql_modules/objectives/cql.py", "q_rand - self.uniform_log_density", "q_rand + self.uniform_log_density"),
 ("cql_modules/objectives/cql.py", "(~terminated.bool())", "(terminated.bool() | True)"),
 ("cql_modules/objectives/cql.py", "v_next = v_next - alpha_d * logp_v", "v_next = v_next + alpha_d * logp_v"),
 ("cql_modules/objectives/cql.py", "torch.maximum(q_cur, mc), torch.maximum(q_next, mc)", "torch.maximum(q_cur, mc), q_next"),
 ("cql_modules/objectives/cql.py", "self.n_updates < self.bc_steps", "self.n_updates <= self.bc_steps"),
 ("cql_modules/objectives/cql.py", "(logp_pi + self.target_entropy)", "(logp_pi - self.target_entropy)"),
 ("cql_modules/objectives/cql.py", "gap = (ood - q_data).clamp(self.clip_diff_min, self.clip_diff_max)", "gap = (ood - q_data)"),
 ("cql_modules/objectives/cql.py", "torch.cat([q_rand, q_data[:, None], q_next_b, q_cur_b], dim=1)  # [K", "torch.cat([q_rand, q_next_b, q_cur_b], dim=1)  # [K"),
 ("cql_modules/objectives/cql.py", "y = reward + self.gamma *", "y = reward + 0.99 *"),
 ("cql_modules/objectives/cql.py", "v_next, idx = q_targ_min.max(0)", "v_next, idx = q_targ_min.min(0)"),
 ("cql_modules/objectives/cql.py", "self.log_alpha_prime.exp().clamp(0.0, 1e6)", "self.log_alpha_prime.exp().clamp(0.0, 2.0)"),
 ("cql_modules/objectives/cql.py", "return self.log_alpha.exp() * self.alpha_multiplier", "return self.log_alpha.exp()"),
 ("cql_modules/objectives/cql.py", "-0.5 * alpha_prime", "-1.0 * alpha_prime"),
 ("cql_modules/objectives/cql.py", "a_next, logp_next = actions[n_target:, 1]", "a_next, logp_next = actions[n_target:, 0]"),
 ("cql_modules/objectives/cql.py", "self._q_values(self.qvalue_network_params.detach(), obs_now_q", "self._q_values(self.qvalue_network_params, obs_now_q"),
 ("cql_modules/objectives/cql.py", "(logp_pi + self.target_entropy).detach()", "(logp_pi + self.target_entropy)"),
 ("cql_modules/modules.py", "gain=math.sqrt(2)", "gain=1.0"),
 ("cql_modules/modules.py", ".clamp(-20.0, 2.0)", ".clamp(-20.0, 0.5)"),
 ("cql_modules/objectives/cql.py", "x.expand(*lead, x.shape[-1])", "x.expand(*lead, x.shape[-1]).flip(-2)"),
 # the fused critic gradient (cql_modules/objectives/fused.py)
 ("cql_modules/objectives/fused.py", "return 2.0 * err", "return err"),
 ("cql_modules/objectives/fused.py", "soft = torch.exp(z - lse[..., None])", "soft = torch.exp(z)"),
 ("cql_modules/objectives/fused.py", "x = props - log_density[None, :, 1:]", "x = props + log_density[None, :, 1:]"),
 ("cql_modules/objectives/fused.py", "(penalty_scale * weight) * inside.to(q.dtype)", "(penalty_scale * weight)"),
 ("cql_modules/objectives/fused.py", "d_data = d[..., 0] - coef", "d_data = -coef"),
 ("cql_modules/objectives/fused.py", "(pol > mc).to(q.dtype) + 0.5 * (pol == mc).to(q.dtype)", "(pol >= mc).to(q.dtype)"),
 ("cql_modules/objectives/fused.py", "thr_bwd(buf, acts[i - 1][:, :r, :-1], 0, grad_input=buf)", "buf"),
 ("cql_modules/objectives/fused.py", "gap = tau * lse - q_data", "gap = lse - q_data"),
]
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
sys.exit(1 if missed else 0)
