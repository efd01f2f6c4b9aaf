"""What a run reports: summary.json at the end (also of a stopped run) and the progress bar on rank 0."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..files import write_json_atomic


def _mean_or_nan(col) -> float:
    """Mean of a step column over the rank file's rows (NaN, written null, when there are none)."""
    return float(np.mean(col)) if len(col) else float("nan")


def write_summary(w, log, wall: float, samples: int, sizes: list[int], **outcome) -> dict:
    """Rank 0: summary.json of the run (also of a stopped one), written atomically as strict JSON."""
    cfg = w.cfg
    ev = {k: log.f["eval"][k][:] for k in ("step", "test_loss", "test_acc", "t_eval", "val_loss", "val_acc",
                                           "train_loss", "train_acc", "sharpness")}
    nan = float("nan")
    eval_s = float(np.nansum(ev["t_eval"]))  # rows kept from a file written before t_eval existed hold NaN
    train_s = wall - eval_s
    held_out = w.val_set is not None  # data.val_fraction: "best" is chosen on validation, test is measured once
    pick = ev["val_acc"] if held_out else ev["test_acc"]
    best = int(np.nanargmax(pick)) if len(pick) and not np.isnan(pick).all() else None
    final_acc, final_loss = (float(ev["test_acc"][-1]), float(ev["test_loss"][-1])) if len(pick) else (nan, nan)
    if held_out:  # the test set is measured once: its best is its final (NaN for a run stopped early)
        best_acc = final_acc
    else:
        best_acc = float(ev["test_acc"][best]) if best is not None else nan
    summary = {
        "name": cfg.run.name or Path(cfg.run.out_dir).name, **outcome,
        "final_test_acc": final_acc, "final_test_loss": final_loss, "best_test_acc": best_acc,
        "best_step": int(ev["step"][best]) if best is not None else -1,
        **({"final_val_acc": float(ev["val_acc"][-1]), "final_val_loss": float(ev["val_loss"][-1]),
            "best_val_acc": float(ev["val_acc"][best]), "val_samples": len(w.val_set)}
           if held_out and best is not None else {}),
        # train.eval_train_samples: the train side of the gap at the last evaluation (and its sharpness)
        **({"final_train_acc": float(ev["train_acc"][-1]), "final_train_loss": float(ev["train_loss"][-1]),
            "final_sharpness": float(ev["sharpness"][-1])} if w.probe_set is not None and len(pick) else {}),
        "steps": cfg.train.steps, "world_size": w.comm.world_size, "global_batch": w.global_batch,
        "sync_mode": cfg.sync.mode, "period": cfg.sync.period, "dataset": cfg.data.name,
        "partition": cfg.data.partition, "model": cfg.model.name, "partition_sizes": w.partition_sizes,
        "wall_time_s": wall, "samples": samples, "samples_per_s": samples / wall if wall > 0 else 0.0,
        "eval_time_s": eval_s, "step_time_s": float(np.sum(log.f["steps"]["t_step"][:])),
        "mean_scale_factor": _mean_or_nan(log.f["steps"]["scale_factor"][:]),
        "samples_per_s_no_eval": samples / train_s if train_s > 0 else 0.0,
        "batching": cfg.batching.mode, "final_batch_sizes": [int(b) for b in sizes],
        "batch_changes": w.batcher.changes if w.batcher is not None else 0,
        "teacher_pretrain_steps": w.client.transform.teacher.pretrained_steps if w.client.transform.teacher else 0,
    }
    write_json_atomic(Path(cfg.run.out_dir) / "summary.json", summary, indent=2)
    return summary


class Progress:
    """tqdm bar on rank 0 (plain lines when tqdm is missing or stderr is not a terminal)."""

    def __init__(self, enabled: bool, total: int, initial: int, unit: str = "step"):
        self.bar = None
        self.unit = unit
        self.enabled = enabled
        self.total, self.n = total, initial
        self.every = max(1, total // 20)
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc="train", unit=unit, dynamic_ncols=True)

    def update(self, loss: float, acc: float | None, acc_name: str = "test_acc") -> None:
        """One step (or round); ``acc``: the latest evaluation's accuracy, of the set ``acc_name``
        names (val_acc with a validation split until the test set is measured at the end)."""
        self.n += 1
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}"}
            if acc is not None:
                post["acc"] = f"{acc:.4f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.n % self.every == 0 or self.n == self.total):
            acc_s = f" {acc_name} {acc:.4f}" if acc is not None else ""
            print(f"{self.unit} {self.n}/{self.total} loss {loss:.4f}{acc_s}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
