"""Collect a Minari dataset by running behaviour policies in a gymnasium environment.

Each ``--mix POLICY:EPISODES[:noise=STD][:eps=P]`` adds episodes of one behaviour policy
(``random``, ``scripted`` or the path of a saved TorchRL policy), with Gaussian action noise
(std as a fraction of the action half-range) and epsilon-random actions. ``ref_min_score``
(random policy) and ``ref_max_score`` (``--reference-policy``) are measured and stored in the
dataset metadata. The dataset lands in minari's root ($MINARI_DATASETS_PATH or ~/.minari/datasets).

    python recipes/collect_dataset.py --default            # cql-modules/pendulum/mixed-v0
    python recipes/collect_dataset.py --env Pendulum-v1 --dataset-id me/pendulum/noisy-v0 \\
        --mix random:50 --mix scripted:100:noise=0.5:eps=0.2
    python recipes/collect_dataset.py --env Hopper-v5 --dataset-id me/hopper/mixed-v0 \\
        --mix policy.pt:100:noise=0.3 --mix random:20 --reference-policy policy.pt
"""

from __future__ import annotations

import argparse
import json

from cql_modules.data import DEFAULT_DATASET_ID, BehaviourSpec, build_default_dataset, build_minari_dataset


def parse_mix(text: str) -> BehaviourSpec:
    """``POLICY:EPISODES[:noise=STD][:eps=P]`` -> :class:`BehaviourSpec`."""
    policy, episodes, *options = text.split(":")
    names = {"noise": "noise_std", "eps": "epsilon"}
    extra = {names[k]: float(v) for k, v in (option.split("=") for option in options)}
    return BehaviourSpec(policy, int(episodes), **extra)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--default", action="store_true", help=f"build {DEFAULT_DATASET_ID}")
    parser.add_argument("--episodes", type=int, default=400, help="episodes of the default dataset")
    parser.add_argument("--env", help="gymnasium environment id")
    parser.add_argument("--dataset-id", help="Minari id to write, e.g. me/pendulum/mixed-v0")
    parser.add_argument("--mix", action="append", type=parse_mix, default=[], help="POLICY:EPISODES[:noise=X][:eps=Y]")
    parser.add_argument("--reference-policy", default="scripted", help="policy measured for ref_max_score")
    parser.add_argument("--reference-episodes", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    if args.default:
        stats = build_default_dataset(
            args.dataset_id or DEFAULT_DATASET_ID, episodes=args.episodes,
            reference_episodes=args.reference_episodes, seed=args.seed, overwrite=args.overwrite,
        )  # fmt: skip
    else:
        if not (args.env and args.dataset_id and args.mix):
            parser.error("--env, --dataset-id and at least one --mix are required (or --default)")
        stats = build_minari_dataset(
            args.dataset_id, args.env, args.mix, reference_policy=args.reference_policy,
            reference_episodes=args.reference_episodes, num_envs=args.num_envs, seed=args.seed,
            overwrite=args.overwrite,
        )  # fmt: skip
    print(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    main()
