"""Exported policies: a run's deterministic policy as one TorchScript or ONNX file.

``export_policy(run_dir_or_checkpoint, path, format=...)`` writes the policy a run
evaluates, with the dataset's observation normalization and the action scaling built in:
the input is a raw observation ``[obs_dim]`` or ``[B, obs_dim]`` (float32, as the
environment returns it), the output an environment action in ``[low, high]``::

    a = mid + half * clamp(tanh(mu(s')), -(1 - eps), 1 - eps),   s' = (s - loc) / scale

with ``mu`` the first half of the actor MLP's output (the tanh-Gaussian mean),
``mid, half = (high + low) / 2, (high - low) / 2`` and ``eps`` float32's resolution: the
same arithmetic as TorchRL's ``TanhNormal`` in ``ExplorationType.DETERMINISTIC`` (its
``SafeTanhTransform`` and affine transform) after ``ObservationNorm(standard_normal=True)``.

``load_policy(path)`` runs the file without this package's training code: TorchScript
through ``torch.jit.load``, ONNX through ``onnxruntime`` on CPU. Metadata (dataset,
update, spaces) travels inside the file (TorchScript extra file / ONNX metadata props).
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FORMATS", "DeterministicPolicy", "LoadedPolicy", "export_policy", "load_actor", "load_policy",
           "policy_from_checkpoint"]

FORMATS = ("torchscript", "onnx")
METADATA_FILE = "policy.json"  # TorchScript extra file / ONNX metadata key


class DeterministicPolicy(nn.Module):
    """Raw observation -> environment action (see the module docstring for the formula).

    Args:
        mlp: the actor's Linear/ReLU stack (``2 * action_dim`` outputs: mean, raw log-std).
        obs_loc, obs_scale: the dataset's state normalization (zeros / ones for none).
        action_low, action_high: the environment's action bounds.
    """

    def __init__(self, mlp: nn.Sequential, obs_loc: torch.Tensor, obs_scale: torch.Tensor,
                 action_low: torch.Tensor, action_high: torch.Tensor) -> None:
        super().__init__()
        self.net = nn.Sequential(*mlp)  # a plain Sequential: scriptable, no varargs forward
        self.action_dim = int(action_low.numel())
        self.tanh_limit = 1.0 - float(torch.finfo(torch.float32).resolution)
        self.register_buffer("obs_loc", obs_loc.detach().float().clone())
        self.register_buffer("obs_scale", obs_scale.detach().float().clone())
        self.register_buffer("action_mid", ((action_high + action_low) / 2).float())
        self.register_buffer("action_half", ((action_high - action_low) / 2).float())

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        x = (observation - self.obs_loc) / self.obs_scale
        mean = self.net(x)[..., : self.action_dim]
        return self.action_mid + self.action_half * torch.tanh(mean).clamp(-self.tanh_limit, self.tanh_limit)


def _read_checkpoint(run_dir_or_checkpoint: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    from cql_modules.train.state import find_checkpoint, load_checkpoint

    path = find_checkpoint(run_dir_or_checkpoint)
    if path is None:
        raise FileNotFoundError(f"no checkpoint at {run_dir_or_checkpoint} (expected a .pt file, its directory, "
                                "or a run directory with checkpoints/last.pt)")
    return load_checkpoint(path), path


def load_actor(run_dir_or_checkpoint: str | os.PathLike):
    """The trained actor of a run (a TorchRL ``ProbabilisticActor``, eval mode, CPU), its
    state normalizer (a :class:`~cql_modules.data.StateNormalizer` or None) and the
    metadata of the checkpoint, rebuilt from the checkpoint alone (no dataset needed)."""
    from cql_modules.data import StateNormalizer
    from cql_modules.modules import bounded_action_spec, make_actor

    state, path = _read_checkpoint(run_dir_or_checkpoint)
    loss_state, extra = state["loss"], state.get("extra", {})
    prefix = "actor_network."
    actor_state = {k[len(prefix):]: v for k, v in loss_state.items() if k.startswith(prefix)}
    weights = [v for k, v in actor_state.items() if k.endswith(".weight")]
    if not weights or "action_low" not in loss_state:
        from cql_modules.train.state import CheckpointError  # a ValueError: one line in the recipes

        raise CheckpointError(f"{path} holds no continuous CQL actor (a discrete CQL run?); export_policy exports "
                         "the tanh-Gaussian policies of recipes/offline_cql.py and recipes/finetune_cql.py")
    obs_dim = weights[0].shape[1]
    low, high = loss_state["action_low"], loss_state["action_high"]
    spec = bounded_action_spec(low.numel(), low, high)
    actor = make_actor(obs_dim, spec, hidden_dim=weights[0].shape[0], n_hidden_layers=len(weights) - 1)
    actor.load_state_dict(actor_state)
    actor.eval()
    normalizer_state = extra.get("data", {}).get("normalizer")
    normalizer = StateNormalizer.from_state_dict(normalizer_state) if normalizer_state is not None else None
    meta = {"dataset": extra.get("data", {}).get("name"), "step": int(state.get("step", 0)),
            "checkpoint": str(path), "observation_dim": int(obs_dim),
            "action_low": low.tolist(), "action_high": high.tolist(),
            "normalized_observation": normalizer is not None, "config": extra.get("config")}
    return actor, normalizer, meta


def policy_from_checkpoint(run_dir_or_checkpoint: str | os.PathLike) -> tuple[DeterministicPolicy, dict[str, Any]]:
    """:class:`DeterministicPolicy` of a run's checkpoint, and its metadata."""
    from cql_modules.modules import MLP

    actor, normalizer, meta = load_actor(run_dir_or_checkpoint)
    mlp = next(m for m in actor.modules() if isinstance(m, MLP))
    obs_dim = meta["observation_dim"]
    loc = normalizer.loc if normalizer is not None else torch.zeros(obs_dim)
    scale = normalizer.scale if normalizer is not None else torch.ones(obs_dim)
    policy = DeterministicPolicy(mlp, loc, scale, torch.tensor(meta["action_low"]), torch.tensor(meta["action_high"]))
    return policy.eval(), meta


def export_policy(run_dir_or_checkpoint: str | os.PathLike, path: str | os.PathLike,
                  format: str = "torchscript") -> Path:
    """Write the deterministic policy of a run (its run directory or a checkpoint file) to
    ``path`` as ``"torchscript"`` (``torch.jit.script``) or ``"onnx"`` (opset 17, a dynamic
    batch dimension: input ``observation`` ``[B, obs_dim]``, output ``action``)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    policy, meta = policy_from_checkpoint(run_dir_or_checkpoint)
    meta = {**meta, "format": format}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchscript":
        torch.jit.save(torch.jit.script(policy), str(path), _extra_files={METADATA_FILE: json.dumps(meta)})
        return path
    import onnx

    example = torch.zeros(1, meta["observation_dim"])
    with warnings.catch_warnings():  # the TorchScript-based exporter: no onnxscript dependency
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(policy, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["observation"], output_names=["action"],
                          dynamic_axes={"observation": {0: "batch"}, "action": {0: "batch"}})
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {METADATA_FILE: json.dumps(meta)})
    onnx.save(model, str(path))
    return path


class LoadedPolicy:
    """A callable exported policy: ``policy(observation) -> action`` (numpy float32; a
    single observation ``[obs_dim]`` gives ``[act_dim]``, a batch ``[B, obs_dim]`` gives
    ``[B, act_dim]``). ``metadata`` is what :func:`export_policy` stored."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], metadata: dict[str, Any]) -> None:
        self._run, self.metadata = run, metadata

    def __call__(self, observation) -> np.ndarray:
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        action = self._run(obs[None] if single else obs)
        return action[0] if single else action


def load_policy(path: str | os.PathLike) -> LoadedPolicy:
    """Load a file written by :func:`export_policy` (the format from its content, not its
    name) and return a :class:`LoadedPolicy`. Needs only ``torch`` (TorchScript) or
    ``onnxruntime`` (ONNX)."""
    path = Path(path)
    with open(path, "rb") as f:
        is_zip = f.read(2) == b"PK"  # TorchScript archives are zip files; ONNX is a protobuf
    if is_zip:
        extra = {METADATA_FILE: ""}
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)

        def run(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(obs)).numpy()

        return LoadedPolicy(run, json.loads(extra[METADATA_FILE] or "{}"))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map.get(METADATA_FILE, "{}")
    return LoadedPolicy(lambda obs: session.run(["action"], {"observation": obs})[0], json.loads(meta))
