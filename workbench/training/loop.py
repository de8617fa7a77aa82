"""The training loop shared by every recipe: paired initialisation, data order, optimiser,
schedule, per-epoch history, checkpoints, resume and the model cache.

Pairing: the models of one architecture are built after seeding with the study seed and
the architecture (not the recipe), so they start from identical weights; the batch order
and augmentation of epoch e are drawn from a generator seeded by (study seed, e), so every
recipe sees the same batches in the same order.

Resume: after every epoch the whole state (weights, optimiser, schedule, recipe state,
history) is written atomically to the store. Every epoch reseeds all random streams from
(seed, epoch), so a run resumed after a kill continues exactly as the uninterrupted run
would have, and ends with the same weights and metrics (bit for bit on the CPU).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import distributed
from ..attacks import pgd
from ..attacks.base import global_batch_rows
from ..data import Augmentation, DataConfig, DataSplits, iterate_batches
from ..data.base import stratified_subset
from ..data.stream import check_unchanged
from ..errors import CheckpointError, TrainingError
from ..models import WorkbenchModel, create_model
from ..progress import QUIET, Progress
from ..state import eval_mode, preserved_rng, seed_global_rng, seeded_rng
from ..config import ModelSpec, TrainConfig
from ..seeds import derive_seed
from ..store import ModelStore
from .base import EpochReport, Recipe
from .jobs import TrainJob, recipe_class

log = logging.getLogger("workbench")


def data_identity(cfg: DataConfig, data: DataSplits | None = None) -> dict[str, Any]:
    """The part of the data section that determines training data (not the test subset,
    not whether downloads are allowed, not where a named data set is stored).

    A data set that is not fixed by its name (``imagefolder``) is identified by the
    digest of its contents when the loaded ``data`` is given (moving or copying the files
    keeps the key; changing one image changes it), else by its root path.
    """
    # how the images are read (streamed or in memory, by how many workers) is not what they are;
    # who decodes them is, when it is the GPU (nvjpeg's pixels differ from libjpeg-turbo's),
    # and only then, so that keys of CPU-decoded data stay as they were before data.decode
    ident = cfg.model_dump(mode="json", exclude={"download", "limit_test", "stream", "workers", "decode"})
    if (data.decode if data is not None else cfg.decode) == "gpu":
        ident["decode"] = "gpu"
    if data is not None and data.digest:
        ident.pop("root")
        ident["content"] = data.digest
    elif cfg.name != "imagefolder":
        ident.pop("root")
    return ident


def cycle_momentum(opt: torch.optim.Optimizer, t: TrainConfig) -> None:
    """Set SGD momentum against the current learning rate (``train.onecycle_momentum``):
    high at lr 0, low at the peak, linear in between, as torch's CyclicLR. A function of
    the learning rate alone, so a resumed run sets the same values."""
    if t.onecycle_momentum is None:
        return
    low, high = t.onecycle_momentum
    for group in opt.param_groups:
        group["momentum"] = high - (high - low) * min(1.0, group["lr"] / t.lr)


@dataclass
class TrainedModel:
    id: str
    key: str
    model: WorkbenchModel
    history: pd.DataFrame
    meta: dict[str, Any]
    cached: bool
    resumed_from_epoch: int | None = None
    seconds: float = 0.0


@dataclass
class FitContext:
    job: TrainJob
    data: DataSplits
    store: ModelStore
    device: torch.device
    progress: Progress = QUIET
    retrain: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def _check_index(self) -> torch.Tensor:
        n = max(self.job.train_config.batch_size, 256)
        return stratified_subset(self.data.train_y, n, self.job.spec.seed, "overfit-check")

    def check_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One fixed, un-augmented, class-stratified training batch (the catastrophic-overfitting check)."""
        return self.data.train_x[self._check_index], self.data.train_y[self._check_index]

    def dependency(self, role: str) -> nn.Module:
        """The trained model this job's recipe declared as a dependency under ``role``.

        The planner trains dependencies first, so this normally reads the store; a job run
        on its own (e.g. a cluster job) trains its dependency here. Never with ``retrain``:
        the planner already retrained it if asked to."""
        dep = self.job.dependencies()[role]
        return fit(dep, self.data, self.store, self.device, progress=self.progress).model


def build_model(spec: ModelSpec, data: DataSplits, device: torch.device | str = "cpu") -> WorkbenchModel:
    """Seeded by (study seed, architecture): every recipe of an architecture starts from
    the same weights. The initialisation draws from torch's global generator (as every
    ``nn.Module`` does), seeded inside :func:`seeded_rng`: the caller's RNG state is kept."""
    with seeded_rng(derive_seed(spec.seed, "init", spec.arch.name, dict(spec.arch.options))):
        model = create_model(
            spec.arch.name,
            num_classes=data.num_classes,
            in_shape=data.in_shape,
            mean=data.mean,
            std=data.std,
            **dict(spec.arch.options),
        )
    return model.to(device)


def _autocast(device: torch.device, precision: str):
    """The training forward's precision. bf16 autocasts on CUDA and on the CPU alike (it
    used to be ignored on the CPU, which silently trained in float32). On this machine's
    AVX512-BF16 CPU a width-16 PreActResNet-18 trained 1.6x faster in bf16 with the same
    accuracy; a CPU without native bf16 emulates it slowly (a warning says so)."""
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _warn_slow_bf16(device: torch.device, precision: str, job_id: str) -> None:
    if precision != "bf16" or device.type != "cpu":
        return
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    if not native:
        log.warning("%s: train.precision bf16 on a CPU without native bf16 support is emulated and slow; "
                    "use fp32 here", job_id)


def _make_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
            weight_decay=t.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(t: TrainConfig, step: int, total: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` of ``total`` (per-batch schedule)."""
    p = step / max(total, 1)
    if t.schedule == "onecycle":  # Wong et al.'s cyclic schedule: 0 → peak → 0, piecewise linear
        return p / t.onecycle_pct if p < t.onecycle_pct else max(0.0, (1 - p) / (1 - t.onecycle_pct))
    warm = t.warmup_epochs / t.epochs if t.epochs else 0.0
    if warm and p < warm:
        return (step + 1) / max(1, warm * total)
    if t.schedule == "constant":
        return 1.0
    if t.schedule == "cosine":
        q = (p - warm) / max(1e-12, 1 - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, q)))
    return t.gamma ** sum(p >= m for m in t.milestones)  # step


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    correct = torch.zeros((), device=x.device)
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(y), batch):
            correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()
    return correct.item() / max(1, len(y))


def fit(
    job: TrainJob,
    data: DataSplits,
    store: ModelStore,
    device: torch.device | str = "cpu",
    *,
    progress: Progress = QUIET,
    retrain: bool = False,
    lock: bool = True,
) -> TrainedModel:
    """Train one model, or load it from the store; resume from its last checkpoint.

    ``lock=False``: take no ``flock`` on the store entry (cluster jobs on NFS), only the
    store's claim (:meth:`ModelStore.claim`), so a resubmitted job waits for one still
    training the model, or takes over from one that died."""
    device = torch.device(device)
    key = job.key()
    if job.decode != data.decode:  # else a model would be stored under another decoder's key
        raise TrainingError(f"{job.id}: its model key is for {job.decode}-decoded images, "
                            f"but the data was decoded on the {data.decode}", field="data.decode")
    model = build_model(job.spec, data, device)
    try:
        # every epoch reseeds the global RNG (dropout and recipes' draws cannot take a
        # generator); the caller's state comes back afterwards
        with preserved_rng(device):
            return _fit_locked(job, key, model, data, store, device, progress, retrain, lock)
    except CheckpointError as e:
        if "--retrain" in e.message:
            raise
        raise CheckpointError(
            f"{e.message}; rerun with --retrain to move the store entry aside and train anew", file=e.file
        ) from None


def load_trained(job: TrainJob, data: DataSplits, store: ModelStore, device: torch.device | str = "cpu") -> TrainedModel:
    """The job's model from the store (after an executor trained it); CheckpointError if absent."""
    device = torch.device(device)
    key = job.key()
    model = build_model(job.spec, data, device)
    try:
        with store.lock(key):
            if not store.has_model(key):
                raise CheckpointError(f"{job.id}: no trained model under key {key} in the store", file=str(store.entry(key)))
            state, meta = store.load_model(key)
        _load_state(model, state, store.entry(key) / "model.pt")
    except CheckpointError as e:
        raise CheckpointError(
            f"{e.message}; rerun with --retrain to move the store entry aside and train anew", file=e.file
        ) from None
    return TrainedModel(job.id, key, model, pd.DataFrame(meta.get("history", [])), meta, cached=True)


def _fit_locked(job, key, model, data, store, device, progress, retrain, lock=True) -> TrainedModel:
    # data-parallel: rank 0 alone locks and writes the store; every rank follows its decisions
    main = distributed.world().main
    # no flock for cluster jobs (unreliable on NFS): the store's claim, which works there
    with distributed.main_only_lock(store.lock(key) if lock else store.claim(key)):
        if retrain and main:
            moved = store.quarantine(key)
            if moved:
                log.info("%s: previous store entry moved to %s", job.id, moved)
        if distributed.broadcast(store.has_model(key) if main else None):
            state, meta = store.load_model(key)
            _load_state(model, state, store.entry(key) / "model.pt")
            log.info("%s: reusing trained model %s", job.id, key)
            return TrainedModel(job.id, key, model, pd.DataFrame(meta.get("history", [])), meta, cached=True)
        return _train(job, key, model, data, store, device, progress, retrain)


def _load_state(model: nn.Module, state: dict, path) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"weights do not fit the model ({str(e).splitlines()[0][:160]})", file=str(path)) from None


def _train(job, key, model, data, store, device, progress, retrain) -> TrainedModel:
    t = job.train_config
    seed = job.spec.seed
    recipe: Recipe = recipe_class(job.spec.recipe.name, job.role)(job.spec.recipe, t)
    ctx = FitContext(job, data, store, device, progress, retrain)
    recipe.setup(ctx)
    train_x, train_y = recipe.training_data(ctx)

    _warn_slow_bf16(device, t.precision, job.id)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    parallel = distributed.wrap(model, device)  # DistributedDataParallel under torchrun, else model
    train_model = torch.compile(parallel) if t.compile else parallel
    world = distributed.world()
    shard = distributed.shard_of(t.batch_size)
    opt = _make_optimizer(model, t)
    n_train = len(train_y)
    drop_last = n_train > t.batch_size  # a last batch of one breaks BatchNorm in train mode
    steps_per_epoch = n_train // t.batch_size if drop_last else 1
    total_steps = steps_per_epoch * t.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(t, s, total_steps))
    cycle_momentum(opt, t)
    augment = Augmentation(**job.data["augment"])  # the data identity holds the augment section
    pool_x, pool_y = (data.val_x, data.val_y) if len(data.val_y) else (data.train_x, data.train_y)
    mon_idx = stratified_subset(pool_y, t.monitor_examples, job.spec.seed, "monitor")
    mon_x, mon_y = pool_x[mon_idx], pool_y[mon_idx]

    history: list[dict[str, Any]] = []
    start_epoch, resumed_from, elapsed, start_step = 0, None, 0.0, 0
    ckpt = distributed.broadcast(store.load_checkpoint(key, epochs=t.epochs) if world.main else None)
    if ckpt is not None:
        ckpt_path = store.entry(key) / "checkpoint.pt"
        _load_state(model, ckpt["model"], ckpt_path)
        try:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            recipe.load_state_dict(ckpt.get("recipe", {}))
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"corrupt checkpoint: optimiser or schedule state does not fit "
                                  f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})",
                                  file=str(ckpt_path)) from None
        history = list(ckpt["history"])
        start_epoch = resumed_from = int(ckpt["epoch"])
        elapsed = float(ckpt.get("elapsed", 0.0))
        start_step = int(ckpt.get("step", 0))
        if start_step:
            log.info("%s: resuming after step %d of epoch %d of %d", job.id, start_step, start_epoch + 1, t.epochs)
        else:
            log.info("%s: resuming after epoch %d of %d", job.id, start_epoch, t.epochs)
    previous_state = copy.deepcopy(ckpt["previous_model"] if start_step else model.state_dict())
    check_unchanged(data, job.id)  # streamed files changed since the key was derived from them
    stop_message = None
    t0 = time.perf_counter()
    with progress.task(f"train {job.id}", t.epochs) as advance_epoch:
        advance_epoch(start_epoch)
        for epoch in range(start_epoch, t.epochs):
            e0 = time.perf_counter()
            step = start_step if epoch == start_epoch else 0  # batches of this epoch already trained
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            seen = 0
            if step:  # resumed mid-epoch: the random streams and sums as they were at that step
                assert ckpt is not None
                _set_rng_state(ckpt["rng"][world.rank], device)
                if world.main:  # the sums in the checkpoint are over all ranks
                    loss_sum += ckpt["sums"]["loss"]
                    correct += ckpt["sums"]["correct"]
                    seen = int(ckpt["sums"]["seen"])
            else:  # attack starts: every rank the same stream, each keeping its rows' draws (below)
                seed_global_rng(derive_seed(seed, "epoch", epoch), device)
            model.train()
            batches = iterate_batches(
                train_x, train_y, t.batch_size, shuffle=True, seed=derive_seed(seed, "order", epoch),
                augment=augment, drop_last=drop_last, start_batch=step, shard=shard,
            )
            with progress.task(f"  epoch {epoch + 1}/{t.epochs}", steps_per_epoch) as advance:
                advance(step)
                for xb, yb in batches:
                    if t.channels_last:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    # data-parallel: the random starts of this rank's rows are those one process
                    # draws for them on the whole batch (so the ranks train the one-process model)
                    rows = (global_batch_rows(world.rank * len(yb), len(yb), world.size * len(yb))
                            if world.active else contextlib.nullcontext())
                    with rows, _autocast(device, t.precision):
                        loss, logits = recipe.loss(train_model, xb, yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if t.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                    opt.step()
                    sched.step()
                    cycle_momentum(opt, t)
                    loss_sum += loss.detach().float() * len(yb)
                    correct += (logits.detach().argmax(1) == yb).sum()
                    seen += len(yb)
                    step += 1
                    advance()
                    if t.checkpoint_steps and step % t.checkpoint_steps == 0 and step < steps_per_epoch:
                        check_unchanged(data, job.id)
                        _save_mid_epoch(store, key, epoch, step, model, opt, sched, recipe, history, previous_state,
                                        (loss_sum, correct, seen), device, elapsed + time.perf_counter() - t0)
            sums = distributed.all_sum(torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=device)]))
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": sums[0].item() / max(sums[2].item(), 1),
                "train_acc": sums[1].item() / max(sums[2].item(), 1),
            }
            if not math.isfinite(row["train_loss"]):
                # the weights are garbage from here on: stop before they are checkpointed or cached
                raise TrainingError(
                    f"training loss became {row['train_loss']} in epoch {epoch + 1}; the model is not cached "
                    "(lower train.lr, set train.grad_clip or use fp32)", field=job.id,
                )
            # pinned inputs: an epoch trained on files that changed under it is not checkpointed
            check_unchanged(data, job.id)
            row["val_acc"] = _accuracy(model, mon_x, mon_y)
            row["monitor_eps"] = job.monitor_eps
            if job.monitor_eps > 0:
                x_adv = pgd(model, mon_x, mon_y, job.monitor_eps, steps=t.monitor_steps)
                row["val_robust_acc"] = _accuracy(model, x_adv, mon_y)
            report: EpochReport | None = recipe.after_epoch(model, ctx, epoch)
            if report is not None:
                row.update(report.metrics)
            row["seconds"] = time.perf_counter() - e0
            history.append(row)
            if report is not None and report.action:
                stop_message = report.message
                log.warning("%s: %s; %s", job.id, report.message,
                            "restoring the previous epoch's weights" if report.action == "rollback" else "stopping")
                if report.action == "rollback":
                    model.load_state_dict(previous_state)
                    row["rolled_back"] = 1.0
                break
            previous_state = copy.deepcopy(model.state_dict())
            if world.main:
                store.save_checkpoint(
                key,
                    {
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "recipe": recipe.state_dict(),
                        "history": history,
                        "elapsed": elapsed + time.perf_counter() - t0,
                    },
                )
            advance_epoch(1, status=f"acc {row['val_acc']:.2f}" + (f" rob {row['val_robust_acc']:.2f}" if "val_robust_acc" in row else ""))
            if os.environ.get("WORKBENCH_TEST_EPOCH_DELAY"):  # test hook: widen the window for a kill
                time.sleep(float(os.environ["WORKBENCH_TEST_EPOCH_DELAY"]))
    seconds = elapsed + time.perf_counter() - t0
    meta = {
        "id": job.id,
        "key": key,
        "identity": job.identity(),
        "history": history,
        "train_seconds": seconds,
        "device": str(device),
        # provenance: on the CPU the thread count can change the summation order, so every
        # executor trains with the run's setting (workbench.state.threads_setting)
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "stopped_early": stop_message,
    }
    bad = [n for n, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingError(f"weights became non-finite ({', '.join(bad[:3])}); the model is not cached "
                            "(lower train.lr or set train.grad_clip)", field=job.id)
    if world.main:
        store.save_model(key, model.state_dict(), meta)
    log.info("%s: trained in %.1fs (%d epochs)", job.id, seconds, len(history))
    return TrainedModel(job.id, key, model, pd.DataFrame(history), meta, cached=False, resumed_from_epoch=resumed_from, seconds=seconds)


# --------------------------------------------------------------------------- mid-epoch checkpoints


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_mid_epoch(store, key, epoch, step, model, opt, sched, recipe, history, previous_state, sums, device,
                    elapsed) -> None:
    """``train.checkpoint_steps``: the state after ``step`` batches of ``epoch`` (0-based),
    with every rank's random streams and the epoch's running sums, so a resumed run goes
    on exactly as the uninterrupted one (the epoch's batches come from the seeded plan)."""
    loss_sum, correct, seen = sums
    totals = distributed.all_sum(torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=device)]))
    rngs = distributed.gather(_rng_state(device))
    if not distributed.world().main:
        return
    store.save_checkpoint(key, {
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "previous_model": previous_state,  # the weights a rollback at the epoch's end restores
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "recipe": recipe.state_dict(),
        "history": list(history),
        "rng": rngs,
        "sums": {"loss": totals[0].cpu(), "correct": totals[1].cpu(), "seen": int(totals[2].item())},
        "elapsed": elapsed,
    })
