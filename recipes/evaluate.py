"""Re-evaluate a saved run with more episodes.

    python recipes/evaluate.py <run dir> eval.n_episodes=100
    python recipes/evaluate.py <run dir or checkpoint.pt> eval.n_episodes=100 eval.seed_offset=20000

Loads the run's checkpoint (its own config, the actor, the dataset's normalization), plays
``eval.n_episodes`` full episodes with the deterministic policy on the evaluation env, and
appends the result to the ``reevaluations`` list of the run's summary.json (the original
fields are never changed). Episode i starts from ``reset(seed=seed + eval.seed_offset + i)``,
as in training: with the run's own ``eval.n_episodes`` the first episodes repeat its last
evaluation. Allowed overrides: eval.n_episodes, eval.seed_offset, eval.max_episode_steps,
num_threads (it runs on the CPU). Errors are one line (exit code 2).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cql_modules.data import DatasetError
from cql_modules.data.scores import reference_scores
from cql_modules.export import load_actor
from cql_modules.train.build import load_data, make_eval_env, setup_run
from cql_modules.train.config import ConfigError, OfflineConfig, validate_config
from cql_modules.train.evaluation import env_success_keys, evaluate
from cql_modules.train.run_logger import REEVALUATIONS, SUMMARY_FILE, write_json
from cql_modules.train.state import CheckpointError

ALLOWED = ("eval.n_episodes", "eval.seed_offset", "eval.max_episode_steps", "num_threads")


def reevaluate(target: str, overrides: list[str]) -> dict:
    """Evaluate the run at ``target`` (run dir or checkpoint) and append to its summary."""
    for item in overrides:
        if item.split("=", 1)[0] not in ALLOWED or "=" not in item:
            raise ConfigError(f"{item}: not an allowed override (use {', '.join(k + '=...' for k in ALLOWED)})")
    actor, _, meta = load_actor(target)  # FileNotFoundError / CheckpointError name the path
    checkpoint = Path(meta["checkpoint"])
    run_dir = Path(target) if Path(target).is_dir() and (Path(target) / SUMMARY_FILE).is_file() \
        else checkpoint.parent.parent  # <run dir>/checkpoints/<file>
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise FileNotFoundError(f"no {SUMMARY_FILE} in {run_dir} to append the result to; pass the run directory")
    saved = meta["config"] or {}  # the config the checkpoint was trained with
    schema = OfflineConfig
    if "online" in saved:  # a fine-tuning run: its own schema
        from cql_modules.online import FinetuneConfig as schema
    try:
        cfg = OmegaConf.merge(OmegaConf.create(saved), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from err
    c = validate_config(cfg, schema)
    c.eval.every = c.eval.every or c.logger.every  # a run trained without evaluation is evaluated all the same
    c.device = "cpu"  # the actor is loaded on the CPU, whatever the run trained on
    setup_run(c)
    _, info = load_data(c)
    env = make_eval_env(c, info)
    refs = reference_scores(info, required=False)
    seed = c.seed + c.eval.seed_offset
    result = evaluate(env, actor, c.eval.n_episodes, seed=seed, max_steps=c.eval.max_episode_steps,
                      ref_scores=refs, success_keys=env_success_keys(info))
    metrics = result.metrics()
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(checkpoint), "step": meta["step"],
        "n_episodes": c.eval.n_episodes, "seed": seed, "max_episode_steps": c.eval.max_episode_steps,
        "normalized_score_mean": result.normalized_mean,
        "normalized_score_std": metrics.get("eval/normalized_score_std"),
        "return_mean": result.return_mean, "return_std": result.return_std,
        "success_rate": result.success_rate, "returns": result.returns,
    }
    summary = json.loads(summary_path.read_text())  # read last: the run may have rewritten it meanwhile
    summary.setdefault(REEVALUATIONS, []).append(record)
    write_json(summary, summary_path)
    return record


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        record = reevaluate(argv[0], argv[1:])
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    score = record["normalized_score_mean"]
    what = "normalized_score" if score is not None else "return"
    value = score if score is not None else record["return_mean"]
    print(f"{record['n_episodes']} episodes at update {record['step']}: {what} {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
