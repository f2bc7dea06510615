"""Collect a Minari dataset by running behaviour policies in a gymnasium environment.

Each ``--mix POLICY:EPISODES[:noise=STD][:eps=P]`` adds episodes of one behaviour policy
(``random``, ``scripted`` or the path of a saved TorchRL policy), with Gaussian action noise
(std as a fraction of the action half-range) and epsilon-random actions. ``ref_min_score``
(random policy) and ``ref_max_score`` (``--reference-policy``) are measured and stored in the
dataset metadata. The dataset lands in minari's root ($MINARI_DATASETS_PATH or ~/.minari/datasets).

A POLICY path is a policy file (``cql_modules.data.save_policy_file``: weights plus a small
architecture description, read without running any code). A pickled TorchRL module
(``torch.save(module)``) runs arbitrary code when unpickled: it is read only with
--trust-policy-file, for files whose origin you trust. Bad input stops the tool with one line
and exit code 2.

    python recipes/collect_dataset.py --default            # cql-modules/pendulum/mixed-v0
    python recipes/collect_dataset.py --env Pendulum-v1 --dataset-id me/pendulum/noisy-v0 \\
        --mix random:50 --mix scripted:100:noise=0.5:eps=0.2
    python recipes/collect_dataset.py --env Hopper-v5 --dataset-id me/hopper/mixed-v0 \\
        --mix policy.pt:100:noise=0.3 --mix random:20 --reference-policy policy.pt
"""

from __future__ import annotations

import argparse
import json

import sys

from cql_modules.data import (
    DEFAULT_DATASET_ID,
    BehaviourSpec,
    DatasetError,
    build_default_dataset,
    build_minari_dataset,
)

MIX_FORMAT = "POLICY:EPISODES[:noise=STD][:eps=P]"


def parse_mix(text: str) -> BehaviourSpec:
    """``POLICY:EPISODES[:noise=STD][:eps=P]`` -> :class:`BehaviourSpec`."""
    policy, *fields = text.split(":")
    names = {"noise": "noise_std", "eps": "epsilon"}
    try:
        episodes, *options = fields
        extra = {names[k]: float(v) for k, v in (option.split("=") for option in options)}
        return BehaviourSpec(policy, int(episodes), **extra)
    except (ValueError, KeyError) as err:  # DatasetError is a ValueError: its message is kept
        reason = f": {err}" if isinstance(err, DatasetError) else ""
        raise argparse.ArgumentTypeError(f"'{text}' is not {MIX_FORMAT}{reason}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and where to look), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> dict:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--default", action="store_true", help=f"build {DEFAULT_DATASET_ID}")
    parser.add_argument("--episodes", type=positive_int, default=400, help="episodes of the default dataset")
    parser.add_argument("--env", help="gymnasium environment id")
    parser.add_argument("--dataset-id", help="Minari id to write, e.g. me/pendulum/mixed-v0")
    parser.add_argument("--mix", action="append", type=parse_mix, default=[], help=MIX_FORMAT)
    parser.add_argument("--reference-policy", default="scripted", help="policy measured for ref_max_score")
    parser.add_argument("--reference-episodes", type=positive_int, default=50)
    parser.add_argument("--num-envs", type=positive_int, default=16)
    parser.add_argument("--trust-policy-file", action="store_true",
                        help="allow POLICY files that are pickled modules: unpickling runs the code the file "
                             "names, so only for files whose origin you trust (policy files need no trust)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    try:
        stats = build(parser, args)
    except DatasetError as err:  # bad input found while building: one line, no traceback
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(stats, indent=2))
    return stats


def build(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    if args.default:
        return build_default_dataset(
            args.dataset_id or DEFAULT_DATASET_ID, episodes=args.episodes,
            reference_episodes=args.reference_episodes, seed=args.seed, overwrite=args.overwrite,
        )  # fmt: skip
    if not (args.env and args.dataset_id and args.mix):
        parser.error("--env, --dataset-id and at least one --mix are required (or --default)")
    return build_minari_dataset(
        args.dataset_id, args.env, args.mix, reference_policy=args.reference_policy,
        reference_episodes=args.reference_episodes, num_envs=args.num_envs, seed=args.seed,
        overwrite=args.overwrite, trust_policy_file=args.trust_policy_file,
    )  # fmt: skip


if __name__ == "__main__":
    main()
