"""The output folder of a resumable benchmark: one JSON line per finished job, the run's configuration,
and the lock that keeps two runs out of one folder.

* Results: every finished job appends one line to a results file (write, flush, fsync: a line is the
  unit of completion). A process writes ``results.jsonl``, or its own ``results.{tag}.jsonl`` (a
  torchrun rank, a ``--shard``). :func:`read_results` reads every ``results*.jsonl`` (a torn or corrupt
  line is skipped, so its job is redone); :class:`ResultWriter` first cuts a torn last line;
  :func:`merge_results` folds the files into ``results.jsonl`` (deduplicated, sorted, atomic).
* Configuration: :func:`check_config` writes ``config.json`` (the settings the results depend on and
  the inputs' fingerprints) or checks that a rerun matches it (else refuses, or with ``force`` moves
  the previous outputs to ``superseded-<time>/``).
* Lock: :func:`lock_folder` takes an OS file lock on ``.lock`` in the folder for the whole run
  (exclusive for a run that writes ``results.jsonl``, shared for a shard, which writes only its own
  file): a second run refuses at once instead of losing results.

A job is identified by ``key(record) -> tuple`` (the bench's function); records are flat dicts.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

from ..errors import InputError

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None

RESULTS = "results.jsonl"
CONFIG = "config.json"
LOCK = ".lock"


# --- results ------------------------------------------------------------------------------------------
def results_path(out, tag: str | None = None) -> Path:
    """``out/results.jsonl``, or ``out/results.{tag}.jsonl`` for one process of a split run."""
    return Path(out) / (RESULTS if tag is None else f"results.{tag}.jsonl")


def result_files(out) -> list[Path]:
    files = sorted(p for p in Path(out).glob("results*.jsonl") if p.is_file())
    return sorted(files, key=lambda p: (p.name != RESULTS, p.name))  # results.jsonl first


def read_lines(path: Path, key):
    """Yield the valid records of a JSON-lines file; a torn or corrupt line (no valid ``key``) is skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            key(rec)
        except (ValueError, KeyError, TypeError):
            continue
        yield rec


def read_results(out, key) -> dict:
    """{key: record} from every ``results*.jsonl`` in ``out`` (the first record of a key wins)."""
    done: dict = {}
    for path in result_files(out):
        for rec in read_lines(path, key):
            done.setdefault(key(rec), rec)
    return done


def repair_tail(path: Path) -> None:
    """Cut a torn last line (no final newline) so the next append starts a fresh line."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


class ResultWriter:
    """Appends one JSON line per finished job: write, flush, fsync."""

    def __init__(self, path: Path):
        self.path = Path(path)
        repair_tail(self.path)
        self.f = open(self.path, "a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (fsync, rename)."""
    from ..commands.outputs import write_text

    write_text(path, text)  # a failure or Ctrl-C leaves the previous file and no temporary one


def merge_results(out, key, remove_parts: bool = True) -> dict:
    """Merge every ``results*.jsonl`` into ``results.jsonl`` (deduplicated, sorted by key; written
    atomically); then, with ``remove_parts``, delete the per-rank / per-shard files."""
    out = Path(out)
    parts = [p for p in result_files(out) if p.name != RESULTS]
    done = read_results(out, key)
    atomic_text(out / RESULTS, "".join(json.dumps(done[k]) + "\n" for k in sorted(done)))
    if remove_parts:
        for p in parts:
            p.unlink(missing_ok=True)
    return done


# --- configuration ------------------------------------------------------------------------------------
def supersede(out: Path, outputs=()) -> Path:
    """Move a previous run's outputs (config, results files and the names in ``outputs``) into
    ``out/superseded-<time>/``; nothing is deleted."""
    dest = out / f"superseded-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for p in list(out.iterdir()):
        if p.name.startswith("superseded-"):
            continue
        if p.name == CONFIG or p.name in outputs or (p.name.startswith("results") and p.suffix == ".jsonl"):
            shutil.move(str(p), str(dest / p.name))
    return dest


def stray_outputs(out: Path, outputs=()) -> list[str]:
    """The names in ``out`` that a run would write or move (config, results files, ``outputs``)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name == CONFIG or p.name in outputs
                  or (p.name.startswith("results") and p.suffix == ".jsonl"))


def _upgraded(old: dict, new: dict) -> dict:
    """Settings written before a key existed. ``cmi.grad`` (recorded when a run has cmi+X jobs) was
    not recorded before, while the default CMI gradient changed (autodiff, then fd): such a record's
    gradient is unknown, "unrecorded", which matches none, so a resume cannot mix two gradients."""
    cmi, new_cmi = old.get("cmi"), new.get("cmi")
    if isinstance(cmi, dict) and isinstance(new_cmi, dict) and "grad" in new_cmi and "grad" not in cmi:
        old = {**old, "cmi": {**cmi, "grad": "unrecorded"}}
    return old


def _differences(old_settings, settings: dict, old_inputs: dict, inputs: dict) -> list[str]:
    if old_settings is None:
        return ["config.json is unreadable"]
    old_settings = _upgraded(old_settings, settings)
    diffs = [f"{k}: {old_settings.get(k)!r} before, {settings.get(k)!r} now"
             for k in sorted(set(old_settings) | set(settings)) if old_settings.get(k) != settings.get(k)]
    changed = [i for i in inputs if i in old_inputs and old_inputs[i] != inputs[i]]
    if changed:
        diffs.append(f"{len(changed)} image(s) changed content, e.g. {changed[0]!r}")
    return diffs


def check_config(out: Path, settings: dict, fingerprints: dict, info: dict, force: bool,
                 allow_force: bool = True, outputs=()) -> None:
    """Write ``out/config.json``, or check that the previous run's settings and inputs match (else
    refuse, or with ``force`` move the previous outputs aside and start over)."""
    path = out / CONFIG
    images = dict(fingerprints)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            old_settings, old_images = old["settings"], old.get("images", {})
        except (ValueError, KeyError, TypeError):
            old_settings, old_images = None, {}
        diffs = _differences(old_settings, json.loads(json.dumps(settings)), old_images, images)
        if diffs:
            if not force:
                raise InputError(
                    f"{out} holds results of a run with different settings ({'; '.join(diffs[:6])}). "
                    f"Use another --out, or pass --force to move the old outputs to {out}/superseded-<time>/ "
                    f"and start over.")
            if not allow_force:
                raise InputError("--force cannot be combined with --shard (shards would move each other's "
                                 "results); clear the output folder or use a new --out")
            dest = supersede(out, outputs)
            print(f"--force: moved the previous outputs to {dest}", file=sys.stderr)
            old_images = {}
        elif force:
            print(f"--force: {out} holds a run with the same settings; nothing moved (its finished jobs are kept)",
                  file=sys.stderr)
        images = {**old_images, **images}
    elif force:  # no earlier run here: say so, and move aside any files of the names a run writes
        stray = stray_outputs(out, outputs)
        if stray and not allow_force:
            raise InputError("--force cannot be combined with --shard (shards would move each other's "
                             "results); clear the output folder or use a new --out")
        if stray:
            dest = supersede(out, outputs)
            print(f"--force: {out} held no bench run (no {CONFIG}); moved {', '.join(stray)} to {dest}",
                  file=sys.stderr)
        else:
            print(f"--force: no earlier run in {out}; nothing to move, starting a new run", file=sys.stderr)
    atomic_text(path, json.dumps({"settings": settings, "info": info, "images": images}, indent=1) + "\n")


# --- the lock -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def lock_folder(out, shared: bool = False, tag: str | None = None):
    """Hold an OS lock on ``out/.lock`` (created) while the block runs; refuse at once if another run
    holds it. ``shared``: a shard, which writes only ``results.{tag}.jsonl``; shards of one layout run
    side by side, but not beside a run that writes ``results.jsonl``, nor beside the same shard
    (``out/.lock.{tag}`` is held exclusively)."""
    if fcntl is None:
        yield
        return
    out = Path(out)
    with contextlib.ExitStack() as stack:
        _flock(stack, out / LOCK, shared, out)
        if shared and tag is not None:
            _flock(stack, out / f"{LOCK}.{tag}", False, out)
        yield


def _flock(stack, path: Path, shared: bool, out: Path) -> None:
    f = stack.enter_context(open(path, "a+"))
    try:
        fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"another run is using {out} (it holds the lock {path}); wait for it to finish, "
                         f"or use another --out") from None
    stack.callback(fcntl.flock, f.fileno(), fcntl.LOCK_UN)
