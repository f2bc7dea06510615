"""Dependencies by need: the core install (loss, networks, data layer) imports and trains
without the recipes' extras, and a logger backend whose package is missing is one line
naming the extra to install."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("hydra", "omegaconf", "wandb", "tensorboard", "tensorboardX", "matplotlib", "tqdm")

CORE_USE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: import fails, find_spec says absent
import torch
from cql_modules import CQLLoss, bounded_action_spec, load_dataset, make_actor, make_critic, normalized_score
from cql_modules.train.update import UpdateStep, make_optimizer
from tests.helpers import make_batch

torch.manual_seed(0)
spec = bounded_action_spec(2)
loss = CQLLoss(make_actor(3, spec, hidden_dim=8, n_hidden_layers=1), make_critic(3, 2, hidden_dim=8, n_hidden_layers=1),
               num_actions=2)
metrics = UpdateStep(loss, make_optimizer(loss, actor_lr=1e-3, critic_lr=1e-3))(make_batch(8))
assert torch.isfinite(metrics["loss_qvalue"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
print("loaded:", loaded)
"""


def test_core_imports_and_trains_without_the_extras():
    out = subprocess.run([sys.executable, "-c", CORE_USE.format(blocked=EXTRAS_ONLY)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded: []" in out.stdout


@pytest.mark.parametrize("backend, extra", [("tensorboard", "recipes"), ("wandb", "wandb")])
def test_missing_logger_package_names_the_extra(tmp_path, monkeypatch, backend, extra):
    from cql_modules.train import run_logger

    real = run_logger.importlib.util.find_spec
    monkeypatch.setattr(run_logger.importlib.util, "find_spec", lambda name, *a: None if name == backend else real(name, *a))
    with pytest.raises(ModuleNotFoundError) as err:
        run_logger.RunLogger(tmp_path, [backend])
    message = str(err.value)
    assert "\n" not in message and f"pip install 'cql-modules[{extra}]'" in message and backend in message
