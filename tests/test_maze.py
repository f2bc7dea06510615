"""The embedded PointMaze dataset: grid shortest paths, the planner, a tiny build, its
evaluation task and reference scores."""

import gymnasium as gym
import numpy as np
import pytest

from cql_modules.data import MAZE_DATASET_ID, keys, load_dataset, locate_dataset, make_env
from cql_modules.data.maze import (
    EPISODE_STEPS,
    EVAL_GOAL_CELL,
    EVAL_RESET_CELL,
    MazeGrid,
    build_maze_dataset,
    PlannerDriver,
    make_maze_envs,
    planner_policy,
    run_episodes,
)

TINY = "test/pointmaze/tiny-v0"


@pytest.fixture(scope="module")
def grid():
    return MazeGrid.of_env()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        numbers = build_maze_dataset(TINY, episodes=4, reference_episodes=2, num_envs=2, progress=False)
        yield numbers


def test_grid_shortest_paths(grid):
    # PointMaze Medium: 8x8, the evaluation cells are 3 moves apart; the longest path is 11
    a, b = grid.index[EVAL_RESET_CELL], grid.index[EVAL_GOAL_CELL]
    assert grid.distance[a, b] == 3 and grid.distance.max() == 11
    assert grid.distance[grid.index[3, 3], b] == 7
    assert grid.distance[grid.index[1, 1], grid.index[6, 5]] == 11
    n = len(grid.cells)
    for a in range(n):
        for b in range(n):
            step = grid.next_cell[a, b]
            if a == b:
                assert step == a
            else:  # one move along a shortest path
                assert step in grid.neighbours(a) and grid.distance[step, b] == grid.distance[a, b] - 1


def test_cell_coordinates_match_the_env(grid):
    env = gym.make("PointMaze_Medium-v3")
    maze = env.unwrapped.maze
    for cell in grid.cells:
        xy = maze.cell_rowcol_to_xy(np.array(cell))
        np.testing.assert_allclose(grid.cell_xy(cell), xy)
        assert grid.cells[grid.cell_of(xy + 0.3)] == cell  # anywhere inside the cell


def test_planner_solves_the_evaluation_task(grid):
    eps = run_episodes(make_maze_envs(2), 2, planner_policy(grid), seed=0)
    for ep in eps:
        # the episode ends at the goal: reward 0 on the way, 1 on the last (terminal) step
        n = len(ep["rewards"])
        assert ep["success"] and 20 < n < EPISODE_STEPS // 3
        np.testing.assert_array_equal(ep["rewards"], np.eye(n)[-1])
        np.testing.assert_array_equal(ep["terminations"], np.eye(n, dtype=bool)[-1])
        assert not ep["truncations"].any()
        start = ep["observations"]["achieved_goal"][0]
        assert grid.cells[grid.cell_of(start)] == EVAL_RESET_CELL
        assert grid.cells[grid.cell_of(ep["observations"]["desired_goal"][0])] == EVAL_GOAL_CELL


def test_driver_changes_waypoint_when_reached(grid):
    """A waypoint within 0.45 is replaced by the next random cell; the others are kept."""
    driver = PlannerDriver(grid, noise_std=0.0, seed=0)
    driver.reset(2)
    rng = np.random.default_rng(0)
    first = grid.centers[rng.integers(len(grid.cells), size=2)]
    np.testing.assert_array_equal(driver.targets, first)
    # ball 0 is 0.3 from its waypoint (reached); ball 1 is 0.5 from its, inside the same cell
    obs = {"observation": np.array([[*first[0] + [0.3, 0.0], 0.0, 0.0], [*first[1] + [0.4, 0.3], -3.95, -2.95]])}
    action = driver(obs)
    expected = np.array([grid.centers[rng.integers(len(grid.cells), size=1)][0], first[1]])
    np.testing.assert_array_equal(driver.targets, expected)
    # no noise, same cell as the waypoint: PD action 10 * (waypoint - position) - 1 * velocity
    np.testing.assert_allclose(action[1], [10 * -0.4 + 3.95, 10 * -0.3 + 2.95], atol=1e-9)


def test_planner_driver_never_commands_an_excluded_cell(grid):
    # the dataset's behaviour never drives to the evaluation goal (it reaches it only by passing
    # through with noise); the other cells are all drawn, uniformly
    driver = PlannerDriver(grid, noise_std=0.5, seed=1, exclude=(EVAL_GOAL_CELL,))
    driver.reset(20_000)
    drawn = {tuple(grid.cells[k]) for k in grid.cell_of(driver.targets)}
    assert drawn == set(map(tuple, grid.cells)) - {EVAL_GOAL_CELL}
    counts = np.bincount(grid.cell_of(driver.targets), minlength=len(grid.cells))
    assert counts[grid.index[EVAL_GOAL_CELL]] == 0
    np.testing.assert_allclose(counts[counts > 0] / 20_000, 1 / (len(grid.cells) - 1), atol=0.01)


def test_tiny_build_loads_with_its_evaluation_task(tiny):
    rb, info = load_dataset(TINY, normalize_states=False)
    data = rb[: len(rb)]
    assert tiny["transitions"] == len(rb)
    terminated, done = data[keys.TERMINATED].squeeze(-1).numpy(), data[keys.DONE].squeeze(-1).numpy()
    ends = np.flatnonzero(done) + 1
    assert len(ends) == 4 and ends[-1] == len(rb)
    lengths = np.diff(ends, prepend=0)
    # an episode ends at the goal (terminated) or after EPISODE_STEPS steps (truncated)
    assert all(n == EPISODE_STEPS or terminated[end - 1] for n, end in zip(lengths, ends))
    # flattened goal observation: achieved_goal (= position), desired_goal, position, velocity
    assert info.observation_keys == ("achieved_goal", "desired_goal", "observation")
    obs, nxt = data[keys.OBSERVATION].numpy(), data[keys.NEXT_OBSERVATION].numpy()
    np.testing.assert_allclose(obs[:, 0:2], obs[:, 4:6])
    # sparse reward: 1 within 0.45 of the goal, read from the next observation
    raw = (np.linalg.norm(nxt[:, 0:2] - nxt[:, 2:4], axis=-1) <= 0.45).astype(np.float32)
    np.testing.assert_array_equal(data[keys.REWARD].squeeze(-1).numpy(), raw)
    np.testing.assert_array_equal(raw, terminated)
    assert raw.sum() == pytest.approx(tiny["episodes_at_goal"] * 4)
    assert info.sparse_reward
    # D4RL maze2d: one goal (cell (6, 5)) per episode, episodes start in random cells
    grid = MazeGrid.of_env()
    starts = obs[ends - lengths]
    assert {grid.cells[grid.cell_of(g)] for g in obs[:, 2:4]} == {EVAL_GOAL_CELL}
    assert len({grid.cells[grid.cell_of(p)] for p in starts[:, 0:2]}) > 1
    for end, n in zip(ends, lengths):
        episode_goals = obs[end - n : end, 2:4]
        np.testing.assert_array_equal(episode_goals, np.broadcast_to(episode_goals[0], episode_goals.shape))
    # references measured at build time on the evaluation task
    assert (info.ref_min_score, info.ref_max_score) == (tiny["random_return"], tiny["planner_return"])
    assert tiny["planner_success"] == 1.0 and tiny["planner_return"] > tiny["random_return"]
    # the evaluation env is the dataset's: fixed start and goal cells, the episode ends at the goal
    env = make_env(info, normalizer=None, seed=0)
    first = env.reset()[keys.OBSERVATION].numpy()
    assert grid.cells[grid.cell_of(first[0:2])] == EVAL_RESET_CELL
    assert grid.cells[grid.cell_of(first[2:4])] == EVAL_GOAL_CELL
    unwrapped = env.base_env._env.unwrapped
    assert not unwrapped.continuing_task and not unwrapped.reset_target


def test_embedded_id_is_built_on_demand():
    assert locate_dataset(MAZE_DATASET_ID) == ("minari", MAZE_DATASET_ID)


@pytest.mark.parametrize("preset", ["pointmaze", "pointmaze-cal_ql"])
def test_finetune_preset_end_to_end(tiny, tmp_path, preset):
    """The README's maze presets through the recipe's command line, on the tiny build: the
    score is the success rate normalized between the build's two references, and the final
    line reports offline and final scores, the success rate and the regret."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    small = ["offline_updates=100", "online_updates=300", "batch_size=32", "network.hidden_dim=16",
             "loss.num_actions=4", "eval.every=100", "eval.n_episodes=2", "logger.every=100", "checkpoint.every=0",
             "logger.backends=[]", "logger.progress=false"]
    out = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "recipes" / "finetune_cql.py"),
                          f"finetune={preset}", f"dataset.name={TINY}", *small, f"hydra.run.dir={run}"],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    for field in ("offline normalized_score", "final normalized_score", "final success_rate", "regret"):
        assert field in last
    summary = json.loads((run / "summary.json").read_text())
    c = summary["config"]
    assert (c["dataset"]["reward_scale"], c["dataset"]["reward_bias"], c["loss"]["cql_alpha"]) == (10.0, -5.0, 1.0)
    assert c["loss"]["calibrated"] == (preset == "pointmaze-cal_ql")
    assert c["online"]["replay"] == ("mix" if preset == "pointmaze-cal_ql" else "add")
    lo, hi = tiny["random_return"], tiny["planner_return"]
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in evals if "eval/success_rate" in m]
    assert [m["step"] for m in evals] == [100, 200, 300, 400]
    for m in evals:  # return 1 on success, 0 otherwise
        assert m["eval/return_mean"] == pytest.approx(m["eval/success_rate"])
        assert m["d4rl_normalized_score"] == pytest.approx(100 * (m["eval/success_rate"] - lo) / (hi - lo))
    assert summary["status"] == "completed" and summary["online_env_steps"] == 300
