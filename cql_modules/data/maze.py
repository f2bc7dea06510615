"""The embedded goal-reaching dataset: PointMaze Medium in the style of D4RL's maze2d.

``cql-modules/pointmaze/medium-v2`` (:data:`MAZE_DATASET_ID`) is built on first use
(``load_dataset(MAZE_DATASET_ID)``), with no network, like the Pendulum dataset:

* environment and task: gymnasium-robotics ``PointMaze_Medium-v3`` (8x8 grid, a
  force-controlled ball) with the goal in cell (6, 5) (``"g"`` in the maze map; position
  noise +-0.25), sparse reward 1 within 0.45 of it, and the episode ends there
  (``continuing_task=False``: a goal-reaching task scored like AntMaze, return 1 on
  success, 0 after :data:`EPISODE_STEPS` steps without it); ``info["success"]`` says
  whether it was reached. Observations are the env's ``Dict`` (``achieved_goal``,
  ``desired_goal``, ``observation`` = position and velocity), flattened to 8 numbers;
* behaviour (:class:`PlannerDriver`, as D4RL's maze2d collection): each episode starts in a
  random cell; a scripted planner drives to random waypoint cells of its own, one after the
  other: shortest path on the maze grid (breadth-first search, :class:`MazeGrid`), then a
  PD controller from cell centre to cell centre, plus Gaussian action noise. The goal cell
  is never one of its waypoints (v2; v1 drew it like any cell): it sits at the end of a
  dead-end corridor, so the planner reaches it only when noise carries the ball in while it
  drives to the neighbouring cell (4.4% of the episodes, 35 of 800). The data covers the
  maze but shows the reward rarely and the evaluation task from start to end almost never:
  offline training alone stays near the random policy, and the online phase has to find
  the goal (README, "Offline-to-online fine-tuning");
* evaluation (the same env spec): start in cell (4, 6), 3 moves from the goal around the
  end of a wall (about 50 steps for the planner); reference scores measured at build time on it and stored in the metadata:
  ``ref_min_score`` = the uniform random policy, ``ref_max_score`` = the planner driving to
  the goal without noise (each over ``reference_episodes`` episodes); the description
  records both success rates too.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from .collect import register_local_builder, write_minari_dataset
from .envs import register_robotics_envs

MAZE_DATASET_ID = "cql-modules/pointmaze/medium-v2"
MAZE_ENV_ID = "PointMaze_Medium-v3"
EVAL_RESET_CELL, EVAL_GOAL_CELL = (4, 6), (6, 5)
EPISODE_STEPS = 300  # a time limit 6x the planner's path: failed online episodes stay short
KP, KD = 10.0, 1.0  # PD gains: action = clip(KP * (waypoint - position) - KD * velocity, -1, 1)


@dataclass
class MazeGrid:
    """A maze map (1 = wall) with all-pairs shortest paths between free cells.

    ``next_cell[a, b]``: index of the neighbour of free cell ``a`` on a shortest path to ``b``
    (``a`` itself when ``a == b``); ``distance[a, b]``: path length in cells. Cell (i, j)
    has its centre at ``x = (j + 0.5 - width / 2) * scale``, ``y = (height / 2 - i - 0.5) * scale``
    (gymnasium-robotics' convention).
    """

    walls: np.ndarray
    scale: float = 1.0

    def __post_init__(self):
        self.walls = np.asarray(self.walls, dtype=bool)
        h, w = self.walls.shape
        self.cells = [(i, j) for i in range(h) for j in range(w) if not self.walls[i, j]]
        self.index = -np.ones((h, w), dtype=int)
        for k, cell in enumerate(self.cells):
            self.index[cell] = k
        self.centers = np.array([self.cell_xy(c) for c in self.cells])
        n = len(self.cells)
        self.distance = np.full((n, n), -1, dtype=int)
        self.next_cell = np.zeros((n, n), dtype=int)
        for b in range(n):  # BFS from each goal cell
            dist = self.distance[:, b]
            dist[b] = 0
            queue = deque([b])
            while queue:
                a = queue.popleft()
                for nb in self.neighbours(a):
                    if dist[nb] < 0:
                        dist[nb] = dist[a] + 1
                        self.next_cell[nb, b] = a  # first step from nb towards b
                        queue.append(nb)
            self.next_cell[b, b] = b

    @classmethod
    def of_env(cls, env_id: str = MAZE_ENV_ID) -> MazeGrid:
        register_robotics_envs()
        spec = gym.spec(env_id)
        walls = [[cell == 1 for cell in row] for row in spec.kwargs["maze_map"]]
        return cls(np.array(walls), float(spec.kwargs.get("maze_size_scaling", 1.0)))

    def neighbours(self, k: int) -> list[int]:
        i, j = self.cells[k]
        out = []
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            ni, nj = i + di, j + dj
            if 0 <= ni < self.walls.shape[0] and 0 <= nj < self.walls.shape[1] and not self.walls[ni, nj]:
                out.append(int(self.index[ni, nj]))
        return out

    def cell_xy(self, cell: tuple[int, int]) -> np.ndarray:
        h, w = self.walls.shape
        return np.array([(cell[1] + 0.5 - w / 2) * self.scale, (h / 2 - cell[0] - 0.5) * self.scale])

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """Free-cell index of each position [..., 2] (clipped into the grid)."""
        h, w = self.walls.shape
        i = np.clip(np.floor(h / 2 - xy[..., 1] / self.scale).astype(int), 0, h - 1)
        j = np.clip(np.floor(xy[..., 0] / self.scale + w / 2).astype(int), 0, w - 1)
        return self.index[i, j]


def planner_action(grid: MazeGrid, position: np.ndarray, velocity: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The scripted planner, batched over rows: waypoint = centre of the next cell on a
    shortest path to the goal's cell (the goal itself once in that cell), then PD control."""
    here, there = grid.cell_of(position), grid.cell_of(goal)
    lost = here < 0  # inside a wall cell (numerically at a border): head for the goal directly
    waypoint = grid.centers[grid.next_cell[np.where(lost, there, here), there]]
    waypoint = np.where(((here == there) | lost)[..., None], goal, waypoint)
    return np.clip(KP * (waypoint - position) - KD * velocity, -1.0, 1.0)


def maze_map(env_id: str = MAZE_ENV_ID) -> list[list]:
    """The task's maze map: the evaluation start cell ``"r"``, the goal cell ``"g"``."""
    layout = [list(row) for row in gym.spec(env_id).kwargs["maze_map"]]
    layout[EVAL_RESET_CELL[0]][EVAL_RESET_CELL[1]] = "r"
    layout[EVAL_GOAL_CELL[0]][EVAL_GOAL_CELL[1]] = "g"
    return layout


def make_maze_envs(n: int) -> list[gym.Env]:
    """``n`` copies of the task's env (the dataset's env spec and evaluation env spec)."""
    register_robotics_envs()
    return [gym.make(MAZE_ENV_ID, maze_map=maze_map(), continuing_task=False, reset_target=False,
                     max_episode_steps=EPISODE_STEPS) for _ in range(n)]


def run_episodes(
    envs: list[gym.Env],
    n_episodes: int,
    act,
    *,
    seed: int,
    reset_options=None,
    progress: bool = False,
    desc: str = "",
) -> list[dict]:
    """Play ``n_episodes`` full episodes (``len(envs)`` at a time, all the same length) with
    ``act(obs_dict_batch) -> actions`` (``act.reset(n)`` first, if it has one);
    ``reset_options(rng)`` gives each reset's options. Returns Minari episode dicts plus the
    per-episode ``success`` (any step)."""
    from tqdm.auto import tqdm  # the [recipes] extra: the core install imports this module without it

    episodes = []
    rng = np.random.default_rng(seed)
    with tqdm(total=n_episodes, desc=desc, disable=not progress) as bar:
        for start in range(0, n_episodes, len(envs)):
            batch = envs[: min(len(envs), n_episodes - start)]
            first = [env.reset(seed=seed + start + k, options=reset_options(rng) if reset_options else None)[0]
                     for k, env in enumerate(batch)]
            if hasattr(act, "reset"):
                act.reset(len(batch))
            obs = [{k: [v] for k, v in f.items()} for f in first]
            logs = [{"actions": [], "rewards": [], "terminations": [], "truncations": [], "success": False}
                    for _ in batch]  # fmt: skip
            current = first
            done = np.zeros(len(batch), dtype=bool)
            while not done.all():
                stacked = {k: np.stack([o[k] for o in current]) for k in current[0]}
                actions = np.asarray(act(stacked), dtype=np.float32)
                for e, env in enumerate(batch):
                    if done[e]:
                        continue
                    o, r, term, trunc, info = env.step(actions[e])
                    for k in o:
                        obs[e][k].append(o[k])
                    log = logs[e]
                    log["actions"].append(actions[e])
                    log["rewards"].append(r)
                    log["terminations"].append(term)
                    log["truncations"].append(trunc)
                    log["success"] |= bool(info.get("success", False))
                    current[e] = o
                    done[e] = term or trunc
            for e in range(len(batch)):
                episodes.append({
                    "observations": {k: np.asarray(v) for k, v in obs[e].items()},
                    "actions": np.asarray(logs[e]["actions"], dtype=np.float32),
                    "rewards": np.asarray(logs[e]["rewards"], dtype=np.float64),
                    "terminations": np.asarray(logs[e]["terminations"]),
                    "truncations": np.asarray(logs[e]["truncations"]),
                    "success": logs[e]["success"],
                })  # fmt: skip
            bar.update(len(batch))
    return episodes


def planner_policy(grid: MazeGrid):
    """``obs dict batch -> actions``: :func:`planner_action` to the env's goal, no noise."""

    def act(obs: dict) -> np.ndarray:
        o = obs["observation"]
        return planner_action(grid, o[:, :2], o[:, 2:4], obs["desired_goal"])

    return act


class PlannerDriver:
    """The behaviour: :func:`planner_action` to random waypoint cells of its own (a new one
    when the ball is within 0.45 of the current one, uniform over the free cells not in
    ``exclude``), plus N(0, noise_std^2) action noise."""

    def __init__(self, grid: MazeGrid, noise_std: float, seed: int = 0, exclude: tuple = ()):
        self.grid, self.noise_std = grid, noise_std
        self.rng = np.random.default_rng(seed)
        self.targets = np.zeros((0, 2))
        self.waypoints = grid.centers[[k for k, cell in enumerate(grid.cells) if tuple(cell) not in set(exclude)]]

    def _draw(self, n: int) -> np.ndarray:
        return self.waypoints[self.rng.integers(len(self.waypoints), size=n)]

    def reset(self, n: int) -> None:
        self.targets = self._draw(n)

    def __call__(self, obs: dict) -> np.ndarray:
        o = obs["observation"]
        position, velocity = o[:, :2], o[:, 2:4]
        reached = np.linalg.norm(position - self.targets, axis=-1) <= 0.45
        self.targets[reached] = self._draw(int(reached.sum()))
        action = planner_action(self.grid, position, velocity, self.targets)
        action = action + self.noise_std * self.rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0)


def random_policy(seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, (len(obs["observation"]), 2))


def build_maze_dataset(
    dataset_id: str = MAZE_DATASET_ID,
    *,
    episodes: int = 800,
    noise_std: float = 0.5,
    reference_episodes: int = 20,
    num_envs: int = 16,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Collect the planner's episodes, measure the references, write the Minari dataset
    (see the module docstring); returns the measured numbers."""
    start = time.perf_counter()
    grid = MazeGrid.of_env()
    envs = make_maze_envs(num_envs)

    def random_start(rng):
        return {"reset_cell": np.array(grid.cells[rng.integers(len(grid.cells))])}

    driver = PlannerDriver(grid, noise_std, seed, exclude=(EVAL_GOAL_CELL,))
    data = run_episodes(envs, episodes, driver, seed=seed, reset_options=random_start,
                        progress=progress, desc="collect PointMaze planner")
    ref_seed = seed + 1_000_000
    rand = run_episodes(envs, reference_episodes, random_policy(seed), seed=ref_seed, progress=progress,
                        desc="reference: random")
    plan = run_episodes(envs, reference_episodes, planner_policy(grid), seed=ref_seed, progress=progress,
                        desc="reference: planner")

    def stats(eps):
        return float(np.mean([e["rewards"].sum() for e in eps])), float(np.mean([e["success"] for e in eps]))

    (random_return, random_success), (planner_return, planner_success) = stats(rand), stats(plan)
    transitions = sum(len(e["rewards"]) for e in data)
    episodes_at_goal = float(np.mean([e["success"] for e in data]))  # = rewarded steps per episode (each ends there)
    write_minari_dataset(
        dataset_id,
        [{k: v for k, v in e.items() if k != "success"} for e in data],
        env=envs[0].spec,
        eval_env=envs[0].spec,
        ref_min_score=random_return,
        ref_max_score=planner_return,
        num_episodes_average_score=reference_episodes,
        algorithm_name=f"cql-modules BFS + PD maze planner, random waypoints, action noise {noise_std}",
        code_permalink="cql_modules/data/maze.py",
        description=(
            f"{MAZE_ENV_ID}, goal cell {EVAL_GOAL_CELL}, the episode ends at the goal. {episodes} episodes of at most "
            f"{EPISODE_STEPS} steps ({transitions} transitions) from random cells: a shortest-path + PD planner "
            f"driving to random waypoints (never the goal cell) with Gaussian action noise (std {noise_std}); {episodes_at_goal:.3f} of the "
            f"episodes reach the goal. Evaluation: from cell {EVAL_RESET_CELL}, return = 1 if the goal is reached. "
            f"References over {reference_episodes} episodes: random policy return {random_return:.1f} (success "
            f"{random_success:.2f}), noise-free planner return {planner_return:.1f} (success {planner_success:.2f}). "
            f"Built by cql_modules.data.maze.build_maze_dataset(seed={seed})."
        ),
        overwrite=overwrite,
    )
    return {
        "episodes": episodes,
        "transitions": transitions,
        "episodes_at_goal": episodes_at_goal,
        "random_return": random_return,
        "random_success": random_success,
        "planner_return": planner_return,
        "planner_success": planner_success,
        "seconds": time.perf_counter() - start,
    }


ensure_maze_dataset = register_local_builder(MAZE_DATASET_ID, build_maze_dataset, "about a minute")
