"""Reliability battery (issue 9): every broken input gives one line and exit 2, and nothing
in an earlier run folder is lost.

Every case builds its input in temporary folders next to a copy of one finished run
(``prev``) and of its model store, runs ``workbench run`` in-process (typer's CliRunner)
and checks: exit status 2, exactly one ``error:`` line on stderr naming the file or field,
no exception escaping, ``prev`` byte for byte as it was, and no staging folder left. Real
processes are used only where the case needs them (two concurrent runs, ``kill -9``).

Disk faults are simulated, since the tests run as any user: a full disk by ``os.fsync``
failing with ENOSPC for files below the folder in question (where a real full disk reports
it for delayed allocation), a read-only folder by ``os.mkdir`` failing with EROFS there,
and a file where a folder is expected for real. ``test_real_full_disk`` uses a real 2 MiB
tmpfs where mounting one is allowed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import app

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
data: {name: digits, limit_train: 200, limit_test: 60}
architectures: [{name: small_cnn, options: {width: 4, fc: 16}}]
recipes: [standard]
train: {epochs: 1, batch_size: 64, monitor_examples: 32, monitor_steps: 1}
evaluation: {examples: 20, eps: [0.1], attacks: [fgsm], soundness: {enabled: false}}
report: {enabled: false}
"""


def invoke(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def snapshot(folder: Path) -> dict[str, object]:
    """relative path -> sha256 of a file, "dir", or a link's target: 'byte-identical' in one value."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_one_line_error(res, *words: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.stderr, repr(res.exception))
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def no_staging_left(parent: Path) -> None:
    left = [p.name for p in parent.iterdir() if ".staging-" in p.name or ".previous-" in p.name]
    assert not left, left


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One finished run of the tiny study and its store; cases work on copies."""
    d = tmp_path_factory.mktemp("base")
    (d / "tiny.yaml").write_text(TINY)
    res = invoke("run", d / "tiny.yaml", "--out", d / "runs" / "prev", "--store", d / "store", "-q")
    assert res.exit_code == 0, res.stderr
    return d


@dataclass
class Ctx:
    tmp: Path
    study: Path
    prev: Path
    store: Path
    monkeypatch: pytest.MonkeyPatch
    env: dict[str, str] = field(default_factory=dict)
    out: Path | None = None  # --out (default prev)

    def write_study(self, text: str, name: str = "s.yaml") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def model_entry(self) -> Path:
        (entry,) = [p for p in (self.store / "models").iterdir() if p.is_dir()]
        return entry


@pytest.fixture
def ctx(base, tmp_path, monkeypatch) -> Ctx:
    shutil.copytree(base / "runs", tmp_path / "runs")
    shutil.copytree(base / "store", tmp_path / "store")
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return Ctx(tmp_path, study, tmp_path / "runs" / "prev", tmp_path / "store", monkeypatch)


def _replace(old: str, new: str) -> Callable[[Ctx], tuple[list, tuple]]:
    def build(c: Ctx):
        assert old in TINY
        path = c.write_study(TINY.replace(old, new))
        return [path], (str(path),)
    return build


def _bomb(c: Ctx):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]  # 9^9 values
    path = c.write_study(TINY + "x-bomb:\n" + "".join(f"  {line}\n" for line in lines))
    return [path], (str(path), "aliases expand")


def _set(*overrides: str, words: tuple[str, ...]):
    def build(c: Ctx):
        args: list = [c.study]
        for o in overrides:
            args += ["--set", o]
        return args, (str(c.study), "--set" if not words else words[0], *words[1:])
    return build


def _env(name: str, value: str, *words: str):
    def build(c: Ctx):
        c.env[name] = value
        return [c.study], words
    return build


def _store_is_file(c: Ctx):
    f = c.tmp / "store-file"
    f.write_text("not a folder")
    return [c.study, "--store", f], (str(f), "is a file")


def _store_below_file(c: Ctx):
    f = c.tmp / "plain-file"
    f.write_text("x")
    return [c.study, "--store", f / "store"], ("plain-file", "is a file")


def _fault(fn_name: str, below: Path, code: int):
    """Make ``os.<fn_name>`` fail with ``code`` for paths (or fds) below ``below``."""
    real = getattr(os, fn_name)

    def fake(target, *a, **kw):
        path = os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else os.fspath(target)
        if os.path.abspath(path).startswith(str(below) + os.sep):
            raise OSError(code, os.strerror(code), path)
        return real(target, *a, **kw)

    return fake


def _store_full(c: Ctx):
    fresh = c.tmp / "fresh-store"  # nothing cached: the model must be written
    c.monkeypatch.setattr(os, "fsync", _fault("fsync", fresh, errno.ENOSPC))
    return [c.study, "--store", fresh], ("No space left on device", "ENOSPC", str(fresh))


def _store_read_only(c: Ctx):
    ro = c.tmp / "ro-store"
    ro.mkdir()
    c.monkeypatch.setattr(os, "mkdir", _fault("mkdir", ro, errno.EROFS))
    return [c.study, "--store", ro], (str(ro), "not writable", "Read-only file system")


def _run_folder_full(c: Ctx):
    c.monkeypatch.setattr(os, "fsync", _fault("fsync", c.prev.parent, errno.ENOSPC))
    return [c.study], ("No space left on device",)


def _run_folder_read_only(c: Ctx):
    c.monkeypatch.setattr(os, "mkdir", _fault("mkdir", c.prev.parent, errno.EROFS))
    return [c.study], ("Read-only file system",)


def _out_below_file(c: Ctx):
    f = c.tmp / "a-file"
    f.write_text("x")
    c.out = f / "run"
    return [c.study], ("a-file", "is a file")


def _out_is_file(c: Ctx):
    c.out = c.tmp / "a-file.txt"
    c.out.write_text("mine")
    return [c.study], (str(c.out), "not a folder")


def _out_foreign(c: Ctx):
    c.out = c.tmp / "papers"
    c.out.mkdir()
    (c.out / "draft.tex").write_text("mine")
    return [c.study], (str(c.out), "holds files but no run", "pass a new or empty folder")


def _out_cwd(value: str):
    def build(c: Ctx):
        work = c.tmp / "project"
        (work / ".git").mkdir(parents=True)
        (work / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        shutil.copy(c.study, work / "tiny.yaml")
        c.monkeypatch.chdir(work)
        c.out = Path(value)
        return [work / "tiny.yaml"], ("current folder", "--out reports/")
    return build


def _meta(data: bytes, *words: str):
    def build(c: Ctx):
        meta = c.model_entry() / "meta.json"
        meta.write_bytes(data)
        return [c.study], (str(meta), *words)
    return build


def _model_garbage(c: Ctx):
    model = c.model_entry() / "model.pt"
    model.write_bytes(b"garbage")
    return [c.study], (str(model), "--retrain")


def _checkpoint(state: dict, *words: str):
    def build(c: Ctx):
        entry = c.model_entry()
        full = torch.load(entry / "model.pt", weights_only=True)
        (entry / "model.pt").unlink()
        (entry / "meta.json").unlink()
        ckpt = {"model": full, "optimizer": {}, "scheduler": {}, "history": [], **state}
        ckpt = {k: v for k, v in ckpt.items() if v is not None}
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        (entry / "checkpoint.pt").write_bytes(buf.getvalue())
        return [c.study], (str(entry / "checkpoint.pt"), *words)
    return build


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)


def _image_tree(root: Path) -> None:
    for cls in ("cat", "dog"):
        for i in range(4):
            _png(root / cls / f"{i}.png", 40 * i + (0 if cls == "cat" else 20))


def _imagefolder_study(c: Ctx, root: Path) -> Path:
    return c.write_study(TINY.replace("{name: digits, limit_train: 200, limit_test: 60}",
                                      f"{{name: imagefolder, root: '{root}', test_fraction: 0.25}}"))


def _dangling_symlink(c: Ctx):
    root = c.tmp / "images"
    _image_tree(root)
    (root / "cat" / "gone.png").symlink_to(c.tmp / "nowhere.png")
    return [_imagefolder_study(c, root)], ("gone.png", "dangling")


def _truncated_archive(suffix: str, mode: str):
    def build(c: Ctx):
        tree = c.tmp / "images"
        _image_tree(tree)
        archive = c.tmp / f"images{suffix}"
        with tarfile.open(archive, mode) as tar:
            tar.add(tree, arcname="images")
        data = archive.read_bytes()
        archive.write_bytes(data[: len(data) // 2])
        return [_imagefolder_study(c, archive)], (str(archive),)
    return build


def _nan_loss(c: Ctx):
    path = c.write_study(TINY.replace("batch_size: 64,", "batch_size: 64, lr: 1.0e30, momentum: 0,"))
    return [path], ("training loss became", "small_cnn/standard")


def _probe_layer(c: Ctx):
    path = c.write_study(TINY.replace("report: {enabled: false}",
                                      "report: {enabled: false}\nprobes: {examples: 8, cka: {layers: [no_such_layer]}}"))
    return [path], ("no_such_layer",)


CASES: dict[str, Callable[[Ctx], tuple[list, tuple]]] = {
    # numbers
    "eps-inf": _replace("eps: [0.1]", "eps: [.inf]"),
    "eps-nan": _replace("eps: [0.1]", "eps: [.nan]"),
    "eps-overflowing-string": _replace("eps: [0.1]", "eps: ['1e999']"),
    "eps-fraction-overflow": _replace("eps: [0.1]", "eps: ['1e400/1e399']"),
    "lr-nan": _replace("batch_size: 64,", "batch_size: 64, lr: .nan,"),
    "lr-overflowing-literal": _replace("batch_size: 64,", "batch_size: 64, lr: 1.0e999,"),
    "lr-inf-string": _replace("batch_size: 64,", "batch_size: 64, lr: 'inf',"),
    "int-overflow": _replace("batch_size: 64,", "batch_size: 100000000000000000000000000000,"),
    "option-inf": _replace("width: 4,", "width: .inf,"),
    "set-inf": _set("train.lr=.inf", words=("train.lr",)),
    "set-nan-list": _set("evaluation.eps=[.nan]", words=("evaluation.eps",)),
    "set-overflow": _set("seed=1" + "0" * 40, words=("seed",)),
    "set-alias-bomb": _set("description=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                           "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                           "&e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]]",
                           words=("--set", "aliases expand")),
    # YAML structure
    "alias-bomb": _bomb,
    "recursive-alias": _replace("report: {enabled: false}", "report: {enabled: false}\ndescription: &a [*a]"),
    "deep-nesting": _replace("report: {enabled: false}", "report: {enabled: false}\ndescription: " + "[" * 5000 + "]" * 5000),
    "duplicate-key": _replace("report: {enabled: false}", "report: {enabled: false}\ntrain: {epochs: 2}"),
    # names
    "name-too-long": _replace("name: tiny", "name: " + "a" * 300),
    "name-control-character": _replace("name: tiny", 'name: "ti\\any"'),
    "name-trailing-newline": _replace("name: tiny", 'name: "tiny\\n"'),
    # environment
    "threads-env": _env("WORKBENCH_THREADS", "abc", "WORKBENCH_THREADS", "'abc'"),
    "store-is-a-file": _store_is_file,
    "store-below-a-file": _store_below_file,
    "store-disk-full": _store_full,
    "store-read-only": _store_read_only,
    "run-folder-disk-full": _run_folder_full,
    "run-folder-read-only": _run_folder_read_only,
    # where the run goes
    "out-below-a-file": _out_below_file,
    "out-is-a-file": _out_is_file,
    "out-foreign-folder": _out_foreign,
    "out-dot": _out_cwd("."),
    "out-empty": _out_cwd(""),
    # store entries
    "meta-json-list": _meta(b"[1, 2]", "not an object"),
    "meta-json-not-utf8": _meta(b'{"sha256": "\xff\xfe"}', "UTF-8"),
    "meta-json-history-string": _meta(b'{"sha256": "x", "history": "lots"}', "history"),
    "model-garbage": _model_garbage,
    "checkpoint-missing-fields": _checkpoint({"epoch": 1, "optimizer": None, "history": [{}]}, "missing", "optimizer"),
    "checkpoint-epoch-999": _checkpoint({"epoch": 999, "history": [{}] * 999}, "epoch 999"),
    "checkpoint-epoch-string": _checkpoint({"epoch": "1"}, "epoch is a str"),
    # data
    "imagefolder-dangling-symlink": _dangling_symlink,
    "imagefolder-truncated-tar-gz": _truncated_archive(".tar.gz", "w:gz"),
    "imagefolder-truncated-tar": _truncated_archive(".tar", "w"),
    # failures after the run started
    "non-finite-training-loss": _nan_loss,
    "unknown-probe-layer": _probe_layer,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_input_is_one_line_and_loses_nothing(ctx: Ctx, case: str):
    args, words = CASES[case](ctx)
    before = snapshot(ctx.prev)
    store_before = snapshot(ctx.store)
    out = ctx.prev if ctx.out is None else ctx.out
    t0 = time.perf_counter()
    res = invoke("run", *args[:1], "--out", out, *([] if "--store" in map(str, args) else ["--store", ctx.store]),
                 *args[1:], "-q", env=ctx.env)
    seconds = time.perf_counter() - t0
    ctx.monkeypatch.undo()  # faults off before looking at the files
    line = assert_one_line_error(res, *words)
    if os.environ.get("SHOW_ERRORS"):
        print(f"\n{case}: {line}")
    assert snapshot(ctx.prev) == before
    no_staging_left(ctx.prev.parent)
    if case not in ("model-garbage", "checkpoint-missing-fields", "checkpoint-epoch-999", "checkpoint-epoch-string",
                    "meta-json-list", "meta-json-not-utf8", "meta-json-history-string"):
        # nothing but new entries: no cached model or result was changed
        assert all(store_before[k] == v for k, v in snapshot(ctx.store).items() if k in store_before)
    if case in ("alias-bomb", "set-alias-bomb", "deep-nesting"):
        assert seconds < 5, seconds  # refused before expansion, not after


def test_alias_bomb_is_refused_fast_and_small(tmp_path):
    import tracemalloc

    from workbench.errors import StudyError
    from workbench.study import load_study

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]  # 9^10 ≈ 3.5e9 values
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(StudyError, match="aliases expand"):
        load_study(path)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 4 << 20, (seconds, peak)


def test_yaml_merge_keys_and_shared_anchors_still_load(tmp_path):
    """The guards refuse only what they should: merges and small reused anchors are fine."""
    from workbench.study import load_study

    path = tmp_path / "ok.yaml"
    path.write_text(TINY.replace("train: {", "train: &t {").replace(
        "report: {enabled: false}", "report: {enabled: false}\nrecipes: [standard, {name: pgd_at, eps: 0.1, train: {<<: *t, epochs: 2}}]"
    ).replace("recipes: [standard]\n", ""))
    s = load_study(path)
    assert s.train_for(s.recipes[1]).epochs == 2 and s.train_for(s.recipes[1]).batch_size == 64


# --------------------------------------------------------------------------- the three data-loss cases


def test_two_concurrent_runs_never_mix(base, tmp_path):
    """Issue 9, case 1: both runs succeed; the folder holds one run whole, the other is archived whole."""
    shutil.copy(base / "tiny.yaml", tmp_path / "tiny.yaml")
    out, store = tmp_path / "run", tmp_path / "store"
    env = {**os.environ, "WORKBENCH_STORE": str(store), "WORKBENCH_TEST_EPOCH_DELAY": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "workbench.cli", "run", "tiny.yaml", "--out", str(out), "-q",
                          "--set", f"evaluation.examples={n}"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in (20, 30)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    import pandas as pd
    import yaml

    def examples(folder: Path) -> tuple[int, set[int]]:
        study = yaml.safe_load((folder / "study.yaml").read_text())["evaluation"]["examples"]
        return study, set(pd.read_parquet(folder / "tables" / "robustness.parquet")["n"])

    (archived,) = (out / "archive").iterdir()
    top, old = examples(out), examples(archived)
    assert top[1] == {top[0]} and old[1] == {old[0]}  # each folder's tables are its own study's
    assert {top[0], old[0]} == {20, 30}  # and both runs' results exist
    no_staging_left(tmp_path)
    assert invoke("report", out).exit_code == 0


def test_out_dot_in_a_project_folder_moves_nothing(base, tmp_path, monkeypatch):
    """Issue 9, case 2: ``--out .`` (and ``--out ""``) where no run lives is refused; .git and the study stay."""
    work = tmp_path / "project"
    (work / ".git").mkdir(parents=True)
    (work / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (work / "notes.md").write_text("mine")
    shutil.copy(base / "tiny.yaml", work / "tiny.yaml")
    monkeypatch.chdir(work)
    before = snapshot(work)
    for out in (".", ""):
        res = invoke("run", "tiny.yaml", "--out", out, "-q")
        assert_one_line_error(res, "current folder")
        assert snapshot(work) == before


def test_error_after_start_keeps_previous_run(ctx: Ctx):
    """Issue 9, case 3: an error raised once the run has started (here a corrupt checkpoint and an
    unknown probe layer) leaves the previous complete run in place, and `workbench report` works."""
    before = snapshot(ctx.prev)
    path = _probe_layer(ctx)[0][0]
    assert_one_line_error(invoke("run", path, "--out", ctx.prev, "--store", ctx.store, "-q"), "no_such_layer")
    model = ctx.model_entry() / "model.pt"
    model.write_bytes(b"garbage")
    assert_one_line_error(invoke("run", ctx.study, "--out", ctx.prev, "--store", ctx.store, "-q"), str(model))
    assert snapshot(ctx.prev) == before
    no_staging_left(ctx.prev.parent)
    res = invoke("report", ctx.prev)
    assert res.exit_code == 0, res.stderr
    assert (ctx.prev / "index.html").is_file()


# --------------------------------------------------------------------------- lifecycle


def test_kill_9_leaves_previous_run_and_frees_the_folder(ctx: Ctx):
    """A run killed mid-training leaves ``prev`` intact and its staging folder behind; the flock
    died with it, so the next run goes ahead, removes the staging folder and publishes."""
    before = snapshot(ctx.prev)
    fresh = ctx.tmp / "fresh-store"
    env = {**os.environ, "WORKBENCH_STORE": str(fresh), "WORKBENCH_TEST_EPOCH_DELAY": "60"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "run", str(ctx.study), "--out", str(ctx.prev), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(fresh.glob("models/*/checkpoint.pt")):  # in the sleep after epoch 1
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        staging = [p for p in ctx.prev.parent.iterdir() if ".staging-" in p.name]
        assert len(staging) == 1 and (staging[0] / "prev" / "study.yaml").is_file()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert snapshot(ctx.prev) == before
    res = invoke("run", ctx.study, "--out", ctx.prev, "--store", ctx.store, "-q")
    assert res.exit_code == 0, res.stderr
    no_staging_left(ctx.prev.parent)
    (archived,) = (ctx.prev / "archive").iterdir()
    assert snapshot(archived) == before  # the previous run, whole, in the new run's archive


def test_rerun_archives_whole_runs_and_keeps_user_files(ctx: Ctx):
    """Each rerun archives the previous run's files (and earlier archives stay flat); a file
    the user put into the folder is not archived."""
    (ctx.prev / "notes.txt").write_text("mine")
    first = snapshot(ctx.prev)
    assert invoke("run", ctx.study, "--out", ctx.prev, "--store", ctx.store, "-q").exit_code == 0
    assert invoke("run", ctx.study, "--out", ctx.prev, "--store", ctx.store, "-q").exit_code == 0
    assert (ctx.prev / "notes.txt").read_text() == "mine"
    archives = sorted((ctx.prev / "archive").iterdir())
    assert len(archives) == 2 and all(not (a / "archive").exists() and not (a / "notes.txt").exists() for a in archives)
    first_run = {k: v for k, v in first.items() if k != "notes.txt"}
    assert any(snapshot(a) == first_run for a in archives)
    no_staging_left(ctx.prev.parent)


def test_interrupted_publish_is_finished_by_the_next_run(ctx: Ctx):
    """Killed between the publish's two renames: the previous run sits in the staged run's
    archive and the folder is gone for a moment; the next run puts the staged one in place."""
    from workbench.store import RunFolder

    before = snapshot(ctx.prev)
    staging = ctx.prev.parent / ".prev.staging-1-x"
    shutil.copytree(ctx.prev, staging / "prev")
    (staging / "prev" / "run.json").write_text('{"marker": "staged"}')
    (staging / "prev" / "archive").mkdir()
    (staging / "PUBLISH").write_text("20260101T000000")
    os.rename(ctx.prev, staging / "prev" / "archive" / "20260101T000000")
    folder = RunFolder(ctx.prev)
    folder.begin()
    folder.abandon()
    assert json.loads((ctx.prev / "run.json").read_text()) == {"marker": "staged"}
    assert snapshot(ctx.prev / "archive" / "20260101T000000") == before
    no_staging_left(ctx.prev.parent)


def test_second_run_waits_for_the_first(ctx: Ctx):
    """The folder's flock: a second run waits (with a message naming the holder) instead of mixing."""
    from workbench.store import RunFolder

    holder = RunFolder(ctx.prev)
    holder.begin()
    code = (
        "import logging, sys, time; from workbench.store import RunFolder;"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s');"
        f"f = RunFolder({str(ctx.prev)!r}); print('ready', flush=True); t = time.time(); f.begin();"
        "print(round(time.time() - t, 1)); f.abandon()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # imports done (slow on a busy machine)
    time.sleep(2)
    assert proc.poll() is None  # still waiting
    holder.abandon()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and float(out) >= 1.5, (out, err)
    assert f"pid {os.getpid()}" in err and "waiting" in err


def test_cache_entry_listing_files_outside_its_stage_is_a_miss(ctx: Ctx):
    """A cached result that lists a file outside arrays/ would overwrite another stage's file
    on a hit: it is refused (a warning, recomputed), the run folder keeps its own files."""
    for meta_path in (ctx.store / "results").glob("*/meta.json"):
        meta = json.loads(meta_path.read_text())
        evil = b"name: evil\n"
        (meta_path.parent / "files").mkdir(exist_ok=True)
        (meta_path.parent / "files" / "study.yaml").write_bytes(evil)
        meta["files"] = {"study.yaml": hashlib.sha256(evil).hexdigest()}
        meta_path.write_text(json.dumps(meta))
    res = invoke("run", ctx.study, "--out", ctx.prev, "--store", ctx.store)
    assert res.exit_code == 0, res.stderr
    assert "outside the folders a stage writes" in res.stderr
    assert "name: tiny" in (ctx.prev / "study.yaml").read_text()


def test_compare_folder_names_with_math_text(base, tmp_path):
    """Run-folder names holding $, _ and ^ are labels, not matplotlib math text."""
    dirs = []
    for name in ("a$^$b", "x_$y^z$"):
        shutil.copytree(base / "runs" / "prev", tmp_path / name)
        dirs.append(tmp_path / name)
    res = invoke("compare", *dirs, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, (res.stderr, repr(res.exception))
    assert (tmp_path / "cmp" / "figures" / "accuracy_vs_eps.png").is_file()


def test_non_finite_training_loss_caches_nothing(ctx: Ctx):
    fresh = ctx.tmp / "fresh-store"
    path = _nan_loss(ctx)[0][0]
    assert_one_line_error(invoke("run", path, "--out", ctx.tmp / "new", "--store", fresh, "-q"), "training loss became")
    assert not list(fresh.glob("models/*/model.pt")) and not list(fresh.glob("models/*/checkpoint.pt"))
    assert not (ctx.tmp / "new").exists()


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no private tmpfs mounts here (unshare -rm)")
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_real_full_or_read_only_disk(base, tmp_path, fault):
    """A real full (or read-only) disk: the run folder on a 2 MiB tmpfs in a private mount namespace."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    make_fault = (f"dd if=/dev/zero of={mnt}/filler bs=64k count=100 2>/dev/null; " if fault == "full"
                  else f"mount -o remount,ro {mnt} && ")
    script = (
        f"mount -t tmpfs -o size=2m tmpfs {mnt} && mkdir {mnt}/runs && cp -r {base}/runs/prev {mnt}/runs/prev && "
        f"find {mnt}/runs/prev -type f -exec sha256sum {{}} + | sort > {tmp_path}/before; {make_fault}"
        f"{sys.executable} -m workbench.cli run {base}/tiny.yaml --out {mnt}/runs/prev --store {base}/store -q "
        f"2> {tmp_path}/stderr; echo $? > {tmp_path}/rc; "
        f"find {mnt}/runs/prev -type f -exec sha256sum {{}} + | sort > {tmp_path}/after; ls -a {mnt}/runs > {tmp_path}/ls"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], timeout=300, check=False)
    stderr = (tmp_path / "stderr").read_text()
    assert (tmp_path / "rc").read_text().strip() == "2", stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr
    assert ("No space left on device" if fault == "full" else "Read-only file system") in lines[-1], lines[-1]
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()
    assert ".staging-" not in (tmp_path / "ls").read_text()
