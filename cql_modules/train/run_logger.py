"""Thin glue over TorchRL's loggers, plus the files every run directory always has.

:class:`RunLogger` sends each logged dict to the configured
``torchrl.record.loggers`` backends (``CSVLogger``, ``TensorboardLogger``,
``WandbLogger``; W&B runs in offline mode unless configured, so no network is needed)
and appends it as one line to ``metrics.jsonl`` (flushed per line). It also writes
``summary.json`` (atomically) and the learning-curve PNG (matplotlib, Agg backend).

On resume, :meth:`RunLogger.rewind` drops what was logged after the checkpoint (from
``metrics.jsonl`` and the CSV files) so that the re-run interval is not logged twice.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from cql_modules.atomic import atomic_write

__all__ = ["RunLogger", "flatten_config", "read_metrics", "write_json", "plot_learning_curve", "record_failure"]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVE_FILE = "learning_curve.png"
REEVALUATIONS = "reevaluations"  #: summary.json's list of recipes/evaluate.py results, kept across rewrites


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _clean(value: Any) -> Any:
    """JSON has no inf/NaN: write them as strings ("inf", "-inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write JSON atomically (temp file + ``os.replace``)."""
    path = Path(path)
    with atomic_write(path) as f:
        json.dump(_clean(data), f, indent=2, default=_json_default)
        f.write("\n")
    return path


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line, from a killed run, is skipped)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_learning_curve(
    records: Iterable[dict[str, Any]],
    path: str | os.PathLike,
    *,
    metric: str = "d4rl_normalized_score",
    fallback: str = "eval_score",
    title: str | None = None,
    reference_lines: dict[str, float] | None = None,
    vertical_lines: dict[str, float] | None = None,
) -> Path | None:
    """Plot ``metric`` (else ``fallback``) against ``step``; mark ``reference_lines``
    (label -> y, e.g. the behaviour policy's score) and ``vertical_lines`` (label -> step,
    e.g. the offline -> online boundary; None values are skipped). Returns None if nothing
    to plot."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = list(records)
    key = metric if any(metric in r for r in records) else fallback
    points = [(r["step"], r[key]) for r in records if key in r and isinstance(r.get(key), (int, float))]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o", markersize=3, label="CQL, deterministic policy (mean ± std over episodes)")
        std_key = "eval/normalized_score_std" if key == metric else "eval/return_std"
        stds = [r.get(std_key) for r in records if key in r and isinstance(r.get(key), (int, float))]
        if all(isinstance(s, (int, float)) for s in stds):
            lo = [v - s for v, s in zip(values, stds)]
            hi = [v + s for v, s in zip(values, stds)]
            ax.fill_between(steps, lo, hi, alpha=0.2)
    for i, (label, y) in enumerate((reference_lines or {}).items()):
        if y is not None and math.isfinite(y):
            ax.axhline(y, linestyle="--", color=f"C{i + 1}", label=label)
    for label, x in (vertical_lines or {}).items():
        if x is not None and math.isfinite(x):
            ax.axvline(x, linestyle=":", color="0.4", label=label)
    ax.set_xlabel("updates")
    ax.set_ylabel("normalized score" if key == metric else "return")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if points or reference_lines or vertical_lines:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return Path(path)


def record_failure(run_dir: str | os.PathLike, error: BaseException | str, config: Any = None) -> None:
    """Give a run that failed before finishing its run files anyway: ``summary.json``
    (status ``failed`` and the error), ``metrics.jsonl`` (what was logged, maybe nothing)
    and the learning curve of what was logged."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS_FILE).touch()
    if config is not None and not isinstance(config, dict):
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=False)
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    write_json({"status": "failed", "message": message, "config": config}, run_dir / SUMMARY_FILE)
    plot_learning_curve(read_metrics(run_dir / METRICS_FILE), run_dir / CURVE_FILE, title="failed run")


class RunLogger:
    """Log dicts of floats to TorchRL loggers and ``metrics.jsonl`` in ``run_dir``.

    Args:
        run_dir: the run directory (Hydra's output dir).
        backends: any of ``"csv"``, ``"tensorboard"``, ``"wandb"``.
        exp_name: experiment name (sub-directory of the CSV/TensorBoard logs, W&B run name).
        config: logged as hyper-parameters (W&B config, TensorBoard hparams, CSV text).
        project, group: W&B project / group.
        wandb_mode: ``"offline"`` / ``"online"`` / ``"disabled"``; None: ``$WANDB_MODE``,
            else offline.
        resume_state: :meth:`state_dict` of the logger of the run being resumed (its W&B
            run id: the resumed run logs to the same W&B run).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        backends: Iterable[str] = ("csv",),
        *,
        exp_name: str = "cql",
        config: dict[str, Any] | None = None,
        project: str = "cql-modules",
        group: str | None = None,
        wandb_mode: str | None = None,
        resume_state: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.exp_name = exp_name
        self.loggers: dict[str, Any] = {}
        wandb_id = (resume_state or {}).get("wandb_id")
        for backend in dict.fromkeys(backends):
            self.loggers[backend] = self._make(backend, config, project, group, wandb_mode, wandb_id)
        self._jsonl = open(self.metrics_path, "a")

    def _make(self, backend, config, project, group, wandb_mode, wandb_id):
        from torchrl.record.loggers import CSVLogger, TensorboardLogger, WandbLogger

        _require(backend)
        if backend == "csv":
            logger = CSVLogger(exp_name=self.exp_name, log_dir=str(self.run_dir / "csv"))
        elif backend == "tensorboard":
            logger = TensorboardLogger(exp_name=self.exp_name, log_dir=str(self.run_dir / "tensorboard"))
        elif backend == "wandb":
            mode = wandb_mode or os.environ.get("WANDB_MODE") or "offline"
            if mode == "dryrun":
                mode = "offline"
            import wandb

            logger = WandbLogger(
                exp_name=self.exp_name,
                offline=False,  # the mode below decides (WandbLogger's offline flag sets a global env var)
                save_dir=str(self.run_dir),
                id=wandb_id,
                project=project,
                group=group,
                mode=mode,
                log_env_packages=False,
                config=_clean(config or {}),
                settings=wandb.Settings(silent=True),
            )
            return logger
        else:
            raise ValueError(f"unknown logger backend {backend!r}: use csv, tensorboard or wandb")
        if config:
            try:
                if backend == "tensorboard":
                    _tensorboard_hparams(logger.experiment, _hparams(config))
                else:
                    logger.log_hparams(_hparams(config))
            except Exception:  # hparams are a convenience; never fail a run on them
                pass
        return logger

    # -------------------------------------------------------------- logging
    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send ``metrics`` to every backend and append ``{"step": step, **metrics}``."""
        metrics = {k: float(v) for k, v in metrics.items()}
        for logger in self.loggers.values():
            logger.log_metrics(metrics, step=step)
        self._jsonl.write(json.dumps(_clean({"step": int(step), **metrics})) + "\n")
        self._jsonl.flush()

    def records(self) -> list[dict[str, Any]]:
        self._jsonl.flush()
        return read_metrics(self.metrics_path)

    def rewind(self, step: int, source_dir: str | os.PathLike | None = None) -> None:
        """Forget what was logged after ``step`` (resume from a checkpoint at ``step``):
        ``metrics.jsonl`` and the CSV files are cut, TensorBoard is told to purge.

        ``source_dir``: run directory of the checkpoint; when it is another directory, its
        ``metrics.jsonl`` up to ``step`` becomes this run's history.
        """
        self._jsonl.close()
        source = self.metrics_path
        if source_dir is not None and Path(source_dir).resolve() != self.run_dir.resolve():
            source = Path(source_dir) / METRICS_FILE
        kept = [r for r in read_metrics(source) if r.get("step", 0) <= step]
        with atomic_write(self.metrics_path) as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        self._jsonl = open(self.metrics_path, "a")
        if "tensorboard" in self.loggers:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog

            # TensorBoard hides every event at or after the step of a SessionLog.START (what
            # SummaryWriter(purge_step=...) writes; that argument exists only at construction)
            writer = self.loggers["tensorboard"].experiment
            writer.file_writer.add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))
            writer.flush()
        if "csv" in self.loggers:
            experiment = self.loggers["csv"].experiment
            # torchrl's CSVExperiment keeps one open handle per metric in ``files`` and has no
            # close/reopen API: close them so the rewritten files are reopened on the next log
            for fd in experiment.files.values():
                fd.close()
            experiment.files.clear()
            for csv_path in Path(experiment.log_dir, "scalars").glob("**/*.csv"):
                text = csv_path.read_text()
                lines = text.splitlines()[:None if text.endswith("\n") else -1]  # a killed run's torn last line
                keep = [ln for ln in lines if _csv_step(ln) is not None and _csv_step(ln) <= step]
                with atomic_write(csv_path) as f:
                    f.write("".join(ln + "\n" for ln in keep))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"exp_name": self.exp_name}
        if "wandb" in self.loggers:
            state["wandb_id"] = getattr(self.loggers["wandb"].experiment, "id", None)
        return state

    # -------------------------------------------------------------- run files
    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write ``summary.json``, keeping the :data:`REEVALUATIONS` of the one it replaces."""
        previous = self.run_dir / SUMMARY_FILE
        if REEVALUATIONS not in summary and previous.is_file():
            try:
                kept = json.loads(previous.read_text()).get(REEVALUATIONS)
            except (OSError, ValueError, AttributeError):
                kept = None
            if kept:
                summary = {**summary, REEVALUATIONS: kept}
        path = write_json(summary, previous)
        if "wandb" in self.loggers:
            run = self.loggers["wandb"].experiment
            for k, v in summary.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    run.summary[k] = v
        return path

    def plot(self, path: str | os.PathLike | None = None, **kwargs) -> Path | None:
        """Write the learning-curve PNG and log it as an image to TensorBoard and W&B."""
        records = self.records()
        path = plot_learning_curve(records, path or self.run_dir / CURVE_FILE, **kwargs)
        if path is not None:
            self._log_image(path, step=max((r.get("step", 0) for r in records), default=0))
        return path

    def _log_image(self, path: Path, step: int) -> None:
        if "tensorboard" in self.loggers:
            from matplotlib.image import imread

            writer = self.loggers["tensorboard"].experiment
            writer.add_image(path.stem, imread(path)[..., :3], global_step=step, dataformats="HWC")
            writer.flush()
        if "wandb" in self.loggers:
            import wandb

            self.loggers["wandb"].experiment.log({path.stem: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        if not self._jsonl.closed:
            self._jsonl.close()
        for logger in self.loggers.values():
            try:
                logger.shutdown()
            except Exception:
                pass

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: the package each logger backend needs, and the extra that installs it
BACKEND_PACKAGES = {"tensorboard": ("tensorboard", "recipes"), "wandb": ("wandb", "wandb")}


def _require(backend: str) -> None:
    """One line naming the extra to install when a chosen backend's package is missing."""
    if backend not in BACKEND_PACKAGES:
        return
    package, extra = BACKEND_PACKAGES[backend]
    if importlib.util.find_spec(package) is None:
        raise ModuleNotFoundError(f"logger.backends: {backend} needs the {package} package: pip install "
                                  f"'cql-modules[{extra}]' (or drop {backend} from logger.backends)", name=package)


#: evaluation metrics declared to TensorBoard's HParams dashboard (it shows their logged scalars)
HPARAM_METRICS = ("d4rl_normalized_score", "eval_score", "eval/success_rate")


def _tensorboard_hparams(writer: Any, hparams: dict[str, Any]) -> None:
    """The hyper-parameters into the run's own event file, with :data:`HPARAM_METRICS`
    declared, so TensorBoard's HParams tab lists each run's hyper-parameters next to its
    scores (``SummaryWriter.add_hparams`` would write a separate run without them)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    for summary in hparams_summaries(hparams, dict.fromkeys(HPARAM_METRICS, 0.0)):
        writer.file_writer.add_summary(summary)


def _csv_step(line: str) -> int | None:
    try:
        return int(float(line.split(",", 1)[0]))
    except (ValueError, IndexError):
        return None


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys (``{"loss": {"cql_alpha": 5}}`` ->
    ``{"loss.cql_alpha": 5}``), values unchanged."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    """:func:`flatten_config` with the values hyper-parameter logs accept: numbers, strings
    and booleans; None, inf/nan and anything else as their string."""
    out: dict[str, Any] = {}
    for k, v in flatten_config(config).items():
        if v is None or (isinstance(v, float) and not math.isfinite(v)) or not isinstance(v, (int, float, str, bool)):
            v = str(v)
        out[k] = v
    return out
