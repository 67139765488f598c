"""The training loop: one process or many through torchrun (DDP), resumable exactly from any checkpoint.

One *iteration* is one optimizer step; with ``train.accum_steps = A`` it consumes A micro-batches of
``train.batch_size`` samples per process. Schedules, logging, evaluation and checkpoints count iterations.
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from ..checkpoint import atomic_save, load_checkpoint, load_model_weights, remove_stale_temporaries
from ..config import Config, ConfigError, save_config, to_dict
from ..data.collate import CatchErrors, Collate
from ..data.datasets import build_dataset, ensure_synthetic
from ..data.keypoints import keypoint_layout, layout_section
from ..errors import DataError, RegposeError
from ..models import build_model
from ..models.backbones import frozen_uninitialised
from ..models.base import total_loss
from ..models.registry import get_method
from ..progress import progress
from . import dist
from .ema import ModelEMA
from .evaluator import evaluate_model, evaluation_dataset
from .logging import MetricWriter, format_seconds, get_logger
from .samplers import SeededDataset, TrainBatchSampler
from .schedule import (build_optimizer, iteration_schedule, lr_factor, scale_to_total_batch, set_lr,
                       total_batch_messages)

__all__ = ["Trainer", "train", "TrainingError", "seed_everything", "freeze_parameters"]


class TrainingError(RegposeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


_CHECKPOINTS = r"last|best|model_final|model_\d{7}"      # the .pth files a run writes
_RUN_FILES = re.compile(rf"(?:{_CHECKPOINTS})\.pth|metrics\.jsonl|results_.*\.json")


def _diff(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old, new) of every value that differs between two nested config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def freeze_parameters(model: nn.Module, patterns: list[str]) -> None:
    """``train.freeze``: parameters whose name matches any regex pattern (``re.search``) stop training. A pattern
    matching nothing (a typo would train what was meant to stay frozen) or one leaving nothing to train is an
    error."""
    for i, pattern in enumerate(patterns):
        rx = re.compile(pattern)
        matched = [p.requires_grad_(False) for name, p in model.named_parameters() if rx.search(name)]
        if not matched:
            raise ConfigError(f"train.freeze[{i}]: pattern {pattern!r} matches no parameter of the model")
    if patterns and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("train.freeze: every parameter is frozen, nothing would train")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "numpy_gauss": [int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_gauss"][0], state["numpy_gauss"][1]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _worker_init(_):
    # Each loader worker computes on one thread: the main process owns the cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the main process stops the run at the next iteration boundary and
    # shuts the workers down; a worker dying first would end the run without that save. (SIGTERM keeps its default:
    # multiprocessing stops workers with it at exit, so a worker ignoring it would hang the exit.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import cv2
        cv2.setNumThreads(0)
    except ImportError:  # pragma: no cover
        pass


class _StopRequest:
    """While training, SIGINT (Ctrl-C) and SIGTERM (``kill``, torchrun stopping its processes) ask the loop to stop
    after the current iteration with ``last.pth`` saved, so the run resumes exactly; a second signal stops at once.
    (A SIGTERM sent to the whole process group also kills the loader workers, which ends the run unsaved.)"""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class Trainer:
    """Builds model, data, optimizer from a :class:`Config` and runs the loop; see :func:`train`."""

    def __init__(self, cfg: Config, resume: bool = False, device: str = "auto", train_dataset=None,
                 val_dataset=None, overwrite: bool = False):
        self.device = dist.init_distributed(device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.main = self.rank == 0
        self.out = Path(cfg.output_dir)
        self.log = get_logger()
        self._stop = _StopRequest()
        problem = self._claim_folder(resume, overwrite) if self.main else None
        problem = dist.all_gather_object(problem)[0]
        if problem:
            raise TrainingError(problem)
        # the run's own train settings: the recipe's, moved to this total batch if batch_scaling asks for it
        self.cfg, self.tc = cfg, scale_to_total_batch(cfg.train, self.world)
        if cfg.data.keypoints.from_annotations:   # the saved config and checkpoints hold the layout itself
            cfg.data.keypoints = dataclasses.replace(cfg.data.keypoints, **layout_section(keypoint_layout(cfg.data)))
        batch_line, batch_warning = total_batch_messages(cfg.train, self.tc, self.world)
        if self.main:
            self.log.info(batch_line)
            if batch_warning:
                self.log.warning(batch_warning)
        if self.tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.spec = get_method(cfg.method)

        # Data first (rank 0 generates synthetic splits while the others wait).
        if train_dataset is None:
            if self.main:
                for split in (cfg.data.train, cfg.data.val):
                    if split.synthetic.num_images > 0:
                        ensure_synthetic(split, cfg.data.format, keypoint_layout(cfg.data))
            dist.barrier()
            train_dataset = build_dataset(cfg, "train", self.spec.transform(cfg, True), self.spec.family)
            if self.tc.skip_corrupt_images and hasattr(train_dataset, "skip_corrupt"):
                train_dataset.skip_corrupt = True
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        if val_dataset is None and self._has_val():  # a bad validation split stops the run now, not at evaluation

            self.val_dataset = evaluation_dataset(cfg, "val")
        self.total_iters, self.steps = iteration_schedule(self.tc, len(train_dataset), self.world)

        # Model: identical initialisation on every rank; rank 0 first, so trunk weights download once.
        model = self._build_model(resume)
        if self.world > 1 and self.tc.sync_bn:
            if self.device.type == "cuda":
                model = dist.convert_sync_batchnorm(model)
            elif self.main:
                self.log.warning("train.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only): on CPU "
                                 "each of the %d processes normalises with its own batch statistics", self.world)
        self.model = model.to(self.device)
        # Independent random streams per process for whatever the model draws while training (dropout, noise).
        seed_everything(self.tc.seed + 1000 * self.rank)
        self.optimizer = build_optimizer(self.model, self.tc)
        self.ddp = (DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                        find_unused_parameters=True) if self.world > 1 else self.model)
        cuda = self.device.type == "cuda"
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.tc.amp) if cuda else None
        if self.tc.amp != "none" and not cuda:
            self.log.info("train.amp=%s applies on CUDA only; training in fp32 on CPU", self.tc.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and self.tc.amp == "fp16")
        self.ema = ModelEMA(self.model, self.tc.ema.decay, self.tc.ema.warmup) if self.tc.ema.enabled else None
        self.start_iter, self.best = 0, -math.inf
        if resume:
            self._resume()
        elif self.main:
            if overwrite:
                self._remove_previous_run()
            save_config(cfg, self.out / "config.yaml")
        self.writer = MetricWriter(self.out, self.tc.tensorboard, enabled=self.main,
                                   resume_from=self.start_iter if resume else None)
        if self.writer.dropped:
            self.log.info("metrics.jsonl: dropped %d records written after iteration %d by the interrupted run",
                          self.writer.dropped, self.start_iter)

    # ------------------------------------------------------------------------------------------------------
    def _previous_run(self) -> list[str]:
        return sorted(p.name for p in self.out.iterdir() if _RUN_FILES.fullmatch(p.name)) if self.out.is_dir() else []

    def _claim_folder(self, resume: bool, overwrite: bool) -> str | None:
        """Refuse to mix two runs in one folder (rank 0), then remove the temporaries of checkpoint writes a kill
        interrupted. Returns the one-line problem, if any."""
        if resume and overwrite:
            return "--resume continues the run in the folder, --overwrite starts it over: choose one"
        previous = self._previous_run()
        if previous and not (resume or overwrite):
            shown = ", ".join(previous[:3]) + (", ..." if len(previous) > 3 else "")
            return (f"{self.out} already holds a training run ({shown}): continue it with --resume, start over with "
                    f"--overwrite, or choose another --output-dir")
        removed = remove_stale_temporaries(self.out, _CHECKPOINTS) if self.out.is_dir() else []
        if removed:
            self.log.info("removed %d temporary files left in %s by interrupted checkpoint writes", len(removed),
                          self.out)
        return None

    def _remove_previous_run(self) -> None:
        previous = self._previous_run()
        for name in previous:
            (self.out / name).unlink()
        shutil.rmtree(self.out / "tensorboard", ignore_errors=True)
        if previous:
            self.log.info("--overwrite: removed the previous run's %s from %s", ", ".join(previous), self.out)

    def _build_model(self, resume: bool) -> nn.Module:
        """The model with its trunk initialisation (``model.backbone.weights``), ``train.init_weights`` and
        ``train.freeze`` applied; refuses to freeze trunk layers no file initialised. A resumed run takes every
        weight from its checkpoint, so it reads (and downloads) no initialisation."""
        if not self.main:
            dist.barrier()
        seed_everything(self.tc.seed)
        model = build_model(self.cfg, init_trunk=not resume)
        if self.main:
            dist.barrier()
        loaded: set[str] = set()
        if self.tc.init_weights and not resume:
            report = load_model_weights(model, self.tc.init_weights, strict=False)
            self.log.info("train.init_weights=%s", report.summary())
            loaded = set(report.loaded)
        freeze_parameters(model, self.tc.freeze)
        frozen = [] if resume else frozen_uninitialised(model, loaded)
        if frozen:
            raise ConfigError(
                f"{len(frozen)} frozen trunk tensors (model.backbone.norm / freeze_at, train.freeze) were never "
                f"initialised from a file, e.g. {frozen[0]}: set model.backbone.weights (or train.init_weights), "
                f"or allow it with model.backbone.allow_random_frozen=true")
        return model

    # ------------------------------------------------------------------------------------------------------
    def _state(self, iteration: int) -> dict:
        rng = dist.all_gather_object(_rng_state())
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema else {},
            "iteration": iteration, "best": self.best, "rng": rng, "world_size": self.world,
            "config": to_dict(self.cfg),
        }

    def save(self, name: str, iteration: int) -> Path | None:
        state = self._state(iteration)  # collective: every rank takes part
        if not self.main:
            return None
        path = self.out / name
        atomic_save(state, path)
        return path

    def _resume(self) -> None:
        path = self.out / "last.pth"
        if not path.is_file():
            start = "start over with --overwrite" if self._previous_run() else "train without --resume to start"
            raise TrainingError(f"--resume: no checkpoint at {path} ({start})")
        state = load_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "scaler", "iteration", "best", "rng") if k not in state]
        if missing:
            raise TrainingError(f"{path} is not a training checkpoint (it lacks {', '.join(missing)}); weights alone "
                                f"(model_final.pth, converted checkpoints) start a new run through train.init_weights")
        self._report_changes(state.get("config"))
        before = (state.get("config") or {}).get("train", {}).get("optimizer", self.tc.optimizer)
        if before != self.tc.optimizer:
            raise TrainingError(f"{path}: train.optimizer was {before!r}, now {self.tc.optimizer!r}: that state cannot "
                                f"be resumed (start a new run from the weights with train.init_weights)")
        load_model_weights(self.model, state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:
            raise TrainingError(f"{path}: the optimizer state does not fit this config ({e}); train.lr_rules, "
                                f"train.freeze or the model changed since the checkpoint") from None
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.start_iter, self.best = int(state["iteration"]), float(state["best"])
        if int(state.get("world_size", 1)) == self.world:
            _set_rng_state(state["rng"][self.rank])
        else:
            self.log.warning("resuming with %d processes (checkpoint had %d): data order is kept, random "
                             "streams of the model are re-seeded", self.world, state.get("world_size"))
        self.log.info("resumed from %s at iteration %d", path, self.start_iter)

    def _report_changes(self, saved: dict | None) -> None:
        """Resuming with another config is allowed (e.g. more iterations) but never silent."""
        if not self.main or not isinstance(saved, dict):
            return
        changed = [f"{k}: {old!r} -> {new!r}" for k, old, new in _diff(saved, to_dict(self.cfg))]
        if changed:
            self.log.warning("resuming with a config that differs from the checkpoint's: %s%s", "; ".join(changed[:6]),
                             f"; ... (+{len(changed) - 6})" if len(changed) > 6 else "")

    def _loader(self) -> DataLoader:
        sampler = TrainBatchSampler(len(self.train_dataset), self.tc.batch_size, self.rank, self.world,
                                    self.tc.seed, start=self.start_iter * self.tc.accum_steps,
                                    total=self.total_iters * self.tc.accum_steps)
        workers = self.tc.num_workers
        return DataLoader(SeededDataset(CatchErrors(self.train_dataset)), batch_sampler=sampler, num_workers=workers,
                          collate_fn=Collate(getattr(self.model, "size_divisibility", 1)),
                          worker_init_fn=_worker_init if workers else None,
                          persistent_workers=workers > 0, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if workers else None,
                          # own generator: creating the iterator must not consume the global torch RNG
                          generator=torch.Generator().manual_seed(self.tc.seed))

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, list[dict]]:
        images = batch["images"].to(self.device, non_blocking=True)
        targets = [{k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in batch["targets"]]
        return images, targets

    def evaluate(self, iteration: int) -> dict | None:
        model = self.ema.module if (self.ema and self.tc.ema.eval_with_ema) else self.model
        metrics, _ = evaluate_model(self.cfg, model, self.device, "val", self.out, self.val_dataset)
        if metrics is not None:
            self.writer.write(metrics, iteration, prefix="val")
            self.log.info("iter %d: %s", iteration, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        self.model.train()
        return metrics

    def _has_val(self) -> bool:
        v = self.cfg.data.val
        return self.val_dataset is not None or bool(v.ann_files) or v.synthetic.num_images > 0

    # ------------------------------------------------------------------------------------------------------
    def _should_stop(self, t_start: float) -> tuple[bool, bool]:
        """(time budget spent, stop signal received), agreed by every process (so all stop at one iteration)."""
        over = self.tc.max_minutes > 0 and time.time() - t_start > self.tc.max_minutes * 60
        if self.world == 1:
            return over, self._stop.signal is not None
        flags = torch.tensor([float(over), float(self._stop.signal is not None)], device=self.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def train(self) -> dict | None:
        """Run the loop; SIGINT / SIGTERM end it at the next iteration boundary with ``last.pth`` saved."""
        with self._stop:
            return self._loop()

    def _loop(self) -> dict | None:
        tc, main = self.tc, self.main
        self.model.train()
        loader_iter = iter(self._loader())
        bar = progress(total=self.total_iters, initial=self.start_iter, desc="train", unit="it", disable=not main)
        sums: dict[str, float] = {}
        count, t_last, data_time = 0, time.time(), 0.0
        metrics = None
        last_good = self.out / "last.pth"
        t_start = time.time()
        end_iter = self.total_iters
        for it in range(self.start_iter, self.total_iters):
            set_lr(self.optimizer, lr_factor(it, tc, self.total_iters, self.steps))
            terms: dict[str, float] = {}
            for micro in range(tc.accum_steps):
                t0 = time.time()
                batch = next(loader_iter)
                if batch["errors"]:  # one line, whether the sample failed in a loader worker or in this process
                    raise DataError(f"{batch['errors'][0].message} (train.skip_corrupt_images=true skips unreadable "
                                    f"training images)")
                images, targets = self._to_device(batch)
                data_time += time.time() - t0
                sync = micro == tc.accum_steps - 1 or self.world == 1
                ctx = nullcontext() if sync else self.ddp.no_sync()
                with ctx:
                    with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        losses = self.ddp(images, targets)
                    loss = total_loss(losses)
                    finite = torch.isfinite(loss.detach()).float()
                    if self.world > 1:
                        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
                    if finite.item() < 1:
                        bad = {k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.numel() == 1}
                        shown = ", ".join(f"{k}={v:.4g}" for k, v in bad.items())
                        keep = f"last good checkpoint: {last_good}" if last_good.is_file() else "no checkpoint yet"
                        raise TrainingError(f"non-finite loss at iteration {it} ({shown}); stopped, {keep}")
                    self.scaler.scale(loss / tc.accum_steps).backward()
                for k, v in losses.items():
                    if torch.is_tensor(v) and v.numel() == 1:
                        terms[k] = terms.get(k, 0.0) + float(v.detach()) / tc.accum_steps
            if tc.clip_grad_norm > 0:
                self.scaler.unscale_(self.optimizer)
                gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad_norm)
                terms["grad_norm"] = float(gnorm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)

            terms["loss"] = total_loss(terms)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            done = it + 1
            bar.update(1)
            if main:
                bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            if done % tc.log_period == 0 or done == self.total_iters:
                avg = dist.reduce_mean({k: v / count for k, v in sums.items()})
                elapsed = time.time() - t_last
                rec = {**avg, "lr": self.optimizer.param_groups[0]["lr"], "iter_time": elapsed / count,
                       "data_time": data_time / count}
                eta = (self.total_iters - done) * elapsed / count
                self.writer.write(rec, done)
                if main and (done % (tc.log_period * 10) == 0 or done == self.total_iters):
                    self.log.info("iter %d/%d loss %.4f lr %.2e (%.3fs/it, eta %s)", done, self.total_iters,
                                  avg["loss"], rec["lr"], rec["iter_time"], format_seconds(eta))
                sums, count, t_last, data_time = {}, 0, time.time(), 0.0
            periodic = tc.checkpoint_period > 0 and done % tc.checkpoint_period == 0
            evaluate = tc.eval_period > 0 and done % tc.eval_period == 0 and done != self.total_iters
            if evaluate and self._has_val():
                metrics = self.evaluate(done)
                score = (metrics or {}).get(tc.best_metric)
                improved = dist.all_gather_object(score)[0]
                if improved is not None and improved > self.best:
                    self.best = float(improved)
                    self.save("best.pth", done)
            if periodic or evaluate:
                self.save("last.pth", done)
                if periodic:
                    self.save(f"model_{done:07d}.pth", done)
            if done < self.total_iters:
                over, stop = self._should_stop(t_start)
                if stop:  # SIGINT / SIGTERM: the state between two iterations resumes exactly
                    if not (periodic or evaluate):
                        self.save("last.pth", done)
                    if main:
                        bar.leave = False
                        bar.close()
                        self.log.info("%s at iteration %d/%d: saved %s (continue with --resume)", self._stop.signal,
                                      done, self.total_iters, last_good)
                    raise KeyboardInterrupt
                if over:
                    self.log.info("time budget of %.1f min reached at iteration %d/%d", tc.max_minutes, done,
                                  self.total_iters)
                    end_iter = done
                    break
        bar.close()
        final = self.save("last.pth", end_iter)
        if main:  # before the final evaluation: a failure there must not cost the trained weights
            weights = self.ema.module.state_dict() if (self.ema and tc.ema.eval_with_ema) else self.model.state_dict()
            atomic_save({"model": weights, "config": to_dict(self.cfg), "iteration": end_iter},
                        self.out / "model_final.pth")
        if self._has_val():
            metrics = self.evaluate(end_iter)
            score = dist.all_gather_object((metrics or {}).get(tc.best_metric))[0]
            if score is not None and score > self.best:
                self.best = float(score)
                self.save("best.pth", end_iter)
        if main:
            self.log.info("done: %s (final weights %s)", final, self.out / "model_final.pth")
        self.writer.close()
        return metrics


def train(cfg: Config, resume: bool = False, device: str = "auto", overwrite: bool = False, **kw) -> dict | None:
    """Train (or resume) the run a config describes; returns the final validation metrics on rank 0. A folder that
    already holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (remove it and start over)."""
    try:
        return Trainer(cfg, resume=resume, device=device, overwrite=overwrite, **kw).train()
    finally:
        dist.cleanup()
