"""Progress bar and metrics for long runs: step, loss parts, it/s, ETA; JSONL log; loss curve."""

from __future__ import annotations

import json
import sys
from pathlib import Path


class ProgressBar:
    """tqdm over optimizer steps with the loss parts as postfix (it/s and ETA from tqdm)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr, desc="train")

    def update(self, step: int, record: dict) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "diffusion", "temporal")
                              if k in record}, refresh=False)

    def close(self) -> None:
        self.bar.close()


class MetricsLog:
    """Append-only JSONL of step records. On resume, records past the resumed step (written
    after the checkpoint that is resumed) are dropped so the log matches the run."""

    def __init__(self, path: str | Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if truncate_after_step is None or rec["step"] <= truncate_after_step:
                        self.records.append(rec)
        if truncate_after_step == 0:
            self.records = []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def first(self, key: str):
        return self.records[0][key] if self.records else None

    def last(self, key: str):
        return self.records[-1][key] if self.records else None

    def plot(self, path: str | Path) -> Path | None:
        """Loss curve PNG (total, diffusion and weighted temporal parts) against the step."""
        if not self.records:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.records]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        axes[0].plot(steps, [r["loss"] for r in self.records], label="total")
        if "diffusion" in self.records[0]:
            axes[0].plot(steps, [r["diffusion"] for r in self.records], label="diffusion", alpha=0.7)
        axes[0].set_xlabel("optimizer step"), axes[0].set_ylabel("loss"), axes[0].legend()
        axes[0].set_title("training loss")
        if "temporal" in self.records[0]:
            axes[1].plot(steps, [r["temporal"] for r in self.records], color="C2")
            axes[1].set_title("temporal consistency loss (eq. 22)")
            axes[1].set_xlabel("optimizer step")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return Path(path)


class TensorBoardLog:
    """TensorBoard event files (tensorboardX: no TensorFlow needed) beside the JSONL: every
    numeric field of a step record becomes a scalar of that step. On resume, ``purge_step``
    makes TensorBoard drop the events an interrupted run wrote past the resumed checkpoint."""

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(logdir), purge_step=purge_step, flush_secs=30)

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
