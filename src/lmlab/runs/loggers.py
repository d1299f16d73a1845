"""The run's loggers: Weights & Biases that never blocks a run (online with credentials and a reachable server,
else offline), TensorBoard that keeps every hyper-parameter, and a CSV log that survives a resume."""

from __future__ import annotations

import csv
import io
import logging
import netrc
import os
import secrets
import string
import threading
from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pytorch_lightning import loggers
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from lmlab.errors import LmlabError
from lmlab.io import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"


def has_wandb_credentials(base_url: str | None = None) -> bool:
    """True when an API key is in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(base_url or os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname
    try:
        return bool(host and netrc.netrc().authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def server_reachable(base_url: str | None = None, timeout: float = 3.0) -> bool:
    """Whether the W&B server answers an HTTP request within `timeout` seconds (DNS included).

    Any HTTP answer counts, even an error status; a refused connection, or a port that accepts but stays silent,
    does not.
    """
    import urllib.error
    import urllib.request

    url = base_url or os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


_automatic_mode: str | None = None
"""The mode chosen without WANDB_MODE, kept for the rest of the process: a sweep probes and warns once."""


def choose_wandb_mode(mode: str | None = None) -> str:
    """Resolve the W&B mode: explicit argument, then WANDB_MODE, then online only if it can work."""
    global _automatic_mode
    mode = mode or os.environ.get("WANDB_MODE")
    if mode == "online" and not server_reachable():  # asked for explicitly: fail now, not after W&B's long retries
        url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
        raise LmlabError(
            f"W&B mode is online but the server {url} is unreachable; use logger.wandb.mode=offline (sync later "
            "with `wandb sync`), unset WANDB_MODE to let lmlab choose, or check the network and WANDB_BASE_URL"
        )
    if mode:
        return "offline" if mode == "dryrun" else mode
    if _automatic_mode is None:
        reason = None
        if not has_wandb_credentials():
            reason = "no API key configured (WANDB_API_KEY or ~/.netrc)"
        elif not server_reachable():
            reason = f"server {os.environ.get('WANDB_BASE_URL', DEFAULT_BASE_URL)} unreachable"
        _automatic_mode = "online" if reason is None else "offline"
        if reason and _is_rank_zero():
            log.warning(
                "W&B: %s, logging offline; upload later with `wandb sync <run dir>/wandb/offline-run-*`", reason
            )
    return _automatic_mode


def _is_rank_zero() -> bool:
    """Whether this process is rank 0 (or the only one), from the launcher's environment (NODE_RANK included)."""
    from lmlab.compute.ranks import is_first_process

    return is_first_process()


RUN_ID_FILE = "wandb_run_id"
"""In the run directory: the W&B run id, so a run resumed in the same directory continues the same W&B run."""


def run_id_for(run_dir: str | Path) -> tuple[str, bool]:
    """The W&B run id of `run_dir`: the stored one (True: resume it) or a new one, stored now by rank 0."""
    path = Path(run_dir) / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), True
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    if _is_rank_zero():
        atomic_write_text(path, run_id + "\n")
    return run_id, False


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    mode: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    job_type: str | None = None,
    id: str | None = None,
    **kwargs: Any,
) -> Any:
    """A Lightning `WandbLogger` in the mode `choose_wandb_mode` picks, one W&B run per run directory.

    The run id is kept in `<save_dir>/wandb_run_id`: a later run in the same directory (a resumed run) continues
    that W&B run. The run config starts with `provenance` (git commit and dirty flag, key package versions,
    hardware); the train command adds the resolved config.
    """
    from pytorch_lightning.loggers import WandbLogger

    from lmlab.runs.provenance import run_environment

    os.makedirs(save_dir, exist_ok=True)
    mode = choose_wandb_mode(mode)
    resume = False
    if id is None and mode != "disabled":
        id, resume = run_id_for(save_dir)
    if resume:
        log.info("W&B: continuing run %s of %s", id, save_dir)
    config = {"provenance": run_environment(), **kwargs.pop("config", {})}
    logger = WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name or None,
        mode=mode,
        group=group or None,
        tags=list(tags or []),
        job_type=job_type,
        id=id,
        config=config,
        **kwargs,
    )
    init = getattr(logger, "_wandb_init", {})
    if init.get("anonymous", False) is None:  # Lightning passes anonymous=None, which W&B warns has no effect
        del init["anonymous"]
    return logger


def log_evaluation_to_wandb(
    checkpoint: Path, settings: dict[str, Any] | None, metrics: dict[str, float], rows: list[dict[str, Any]]
) -> str | None:
    """Add an evaluation of `checkpoint` to the W&B run that trained it (its run folder's `wandb_run_id`), so the
    dashboard shows it beside the training curves: `metrics` into the run summary as `eval/<name>` and `rows` (e.g.
    generated replies) as a table. `settings` is the run's `logger.wandb` config; the mode is chosen as for training
    (offline without credentials). Returns the W&B run id, or None: the run had no W&B logger, or W&B is disabled."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    id_file = run_dir / RUN_ID_FILE
    if not settings or not id_file.is_file():
        return None
    mode = choose_wandb_mode(settings.get("mode"))
    if mode == "disabled":
        return None
    import wandb

    run_id = id_file.read_text().strip()
    run = wandb.init(project=settings.get("project") or "lmlab", id=run_id, resume="allow", dir=str(run_dir),
                     mode=mode)  # fmt: skip
    try:
        run.summary.update({f"eval/{name}": value for name, value in metrics.items()})
        if rows:
            columns = list(rows[0])
            run.log({"eval/examples": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
    finally:
        run.finish()
    return run_id


def finish_wandb() -> None:
    """End the current W&B run, so the next job of a sweep starts its own."""
    import sys

    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if getattr(wandb, "run", None) is not None:
            wandb.finish()


# --- TensorBoard ---


class TensorBoardLogger(loggers.TensorBoardLogger):
    """TensorBoard whose HParams tab shows every hyper-parameter logged so far, not only the last call's, with the
    run's own metrics and no placeholder, and whose charts leave out Lightning's `epoch` counter.

    The train command logs the resolved config and Lightning then logs the task's own hyper-parameters; the stock
    logger would show only the latter in the HParams tab (`hparams.yaml` holds both either way). Without
    `default_hp_metric` the stock logger writes no HParams record at all; this one writes the hyper-parameters alone,
    and TensorBoard takes the metric columns from the run's scalars (`val/loss`, ...). `version=None` means no
    sub-folder (the train command names it by the run's overrides: TensorBoard shows the folder as the run's name).
    """

    def __init__(self, save_dir: str, *args: Any, version: int | str | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir, *args, version="" if version is None else version, **kwargs)

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, metrics: dict[str, Any] | None = None, step: int | None = None
    ) -> None:
        params = {**self.hparams, **(vars(params) if isinstance(params, Namespace) else dict(params))}
        super().log_hyperparams(params, metrics, step)
        if metrics is None and not self._default_hp_metric:  # the stock logger wrote none
            from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
            from torch.utils.tensorboard.summary import hparams

            _, session_start, session_end = hparams(self._sanitize_params(_flatten_dict(_convert_params(params))), {})
            writer = self.experiment._get_file_writer()
            writer.add_summary(session_start, step)
            writer.add_summary(session_end, step)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        # Lightning adds `epoch` to every logger's metrics: a chart of it (0 throughout step-budgeted runs) led the list
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


# --- CSV ---


class CSVLogger(loggers.CSVLogger):
    """Lightning's `CSVLogger`, except that it appends to a `metrics.csv` it finds instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        earlier = path.read_text(encoding="utf-8") if path.is_file() else ""
        writer = super().experiment  # removes the file
        if earlier.strip():
            path.write_text(earlier, encoding="utf-8")
            writer.metrics_keys = sorted(next(csv.reader(io.StringIO(earlier))))  # new columns are merged in
        return writer


def trim_metrics(path: Path, step: int) -> None:
    """Drop the rows of a `metrics.csv` logged at `step` or later (a resumed run logs them again)."""
    if not path.is_file():
        return
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    if not rows or "step" not in rows[0]:
        return
    kept = [row for row in rows if row["step"] and int(float(row["step"])) < step]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, out.getvalue())
