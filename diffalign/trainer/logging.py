"""Per-epoch metrics: one JSON line per epoch in OUTPUT_DIR/metrics.jsonl, and tensorboard scalars/images."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import torch


class MetricsLogger:
    """Writes on the main process only. On resume, lines of epochs >= ``start_epoch`` are dropped
    (a run killed after logging but before checkpointing an epoch redoes that epoch)."""

    def __init__(self, output_dir: str, tensorboard: bool = True, start_epoch: int = 0):
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, "metrics.jsonl")
        if os.path.exists(self.path):
            kept = [line for line in read_metrics(self.path) if line["epoch"] < start_epoch]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(line) + "\n" for line in kept)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def log(self, metrics: Dict[str, Any], image: Optional[torch.Tensor] = None) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            epoch = metrics["epoch"]
            for k, v in metrics.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, epoch)
            if image is not None:
                self.writer.add_image("samples", image, epoch)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str):
    """The per-epoch dicts of a metrics.jsonl (a torn last line, from a kill mid-write, is skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
