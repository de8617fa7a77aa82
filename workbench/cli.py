"""The ``workbench`` command: a thin layer over library functions.

Every command parses its arguments, calls one library function and says where the results
are. A user error (a malformed study, an unknown name, a missing data root, a corrupt
checkpoint, a bad run folder) prints one line naming the file and field and exits 2.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Optional

import typer

from .errors import DISTRIBUTION, WorkbenchError, os_error
from . import __version__

app = typer.Typer(
    name="workbench",
    help=(
        "Adversarial robustness and representation analysis of paired models.\n\n"
        "A study (YAML in studies/) declares a data set, architectures × training recipes "
        "(standard, pgd_at, fgsm_rs, trades, distillation), attacks over an ε grid and "
        "representation probes. `workbench run` trains the paired models (or reuses cached "
        "ones), attacks and probes them, and writes tables, figures and index.html.\n\n"
        "Examples:\n\n"
        "  workbench run studies/quickstart.yaml\n\n"
        "  workbench run studies/mnist.yaml --set data.root=~/data --set train.epochs=2\n\n"
        "  workbench validate studies/*.yaml\n\n"
        "  workbench list models\n\n"
        "  workbench compare reports/quickstart reports/distillation --out reports/compare"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_err = logging.getLogger("workbench")


class _Command(typer.core.TyperCommand):
    """Help that shows each argument's metavar (STUDY, RUN_DIR...) without typer's Python type
    next to it (`<list[Path]>`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if isinstance(p, typer.core.TyperArgument):  # this instance only
                p.display_type_rich = lambda ctx: None
                # usage as in man pages: STUDY, [KIND], RUN_DIR... (typer writes {STUDY})
                p._usage_display_name = (lambda p=p: (p.metavar if p.required else f"[{p.metavar}]")
                                         + ("..." if p.nargs != 1 else ""))


def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in the process instead of returning it to the OS at once.

    glibc serves allocations above 128 KiB with mmap and unmaps them on free, so every
    attack step's activations cost page faults: a third of PGD's time on the quickstart
    was system time. Raising the mmap and trim thresholds (256/512 MiB) removed it (PGD
    0.87 s -> 0.59 s). Process-wide, so only the CLI calls it (a library call must not retune its caller's
    process); harmless elsewhere, a no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 256 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 512 << 20))
    except (OSError, AttributeError):
        return False


def _fail(e: WorkbenchError) -> None:
    typer.echo(f"error: {e.one_line()}", err=True)
    raise typer.Exit(e.exit_code)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (not the one at creation), so commands run
    in-process one after another (tests, notebooks) each see their own messages."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _console_logging(quiet: bool) -> None:
    logger = logging.getLogger("workbench")
    handler = next((h for h in logger.handlers if getattr(h, "_workbench_console", False)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._workbench_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.setLevel(logging.INFO)


def _version_text() -> str:
    """``workbench --version``: this package's version and distribution, and a warning when
    PyPI's unrelated ``workbench`` (an AWS SageMaker tool) is installed over the same
    import name."""
    text = f"workbench {__version__} ({DISTRIBUTION}, {Path(__file__).parent})"
    try:
        metadata.distribution("workbench")
    except metadata.PackageNotFoundError:
        return text
    return (text + "\nwarning: the unrelated distribution 'workbench' is installed too and shares the import "
            f"name; remove it and reinstall this one: pip uninstall workbench && pip install --force-reinstall "
            f"--no-deps {DISTRIBUTION} (in a clone: pip install --force-reinstall --no-deps -e .)")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(_version_text())
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Adversarial robustness and representation analysis of paired models."""


@contextmanager
def _user_errors() -> Iterator[None]:
    """A user error, or the operating system refusing (disk full, read-only, a file where a
    folder belongs), as one line and exit 2."""
    try:
        yield
    except WorkbenchError as e:
        _fail(e)
    except OSError as e:
        _fail(os_error(e))
    except MemoryError:
        _fail(WorkbenchError("out of memory (this machine's RAM); nothing was published and the last finished epoch is "
                             "in the store: rerun with fewer --jobs, a smaller train.batch_size or evaluation.batch_size, "
                             "or data.stream: true"))
    except RuntimeError as e:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(e, torch.OutOfMemoryError):
            raise
        first = (str(e).strip().splitlines() or ["CUDA out of memory"])[0]
        _fail(WorkbenchError(f"out of GPU memory ({first[:200]}); nothing was published and the last finished epoch is "
                             "in the store: rerun with a smaller train.batch_size or evaluation.batch_size"))


@app.command(cls=_Command)
def run(
    study: Path = typer.Argument(..., metavar="STUDY", help="study file, e.g. studies/quickstart.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="run folder (default: reports/<study name>)"),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto (CUDA when available), cpu, cuda or cuda:N"),
    store: Optional[Path] = typer.Option(
        None, metavar="DIR", help="model and result cache (default: $WORKBENCH_STORE or ~/.cache/workbench)", envvar="WORKBENCH_STORE"
    ),
    set_: list[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="override a study field: --set train.epochs=2 (repeatable)"),
    retrain: bool = typer.Option(
        False, help="train anew instead of reusing cached models (old entries are moved aside); implies --recompute"
    ),
    recompute: bool = typer.Option(
        False, help="recompute the evaluation, soundness checks and probes instead of reusing the results cached in "
        "the store (the cached results are overwritten)"
    ),
    report: Optional[bool] = typer.Option(
        None, "--report/--no-report", help="write figures and index.html at the end (default: the study's report.enabled)"
    ),
    threads: Optional[int] = typer.Option(
        None, min=1, metavar="N", help="CPU threads for torch in this process and in each process or job that trains (default: $WORKBENCH_THREADS, else half the cores)"
    ),
    jobs: int = typer.Option(
        1, "--jobs", "-j", min=1, metavar="N", help="train up to N models at once in separate processes (each with --threads threads, so the weights are the in-process run's)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars, warnings only"),
    gpus: Optional[int] = typer.Option(
        None, min=1, metavar="N", help="train each model on this many GPUs of this machine with DistributedDataParallel "
        "(starts the same command under torchrun; see docs/scaling.md)"
    ),
    executor: str = typer.Option(
        "inprocess", metavar="NAME", help="inprocess (default), processes (a local pool of --jobs processes; --jobs > 1 picks it), "
        "slurm (each model a SLURM job, then the evaluation as a dependent job) or local (the same jobs on this "
        "machine); slurm and local need the cluster extra (submitit)"
    ),
    gpus_per_job: Optional[int] = typer.Option(None, min=0, metavar="N", help="--executor slurm/local: GPUs per training job "
                                               "(default: the study's cluster.gpus_per_job)"),
    partition: Optional[str] = typer.Option(None, metavar="NAME", help="--executor slurm: the SLURM partition"),
    time_min: Optional[int] = typer.Option(None, min=1, metavar="MIN", help="--executor slurm/local: time limit per job in minutes"),
    slurm_opt: list[str] = typer.Option([], "--slurm", metavar="KEY=VALUE", help="--executor slurm: a further sbatch option KEY=VALUE "
                                        "(repeatable), e.g. --slurm account=vision"),
    parallel: Optional[int] = typer.Option(None, min=1, metavar="N", help="--executor local: jobs at once (default: one per "
                                           "--gpus-per-job GPUs, or 1 without GPUs)"),
    strict: bool = typer.Option(False, "--strict", help="exit with status 1 when a soundness warning applies to "
                                "the worst case (the verdict says robustness may be overestimated; the run folder is "
                                "still written); for scripts and CI"),
    keep: int = typer.Option(5, min=0, metavar="N", help="archived runs kept in <out>/archive (older ones are deleted)"),
) -> None:
    """Train, attack and probe the models of a study; write its run folder.

    Cached models (same data, architecture, recipe, training settings and seed) are
    reused; an interrupted run resumes from its last finished epoch when started again.
    Results are cached too: a rerun with nothing changed (same study sections, models,
    data, seed, device type, torch and workbench code) reuses the evaluation, soundness
    checks and probe outputs from <store>/results and only rewrites the tables and the
    report; --recompute computes them anew (rm -rf <store>/results clears them).

    Example: workbench run studies/quickstart.yaml --out reports/qs --device cpu

    Example: workbench run studies/quickstart.yaml --recompute
    """
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch
    from . import distributed
    from .cluster import KINDS
    from .executors import EXECUTORS
    from .replicates import mean_sd_text
    from .runner import run_study
    from .study import load_study

    if gpus is not None and gpus > 1 and not distributed.launched():
        _relaunch_under_torchrun(gpus)
    _console_logging(quiet or not _is_rank_zero())
    tune_cpu_allocator()
    if executor not in EXECUTORS:
        _fail(WorkbenchError(f"unknown executor {executor!r}; use {', '.join(EXECUTORS.names())}", field="--executor"))
    if executor in KINDS:  # the submitit executors: the driver submits the stages as a job too
        _run_jobs(study, set_, out, store, executor, retrain=retrain, recompute=recompute, report=report, quiet=quiet,
                  threads=threads, gpus_per_job=gpus_per_job, partition=partition, time_min=time_min,
                  slurm_opt=slurm_opt, parallel=parallel, strict=strict)
        return
    try:
        with _user_errors(), _terminate_as_interrupt():
            s = load_study(study, set_)
            result = run_study(s, out, device=device, store=store, retrain=retrain, recompute=recompute,
                               progress=False if quiet else None, report=report, threads=threads, jobs=jobs,
                               executor=None if executor == "inprocess" else executor, keep=keep)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        typer.echo(f"{what}: rerun the same command to resume from the last finished epoch", err=True)
        raise typer.Exit(143 if isinstance(e, Terminated) else 130)
    finally:
        distributed.teardown()
    if not _is_rank_zero():
        return  # rank 0 reports
    warned = _echo_verdict(result.tables, result.study.main_eps())
    rep = result.tables.get("replicates")
    if rep is not None and len(rep):
        for _, r in rep[rep["measure"] == "clean"].drop_duplicates(["architecture", "recipe"]).iterrows():
            typer.echo(f"  {r['architecture'] + '/' + r['recipe']:<32} clean accuracy (%, mean ± sd) "
                       f"{mean_sd_text(r['mean'], r['sd'], int(r['n_seeds']), percent=True)}")
    where = result.path / "index.html"
    typer.echo(f"run folder: {result.path}" + (f"\nreport: {where}" if where.exists() else ""))
    if result.cached_stages:
        typer.echo(f"reused cached results: {', '.join(result.cached_stages)} (--recompute to compute them anew)")
    typer.echo(f"finished in {result.timings['total']:.1f}s")
    _strict_exit(strict, warned)


def _echo_verdict(tables, main_eps: float) -> list[str]:
    """Print the verdict table (workbench.verdict); returns the models whose checks warn."""
    # it needs pandas: imported by the commands that print it, not for `workbench --help`
    from .verdict import verdict_table, verdict_text

    typer.echo(verdict_text(tables, main_eps))
    v = verdict_table(tables, main_eps)
    return [str(m) for m, w in zip(v["model"], v["warnings"]) if len(w)]


def _strict_exit(strict: bool, warned: list[str]) -> None:
    if warned and strict:
        typer.echo(f"--strict: soundness checks warn for {', '.join(warned)} (see the soundness column); exit 1",
                   err=True)
        raise typer.Exit(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, SLURM before it ends or preempts a job), handled as Ctrl-C is: the
    run stops where it is, the last finished epoch stays in the store, the staging folder
    goes; the command exits 143 (128 + SIGTERM)."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` in the main thread (the
    previous handler comes back afterwards); elsewhere than the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_jobs(study_path, set_, out, store, executor, *, retrain, recompute, report, quiet, threads, gpus_per_job,
              partition, time_min, slurm_opt, parallel, strict=False) -> None:
    """``workbench run --executor slurm|local``: the driver of a study's jobs (workbench.cluster)."""
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch and pandas
    import pandas as pd

    from .cluster import ClusterOptions
    from .grid import run_grid
    from .progress import Progress
    from .study import load_study

    try:
        with _terminate_as_interrupt():
            s = load_study(study_path, set_)
            extra = {}
            for item in slurm_opt:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise WorkbenchError(f"expected KEY=VALUE, got {item!r}", field="--slurm")
                extra[key.strip()] = value.strip()
            opts = ClusterOptions.from_study(s, executor, partition=partition, gpus_per_job=gpus_per_job,
                                             time_min=time_min, parallel=parallel, threads=threads)
            opts.slurm.update(extra)
            path = run_grid(s, out, opts, store=store, retrain=retrain, recompute=recompute, report=report,
                            progress=Progress(False if quiet else None))
    except WorkbenchError as e:
        _fail(e)
    except KeyboardInterrupt as e:
        typer.echo("driver stopped: SLURM jobs keep running (local jobs stop); run the same command again to "
                   "follow them or resubmit what is missing", err=True)
        raise typer.Exit(143 if isinstance(e, Terminated) else 130)
    tables = {name: pd.read_parquet(path / "tables" / f"{name}.parquet") for name in ("robustness", "soundness")
              if (path / "tables" / f"{name}.parquet").is_file()}
    warned = _echo_verdict(tables, s.main_eps())
    where = path / "index.html"
    typer.echo(f"run folder: {path}" + (f"\nreport: {where}" if where.exists() else ""))
    _strict_exit(strict, warned)


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _relaunch_under_torchrun(gpus: int) -> None:
    """Replace this process by ``torchrun --standalone --nproc-per-node GPUS`` running the
    same ``workbench run`` (without ``--gpus``)."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--gpus":
            skip = True
            continue
        if a.startswith("--gpus="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m", "workbench.cli", *args]
    typer.echo("starting: " + " ".join(cmd), err=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


@app.command(cls=_Command)
def validate(studies: list[Path] = typer.Argument(..., metavar="STUDY", help="study files to check")) -> None:
    """Check study files completely (schema, names, ε values, the modules of python: model
    sources, which are imported) without training or evaluating anything.

    Example: workbench validate studies/*.yaml
    """
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch
    from .models.sources import check_study_sources
    from .study import load_study

    failed = 0
    for path in studies:
        try:
            s = load_study(path)
            check_study_sources(s)
            typer.echo(f"ok: {path} ({len(s.model_ids())} models, {len(s.evaluation.attacks)} attacks, probes: {', '.join(s.probes.enabled()) or 'none'})")
        except (WorkbenchError, OSError) as e:
            err = e if isinstance(e, WorkbenchError) else os_error(e)
            typer.echo(f"error: {err.one_line()}", err=True)
            failed += 1
    if failed:
        raise typer.Exit(2)


@app.command(cls=_Command)
def schema(out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE", help="write to this file instead of stdout")) -> None:
    """Print the JSON Schema of study files (for editors).

    Example (VS Code / yaml-language-server): workbench schema -o study.schema.json, then put
    `# yaml-language-server: $schema=study.schema.json` at the top of a study.
    """
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch
    from .study import study_schema

    text = json.dumps(study_schema(), indent=2)
    if out:
        with _user_errors():
            out.write_text(text + "\n")
        typer.echo(f"schema written to {out}")
    else:
        typer.echo(text)


KINDS = ("datasets", "models", "recipes", "attacks", "losses", "probes", "stages", "executors")


@app.command("list", cls=_Command)
def list_(
    kind: Optional[str] = typer.Argument(None, metavar="KIND", help=f"one of: {', '.join(KINDS)}, layers (default: all)"),
    model: Optional[str] = typer.Argument(None, metavar="MODEL", help="layers: the model source, e.g. torchvision:resnet50"),
    pattern: str = typer.Option("*", metavar="GLOB", help="filter names, e.g. 'resnet*'"),
    classes: int = typer.Option(1000, metavar="N", help="layers: number of classes the model is built for"),
    in_shape: str = typer.Option("3,224,224", metavar="C,H,W", help="layers: input shape C,H,W"),
) -> None:
    """List what studies can name: data sets, models, recipes, attacks, losses, probes, stages, executors; or a model's layers.

    Examples: workbench list models --pattern 'torchvision:resnet*'

      workbench list layers torchvision:resnet50

      workbench list layers small_cnn --classes 10 --in-shape 1,8,8
    """
    if kind == "layers":
        _list_layers(model, classes, in_shape)
        return
    if kind is not None and kind not in KINDS:
        _fail(WorkbenchError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}, layers", field="list"))
    # each command imports what it runs: `workbench --help` starts without torch
    from . import registries

    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    for k in (kind,) if kind else KINDS:
        typer.echo(f"{k}:")
        for name, doc in registries.listing(k, pattern):
            # the whole description, wrapped under its column (never cut mid-sentence)
            first, *rest = textwrap.wrap(doc, width - 31, break_on_hyphens=False, break_long_words=False) or [""]
            typer.echo(f"  {name:<28} {first}" if len(name) <= 28 else f"  {name}\n{' ' * 31}{first}")
            for line in rest:
                typer.echo(" " * 31 + line)


def _list_layers(model: Optional[str], classes: int, in_shape: str) -> None:
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch
    import torch

    from .models import zoo
    from .models.sources import SourceConfig, load_source, wrap

    if not model:
        _fail(WorkbenchError("name the model, e.g. workbench list layers torchvision:resnet50", field="list layers"))
    try:
        shape = tuple(int(v) for v in in_shape.split(","))
        if len(shape) != 3:
            raise ValueError
    except ValueError:
        _fail(WorkbenchError(f"--in-shape {in_shape!r} is not C,H,W (e.g. 3,224,224)", field="--in-shape"))
    try:
        src = SourceConfig.model_validate(model)
        # no weights are needed to list layers: the architecture is built on the meta device
        src = src.model_copy(update={"checkpoint": None, "pretrained": False}) if src.kind == "arch" else src
        if src.kind == "robustbench":  # its own architecture with initial weights: the zoo file is not read
            net = zoo.build(src.robustbench, src.dataset, src.threat_model)
            m = wrap(net, in_shape=shape, num_classes=classes, name=src.describe())
            lm = types.SimpleNamespace(model=m, source=src.describe())
        else:
            with torch.device("meta") if src.kind == "arch" else _nullcontext():
                lm = load_source(src, num_classes=classes, in_shape=shape, device="meta" if src.kind == "arch" else "cpu")
    except WorkbenchError as e:
        _fail(e)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError for a malformed source
        errs = getattr(e, "errors", None)
        msg = errs()[0]["msg"].removeprefix("Value error, ") if callable(errs) else str(e)
        _fail(WorkbenchError(f"invalid model source {model!r}: {msg}", field="list layers"))
    m = lm.model
    typer.echo(f"layers of {lm.source} (input {shape}, {classes} classes), input → output:")
    for name, path in m.layer_paths().items():
        mark = "  (penultimate)" if name == m.penultimate else ""
        typer.echo(f"  {name:<28} {path}{mark}")
    typer.echo(f"  {'logits':<28} (the model's output)")


def _nullcontext():
    return contextlib.nullcontext()


@app.command("convert-checkpoint", cls=_Command)
def convert_checkpoint(
    src: Path = typer.Argument(..., metavar="IN", help="a pickled checkpoint that torch.load(weights_only=True) refuses"),
    dst: Path = typer.Argument(..., metavar="OUT", help="where to write the plain-tensor copy (.pt)"),
    trust: bool = typer.Option(False, "--trust", help="required: converting unpickles SRC, which runs any code in it"),
) -> None:
    """Rewrite a checkpoint you trust as plain tensors that load with weights_only=True.

    Unpickling runs whatever code the file holds: only for files whose origin you trust.
    Non-tensor objects are dropped; the copy then loads safely everywhere.

    Example: workbench convert-checkpoint downloaded.pt converted.pt --trust
    """
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch
    from .models.checkpoint import convert_checkpoint as convert

    try:
        out = convert(src, dst, trust=trust)
    except WorkbenchError as e:
        _fail(e)
    typer.echo(f"converted: {out}")


@app.command(cls=_Command)
def report(run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a run folder written by `workbench run`")) -> None:
    """(Re)write the figures and index.html of a run folder from its tables.

    Example: workbench report reports/quickstart
    """
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch
    from .report import write_report

    with _user_errors():
        path = write_report(run_dir)
    typer.echo(f"report: {path}")


@app.command(cls=_Command)
def compare(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="two or more run folders"),
    out: Path = typer.Option(Path("reports/compare"), "--out", "-o", metavar="DIR", help="folder for the comparison report"),
    keep: int = typer.Option(5, min=0, metavar="N", help="archived comparisons kept in <out>/archive"),
) -> None:
    """Set runs side by side: accuracy-vs-ε and Lipschitz profiles of every model, and a table of differences.

    Example: workbench compare reports/quickstart reports/distillation --out reports/compare
    """
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch
    from .report import write_comparison

    with _user_errors():
        path = write_comparison(run_dirs, out, keep=keep)
    typer.echo(f"comparison: {path}")


@app.command(cls=_Command)
def gc(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="the run folders whose models and results to keep (their "
                                          "archived runs included)"),
    store: Optional[Path] = typer.Option(
        None, metavar="DIR", help="model and result cache (default: $WORKBENCH_STORE or ~/.cache/workbench)",
        envvar="WORKBENCH_STORE"
    ),
    delete: bool = typer.Option(False, "--delete", help="remove the entries listed (without it: a dry run)"),
    data: bool = typer.Option(False, "--data", help="also remove the decoded-data cache (<store>/data; rebuilt when "
                              "a run needs it)"),
) -> None:
    """List (then, with --delete, remove) the store entries that none of the given run folders uses.

    A dry run first: every entry with its size, and the total. Models still training and
    claimed entries are kept.

    Example: workbench gc reports/* --store /scratch/wb        (then the same with --delete)
    """
    # each command imports what it runs: `workbench --help` and `workbench list` start without torch
    from .gc import find_garbage, remove
    from .store import ModelStore

    with _user_errors():
        found = find_garbage(ModelStore(store), run_dirs, data=data)
        for path, size in found.remove:
            typer.echo(f"  {_mib(size):>10}  {path}")
        for path, why in found.kept:
            typer.echo(f"  {'kept':>10}  {path} ({why})")
        verb = "removed" if delete else "would remove"
        if delete:
            remove(found)
        typer.echo(f"{verb} {len(found.remove)} entries, {_mib(found.bytes)}; {found.in_use} in use by the "
                   f"{len(run_dirs)} run folder(s) given" + ("" if delete else "; rerun with --delete to remove them"))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
