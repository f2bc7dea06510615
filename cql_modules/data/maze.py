"""The embedded goal-reaching dataset: PointMaze Medium in the style of D4RL's maze2d.

``cql-modules/pointmaze/medium-v0`` (:data:`MAZE_DATASET_ID`) is built on first use
(``load_dataset(MAZE_DATASET_ID)``), with no network, like the Pendulum dataset:

* environment: gymnasium-robotics ``PointMaze_Medium-v3`` (8x8 grid, a force-controlled
  ball), sparse reward 1 within 0.45 of the goal; observations are the env's ``Dict``
  (``achieved_goal``, ``desired_goal``, ``observation`` = position and velocity), flattened
  to 8 numbers, goal included;
* behaviour (:func:`planner_action`): shortest path on the maze grid (breadth-first search,
  :class:`MazeGrid`) from the ball's cell to the goal's cell, then a PD controller from
  waypoint to waypoint (cell centres, then the goal itself), plus Gaussian action noise.
  Each 600-step episode starts in a random cell with a random goal, and the env draws a new
  random goal each time one is reached (``continuing_task``, ``reset_target``), so the data
  covers the maze but almost never shows the evaluation task from start to end;
* evaluation task (the dataset's evaluation env spec): start in cell (1, 1), goal in cell
  (6, 5), the two cells furthest apart (11 cells), 600 steps; the goal stays put once
  reached, so the return counts the steps spent at the goal (D4RL maze2d's score: faster
  is better) and ``info["success"]`` says whether it was reached at all;
* reference scores, measured at build time on the evaluation task and stored in the
  metadata: ``ref_min_score`` = the uniform random policy, ``ref_max_score`` = the planner
  without noise (each over ``reference_episodes`` episodes); the description records both
  success rates too.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from .collect import LOCAL_BUILDERS, write_minari_dataset
from .minari_source import is_local_minari, minari_root

MAZE_DATASET_ID = "cql-modules/pointmaze/medium-v0"
MAZE_ENV_ID = "PointMaze_Medium-v3"
EVAL_RESET_CELL, EVAL_GOAL_CELL = (1, 1), (6, 5)
EPISODE_STEPS = 600
KP, KD = 10.0, 1.0  # PD gains: action = clip(KP * (waypoint - position) - KD * velocity, -1, 1)


def _register() -> None:
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


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
        _register()
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


def eval_maze_map(grid_env_id: str = MAZE_ENV_ID) -> list[list]:
    """The maze map of the evaluation task: reset cell ``"r"``, goal cell ``"g"``."""
    maze_map = [list(row) for row in gym.spec(grid_env_id).kwargs["maze_map"]]
    maze_map[EVAL_RESET_CELL[0]][EVAL_RESET_CELL[1]] = "r"
    maze_map[EVAL_GOAL_CELL[0]][EVAL_GOAL_CELL[1]] = "g"
    return maze_map


def make_maze_envs(n: int, *, evaluation: bool) -> list[gym.Env]:
    """``n`` copies of the data env (random starts and goals, a new goal when reached) or of
    the evaluation env (fixed start and goal, the goal stays)."""
    _register()
    kwargs = (
        {"maze_map": eval_maze_map(), "continuing_task": True, "reset_target": False}
        if evaluation
        else {"continuing_task": True, "reset_target": True}
    )
    return [gym.make(MAZE_ENV_ID, max_episode_steps=EPISODE_STEPS, **kwargs) for _ in range(n)]


def run_episodes(
    envs: list[gym.Env],
    n_episodes: int,
    act,
    *,
    seed: int,
    progress: bool = False,
    desc: str = "",
) -> list[dict]:
    """Play ``n_episodes`` full episodes (``len(envs)`` at a time, all the same length) with
    ``act(obs_dict_batch) -> actions``; return them as Minari episode dicts plus the
    per-episode ``success`` (any step)."""
    from tqdm.auto import tqdm  # the [recipes] extra: the core install imports this module without it

    episodes = []
    with tqdm(total=n_episodes, desc=desc, disable=not progress) as bar:
        for start in range(0, n_episodes, len(envs)):
            batch = envs[: min(len(envs), n_episodes - start)]
            first = [env.reset(seed=seed + start + k)[0] for k, env in enumerate(batch)]
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


def planner_policy(grid: MazeGrid, noise_std: float = 0.0, seed: int = 0):
    """``obs dict batch -> actions``: :func:`planner_action` + N(0, noise_std^2), clipped."""
    rng = np.random.default_rng(seed)

    def act(obs: dict) -> np.ndarray:
        o = obs["observation"]
        action = planner_action(grid, o[:, :2], o[:, 2:4], obs["desired_goal"])
        if noise_std > 0:
            action = action + noise_std * rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0)

    return act


def random_policy(seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, (len(obs["observation"]), 2))


def build_maze_dataset(
    dataset_id: str = MAZE_DATASET_ID,
    *,
    episodes: int = 200,
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
    data_envs = make_maze_envs(num_envs, evaluation=False)
    eval_envs = make_maze_envs(num_envs, evaluation=True)
    data = run_episodes(data_envs, episodes, planner_policy(grid, noise_std, seed), seed=seed, progress=progress,
                        desc="collect PointMaze planner")
    ref_seed = seed + 1_000_000
    rand = run_episodes(eval_envs, reference_episodes, random_policy(seed), seed=ref_seed, progress=progress,
                        desc="reference: random")
    plan = run_episodes(eval_envs, reference_episodes, planner_policy(grid), seed=ref_seed, progress=progress,
                        desc="reference: planner")

    def stats(eps):
        return float(np.mean([e["rewards"].sum() for e in eps])), float(np.mean([e["success"] for e in eps]))

    (random_return, random_success), (planner_return, planner_success) = stats(rand), stats(plan)
    goals_per_episode = float(np.mean([e["rewards"].sum() for e in data]))
    write_minari_dataset(
        dataset_id,
        [{k: v for k, v in e.items() if k != "success"} for e in data],
        env=data_envs[0].spec,
        eval_env=eval_envs[0].spec,
        ref_min_score=random_return,
        ref_max_score=planner_return,
        num_episodes_average_score=reference_episodes,
        algorithm_name=f"cql-modules BFS + PD maze planner, random goals, action noise {noise_std}",
        code_permalink="cql_modules/data/maze.py",
        description=(
            f"{MAZE_ENV_ID}, {episodes} episodes of {EPISODE_STEPS} steps: a shortest-path + PD planner driving to "
            f"random goals with Gaussian action noise (std {noise_std}); {goals_per_episode:.2f} goals reached per "
            f"episode. Evaluation task: cell {EVAL_RESET_CELL} -> cell {EVAL_GOAL_CELL}, return = steps at the goal. "
            f"References over {reference_episodes} episodes: random policy return {random_return:.1f} (success "
            f"{random_success:.2f}), noise-free planner return {planner_return:.1f} (success {planner_success:.2f}). "
            f"Built by cql_modules.data.maze.build_maze_dataset(seed={seed})."
        ),
        overwrite=overwrite,
    )
    return {
        "episodes": episodes,
        "transitions": episodes * EPISODE_STEPS,
        "goals_per_episode": goals_per_episode,
        "random_return": random_return,
        "random_success": random_success,
        "planner_return": planner_return,
        "planner_success": planner_success,
        "seconds": time.perf_counter() - start,
    }


def ensure_maze_dataset(progress: bool = True) -> str:
    """Build :data:`MAZE_DATASET_ID` if it is not in minari's root yet; return its id."""
    if not is_local_minari(MAZE_DATASET_ID):
        if progress:
            print(f"building {MAZE_DATASET_ID} under {minari_root()} (first use, about a minute)", file=sys.stderr)
        build_maze_dataset(progress=progress)
    return MAZE_DATASET_ID


LOCAL_BUILDERS[MAZE_DATASET_ID] = ensure_maze_dataset
