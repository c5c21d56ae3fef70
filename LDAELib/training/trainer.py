"""The loop every gradient-descent stage shares: batches, AdamW, EMA, logs, checkpoints, resume, DDP.

A stage is an :class:`Objective`: a module whose forward returns the loss of a batch, the batches
for given dataset items and step, and fixed batches to measure progress on. :func:`run_stage` does
the rest, identically for the autoencoder, the DDPM and the representation stage:

* data order from :class:`~.distributed.StepSampler`, every random draw of step s derived from
  (seed, stage, s, item) and dropout seeded per (seed, stage, s, rank): a resumed run repeats the
  uninterrupted one bit for bit on the same machine and thread count;
* AdamW, learning-rate warm-up/schedule, gradient clipping, EMA after every optimizer step;
* losses averaged over the log interval and the processes, to ``log.jsonl`` and ``log.csv``
  (rank 0); the EMA weights' loss on fixed batches before the first step, every ``val_interval``
  steps, at checkpoints and at the end;
* checkpoints every ``checkpoint_interval`` steps and at the end (rank 0 writes, all wait);
  ``final.json`` marks the stage complete, and a stage already complete is not trained again.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import LDAEError
from .checkpoint import clean_temporaries, final_checkpoint, latest_checkpoint, load_checkpoint, mark_final, read_final, save_checkpoint
from .config import StageConfig
from .distributed import DistContext, StepSampler, derived_seed, wrap
from .ema import EMA

AUXILIARY = "auxiliary"
"""Key of the auxiliary models' optimizer state inside a checkpoint's optimizer file."""


class Objective:
    """One training stage's maths. Subclasses set ``name``, ``stage_id`` and ``module``.

    ``module`` is the nn.Module that DDP wraps; its forward takes the tensors of ``batch()`` as
    keyword arguments and returns ``(loss, parts)``: the scalar loss of this process's share of the
    batch and a dict of detached scalar tensors to log.
    """

    name: str = "stage"
    stage_id: int = 0
    module: nn.Module

    def n_items(self) -> int:
        raise NotImplementedError

    def batch(self, items: list[int], step: int) -> dict[str, torch.Tensor]:
        """Tensors for dataset items ``items`` (indices into the training items) at ``step``."""
        raise NotImplementedError

    def fixed_batches(self) -> dict[str, dict[str, torch.Tensor]]:
        """Batches with fixed noise to compare weights on: {"train": …, "val": …} (val may be absent)."""
        return {}

    def fixed_from(self, make, train_rows: list[int], val_rows: list[int]) -> dict[str, dict[str, torch.Tensor]]:
        """``fixed_batches`` made by ``make(rows, -1)`` (step −1: no augmentation, fixed draws) from the
        first ``config.val_volumes`` training and validation rows."""
        n = self.config.val_volumes
        out = {"train": make(train_rows[:n], -1)}
        if val_rows:
            out["val"] = make(val_rows[:n], -1)
        return out

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def set_train_mode(self, module: nn.Module) -> None:
        module.train()

    def upstream(self) -> dict:
        """What this stage was trained on (hashes of earlier stages' weights); resuming needs the same."""
        return {}

    def after_step(self, step: int) -> dict[str, torch.Tensor]:
        """Called after every optimizer step of ``module`` (under the stage's autocast): the update of an
        auxiliary model the stage trains beside it (the decoder stage's discriminator). Returns detached
        scalars to log, the same keys every step."""
        return {}

    def auxiliary_state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict | None]:
        """Weight groups and optimizer state of the auxiliary models, for checkpoints (never shipped)."""
        return {}, None

    def load_auxiliary_state(self, groups: dict[str, dict[str, torch.Tensor]], optimizer: dict | None) -> None:
        """Restore what :meth:`auxiliary_state` saved; ``groups`` are all the checkpoint's groups."""


@dataclass
class StageResult:
    name: str
    steps: int
    model: nn.Module
    ema: nn.Module
    checkpoint: Path | None
    resumed_from: int | None = None
    skipped: bool = False
    interrupted: bool = False
    seconds_per_step: float | None = None
    last_losses: dict = field(default_factory=dict)


class TrainLog:
    """Append-only logs of one stage: ``log.jsonl`` (one JSON object per line) and ``log.csv``
    (long format: step, epoch, split, metric, value, time_s). On resume, lines after the
    checkpoint's step are dropped so the logs read like one uninterrupted run."""

    CSV_HEADER = ["step", "epoch", "split", "metric", "value", "time_s"]

    def __init__(self, stage_dir: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.jsonl, self.csv = stage_dir / "log.jsonl", stage_dir / "log.csv"
        if not enabled:
            return
        stage_dir.mkdir(parents=True, exist_ok=True)
        keep = resume_step if resume_step is not None else -1
        if self.jsonl.is_file():
            lines = [ln for ln in self.jsonl.read_text().splitlines() if ln.strip() and _step_of_json(ln) <= keep]
            self.jsonl.write_text("".join(ln + "\n" for ln in lines))
        if self.csv.is_file():
            rows = list(csv.reader(io.StringIO(self.csv.read_text())))
            body = [r for r in rows[1:] if r and _int(r[0]) <= keep]
            self._write_csv([self.CSV_HEADER, *body], "w")
        else:
            self._write_csv([self.CSV_HEADER], "w")

    def _write_csv(self, rows, mode) -> None:
        with open(self.csv, mode, newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)

    def write(self, step: int, epoch: float, split: str, metrics: dict, **extra) -> None:
        if not self.enabled:
            return
        now = time.time()
        row = {"step": step, "epoch": round(epoch, 4), "split": split, **{k: _num(v) for k, v in metrics.items()}, **extra, "time": round(now, 3)}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv([[step, f"{epoch:.4f}", split, k, f"{_num(v):.6g}", f"{now:.3f}"] for k, v in metrics.items()], "a")


def _num(v) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _int(s) -> int:
    try:
        return int(s)
    except ValueError:
        return 1 << 62


def _step_of_json(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 1 << 62))
    except ValueError:
        return 1 << 62


@torch.inference_mode()
def evaluate(objective: Objective, module: nn.Module, batches: dict | None = None) -> dict[str, float]:
    """Loss of ``module`` (eval mode) on the objective's fixed batches → {"train_fixed_loss", "val_loss"}."""
    batches = objective.fixed_batches() if batches is None else batches
    was = module.training
    module.eval()
    out = {}
    for split, b in batches.items():
        loss, _ = module(**b)
        out["val_loss" if split == "val" else f"{split}_fixed_loss"] = float(loss)
    module.train(was)
    return out


def to_channels_last_3d(module: nn.Module) -> nn.Module:
    """The weights of every Conv3d in channels-last layout (other layers keep theirs)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return module


def _layout(batch: dict[str, torch.Tensor], config: StageConfig) -> dict[str, torch.Tensor]:
    if not config.channels_last:
        return batch
    return {k: v.contiguous(memory_format=torch.channels_last_3d) if v.dim() == 5 else v for k, v in batch.items()}


def _autocast(config: StageConfig, device: torch.device):
    if config.precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def run_stage(
    objective: Objective,
    config: StageConfig,
    stage_dir: Path,
    ctx: DistContext,
    *,
    progress: bool = True,
    stop_at: int | None = None,
    extra_state: dict | None = None,
) -> StageResult:
    """Train (or resume, or skip when complete) one stage; returns the trained and the EMA module.

    ``stop_at``: stop after that many optimizer steps without finishing the stage (what an
    interruption leaves: the checkpoints written so far), for tests and time-boxed runs.
    """
    stage_dir = Path(stage_dir)
    if ctx.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        clean_temporaries(stage_dir)
    ctx.barrier()
    sampler = StepSampler(objective.n_items(), config.batch_size, ctx, derived_seed(config.seed, objective.stage_id, 0xDA7A))
    total = config.total_steps(sampler.steps_per_epoch)
    model = objective.module
    if config.channels_last:
        to_channels_last_3d(model)
    ema = EMA(model, config.ema_decay, config.ema_warmup)
    upstream = objective.upstream()

    fin = read_final(stage_dir)
    if fin is not None and int(fin.get("step", -1)) >= total and fin.get("upstream", {}) == upstream:
        ck = load_checkpoint(final_checkpoint(stage_dir), with_optimizer=False)
        model.load_state_dict(ck.groups["model"])
        ema.load_state_dict(ck.groups["ema"], ck.state.get("ema_updates", ck.step))
        return StageResult(objective.name, ck.step, model, ema.module, ck.path, skipped=True, last_losses=fin.get("losses", {}))

    params = objective.parameters()
    if not params:
        raise LDAEError(f"stage {objective.name}: nothing to train")
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start, resumed = 0, None
    ck_path = latest_checkpoint(stage_dir)
    if ck_path is not None:
        ck = load_checkpoint(ck_path)
        if ck.state.get("upstream", {}) != upstream:
            raise LDAEError(
                f"{stage_dir} holds checkpoints trained on other weights of an earlier stage (it was retrained since); "
                f"delete {stage_dir} to train this stage again on the new weights"
            )
        if ck.state.get("batch_size") not in (None, config.batch_size):
            raise LDAEError(f"{ck_path} was trained with batch_size {ck.state.get('batch_size')}, the recipe now says {config.batch_size}; keep the batch size to resume, or delete {stage_dir}")
        model.load_state_dict(ck.groups["model"])
        ema.load_state_dict(ck.groups["ema"], ck.state.get("ema_updates", ck.step))
        aux_opt = None
        if ck.optimizer is not None:
            aux_opt = ck.optimizer.pop(AUXILIARY, None)
            opt.load_state_dict(ck.optimizer)
        objective.load_auxiliary_state(ck.groups, aux_opt)
        start = resumed = ck.step
    log = TrainLog(stage_dir, ctx.is_main, resumed)
    ddp = wrap(model, ctx)
    device = ctx.device

    def state(step: int, losses: dict) -> dict:
        return {"stage": objective.name, "config": config.to_dict(), "batch_size": config.batch_size, "total_steps": total,
                "world_size": ctx.world_size, "ema_updates": ema.updates, "upstream": upstream,
                "losses": losses, **(extra_state or {})}

    def save(step: int, losses: dict) -> Path:
        groups, aux_opt = objective.auxiliary_state()
        if {"model", "ema"} & set(groups):
            raise LDAEError(f"stage {objective.name}: an auxiliary weight group may not be called 'model' or 'ema'")
        opt_state = opt.state_dict()
        if aux_opt is not None:
            opt_state = {**opt_state, AUXILIARY: aux_opt}
        return save_checkpoint(stage_dir, step, {"model": model.state_dict(), "ema": ema.state_dict(), **groups},
                               opt_state, state(step, losses), config.keep_checkpoints)

    def validate(step: int) -> dict:
        if not ctx.is_main:
            return {}
        m = evaluate(objective, ema.module)
        if m:
            log.write(step, step / sampler.steps_per_epoch, "ema", m)
        return m

    if start == 0:
        validate(0)
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=objective.name, unit="step", file=sys.stderr, dynamic_ncols=True)
    sums: dict[str, torch.Tensor] = {}
    n_sum, step_times, last = 0, [], {}
    interrupted = False
    try:
        for step in range(start, total):
            if stop_at is not None and step >= stop_at:
                interrupted = True
                break
            t0 = time.perf_counter()
            items = sampler.indices(step)
            batch = _layout(objective.batch(items, step), config)
            torch.manual_seed(derived_seed(config.seed, objective.stage_id, step, ctx.rank, 0xD0))
            lr = config.lr_at(step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            objective.set_train_mode(model)
            with _autocast(config, device):
                loss, parts = ddp(**batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            else:
                gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            if not torch.isfinite(gnorm):
                raise LDAEError(f"stage {objective.name}: the loss or its gradient is not finite at step {step + 1}; lower lr or check the data (the last checkpoint is kept)")
            opt.step()
            ema.update(model)
            with _autocast(config, device):
                aux = objective.after_step(step)
            for k, v in {"loss": loss.detach(), **parts, **aux, "grad_norm": gnorm.detach()}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n_sum += 1
            done = step + 1
            step_times.append(time.perf_counter() - t0)
            if done % config.log_interval == 0 or done == total:
                keys = sorted(sums)
                avg = ctx.mean(torch.stack([sums[k] for k in keys]) / n_sum)
                last = {k: float(v) for k, v in zip(keys, avg)}
                sums, n_sum = {}, 0
                log.write(done, done / sampler.steps_per_epoch, "train", last, lr=lr, sec_per_step=round(statistics.median(step_times[-config.log_interval:]), 4))
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4g}", refresh=False)
            if bar is not None:
                bar.update(1)
            at_checkpoint = config.checkpoint_interval and done % config.checkpoint_interval == 0 and done != total
            if at_checkpoint or (config.val_interval and done % config.val_interval == 0 and done != total):
                m = validate(done)
                if at_checkpoint:
                    if ctx.is_main:
                        save(done, {**last, **m})
                    ctx.barrier()
    finally:
        if bar is not None:
            bar.close()
    sps = statistics.median(step_times) if step_times else None
    if interrupted:
        return StageResult(objective.name, start + len(step_times), model, ema.module, latest_checkpoint(stage_dir), resumed, interrupted=True, seconds_per_step=sps)
    done = max(total, start)
    path = None
    if ctx.is_main:
        m = validate(done) if done != start or start == 0 else {}
        losses = {**last, **m}
        path = save(done, losses)
        mark_final(stage_dir, path, {"step": done, "upstream": upstream, "losses": losses, "seconds_per_step": sps})
    ctx.barrier()
    return StageResult(objective.name, done, model, ema.module, path, resumed, seconds_per_step=sps, last_losses=last)


def module_fingerprint(stage_dir: Path) -> dict:
    """{"stage": name, "sha256": …} of a completed stage's final weights (what later stages were trained on)."""
    p = final_checkpoint(stage_dir)
    if p is None:
        return {}
    st = json.loads((p / "state.json").read_text())
    # A stage loaded from a hand-over (handover.py) keeps the SHA-256 of the float32 weights it was made from.
    sha = (st.get("handover") or {}).get("weights_sha256") or st["files"]["weights.safetensors"]["sha256"]
    return {"stage": Path(stage_dir).name, "checkpoint": p.name, "sha256": sha}

