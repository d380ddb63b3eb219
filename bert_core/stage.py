"""Stage outputs that are safe to rerun: content keys, atomic directories and skip-if-done records.

Idempotence lives here rather than in Prefect's cache because Prefect's default cache key hashes a task's own
source, not the library it calls. A stage writes its whole output under a temporary name and renames it into place
only when it is complete, with a `stage.json` record holding the key of its inputs and config. A later run with the
same key finds that record and skips the work; a half-written output never carries a record, so it is redone.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import typing
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bert_core.config import ConfigError

logger = logging.getLogger(__name__)

STAGE_RECORD = "stage.json"
T = TypeVar("T")


def bertflow_home() -> Path:
    """The data directory: `$BERTFLOW_HOME`, default `~/.bertflow` (stage outputs, MLflow store, user tasks)."""
    return Path(os.environ.get("BERTFLOW_HOME", Path.home() / ".bertflow")).expanduser().resolve()


def to_jsonable(value: Any) -> Any:
    """Convert dataclasses, paths and tuples into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def hash_json(value: Any) -> str:
    """A stable sha256 of any JSON-able value (keys sorted)."""
    blob = json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def hash_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(paths: Iterable[str | Path]) -> str:
    """A sha256 over the names and contents of files, independent of the order they are given in."""
    entries = sorted((Path(p).name, hash_file(p)) for p in paths)
    return hash_json(entries)


def hash_path(path: str | Path) -> str:
    """A sha256 of a file, or of the names and contents of the files directly inside a directory."""
    path = Path(path)
    return hash_files(sorted(p for p in path.iterdir() if p.is_file())) if path.is_dir() else hash_file(path)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config dataclass from a dict (nested configs from nested dicts), rejecting unknown keys; the
    dataclass checks its values (`bert_core.config`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} is {type(data).__name__}; expected a JSON object of options")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s) {unknown}; expected one of {sorted(names)}")
    required = sorted(f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                      and f.name not in data)
    if required:
        raise ConfigError(f"{cls.__name__} option(s) {required} missing; expected them to be given")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint = hints.get(name)
        nested = next((h for h in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(h)), None)
        if isinstance(value, dict) and nested is not None:  # a config, or an optional one (`MaskingConfig | None`)
            value = config_from_dict(nested, value)
        elif isinstance(value, list):
            # JSON has no tuples; configs use tuples so that they stay hashable and frozen.
            value = tuple(value)
        values[name] = value
    return cls(**values)


def read_config_file(cls: type, path: str | Path) -> dict[str, Any]:
    """A config file's JSON object; a missing file or bad JSON is a `ConfigError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; expected a JSON file of {cls.__name__} options") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); expected a JSON object of {cls.__name__} options") from None


def write_json(path: str | Path, value: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(value), f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# Temporary siblings of an output are named `.<name>.tmp-<host>-<pid>-<tag>` (`.old-` for a replaced output on its
# way out), so that a later run can tell a killed writer's leftovers from a live concurrent run's.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<host>[^/]+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{12})$")


def _temporary_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries of `path` left by writers that were killed: those whose recorded writer process, on
    this host, no longer runs. A live writer's (a concurrent run) and another host's are left alone."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    host = socket.gethostname()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*"):
        match = _TEMPORARY.match(candidate.name)
        if not match or match["name"] != path.name or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        logger.info("removed %s, left by a writer (pid %d) that no longer runs", candidate, pid)
        removed.append(candidate)
    return removed


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path that replaces `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def completed_stage(output_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The stage record of a finished output whose key matches, else None."""
    record_path = Path(output_dir) / STAGE_RECORD
    if not record_path.is_file():
        return None
    record = read_json(record_path)
    if record.get("key") != key:
        logger.info("%s holds a stage built from other inputs or config; it will be rebuilt", output_dir)
        return None
    return record


@contextmanager
def atomic_directory(output_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `output_dir` only if the block finishes without error.

    Temporaries that killed writers of the same output left behind are removed first (`remove_stale_temporaries`).
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)
    tmp = _temporary_name(output_dir)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if output_dir.exists():
        old = _temporary_name(output_dir, "old")
        os.replace(output_dir, old)
    os.replace(tmp, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_stage_record(directory: str | Path, *, key: str, stage: str, config: Any, outputs: dict[str, Any]) -> None:
    write_json(Path(directory) / STAGE_RECORD, {"key": key, "stage": stage, "config": config, "outputs": outputs})


def no_progress_bar(accelerator) -> bool:
    """Whether to hide tqdm bars: on every rank but the local main one, and wherever TQDM_DISABLE is set (an
    explicit `disable=` argument would override tqdm's own reading of that variable). The Prefect tasks set it so
    that the logs get one line per logging step instead of one per training step."""
    return not accelerator.is_local_main_process or os.environ.get("TQDM_DISABLE", "").lower() in {"1", "true", "yes"}


def end_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """Pool-worker initializer: exit within `poll_seconds` once the process that started the pool is gone.

    A worker of a killed (kill -9) stage otherwise waits on its task queue for a minute or more, keeping the
    forkserver and resource tracker alive with it. The parent is named by pid because a forkserver's workers are
    children of the forkserver, not of the stage.
    """
    def watch() -> None:
        while pid_alive(parent_pid):
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def map_units(function: typing.Callable[[dict[str, Any]], T], specs: list[dict[str, Any]], executor=None, *,
              cost: typing.Callable[[dict[str, Any]], float] = lambda spec: 0.0) -> list[T]:
    """`function` over a stage's unit specs (plain data), in this process or on a `concurrent.futures` executor
    (a process pool, a Dask client's `get_executor()`); results in spec order whatever the order of completion.

    The costliest units are submitted first, so that a long one does not start last and leave the others idle.
    """
    if executor is None or len(specs) <= 1:
        return [function(spec) for spec in specs]
    order = sorted(range(len(specs)), key=lambda i: -cost(specs[i]))
    results = dict(zip(order, executor.map(function, [specs[i] for i in order])))
    return [results[i] for i in range(len(specs))]


# The environment of a data worker that owns one core (a pool or Dask cluster of one process per core): the
# tokenizer's Rust threads and any OpenMP pool keep to it instead of each worker spreading over every core.
SINGLE_THREADED = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


# Dask settings for the data clusters: the workers' statistical profiler samples every thread's stack 100 times a
# second and the scheduler and nannies tick every 20 ms; with one worker per core that CPU is taken from the tasks
# (measured on 2 cores, examples stage: 1.74x with the defaults, 1.81x with these, medians of 3).
DATA_WORKER_DASK_CONFIG = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                           "distributed.admin.system-monitor.interval": "2s"}


@contextmanager
def local_data_cluster(n_workers: int, env: dict[str, str] | None = None) -> Iterator[typing.Any]:
    """A Dask LocalCluster of `n_workers` single-threaded processes (`SINGLE_THREADED` plus `env` in each), with
    `DATA_WORKER_DASK_CONFIG`: the cluster a data stage starts for itself, and the one its benchmarks measure."""
    import dask  # lazy: every stage imports this module; only a pipeline's data cluster needs Dask, a slow import
    from distributed import LocalCluster  # lazy: as dask

    with dask.config.set(DATA_WORKER_DASK_CONFIG), \
            LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         env={**SINGLE_THREADED, **(env or {})}) as cluster:
        yield cluster


def _single_threaded_worker(parent_pid: int) -> None:
    """Pool-worker initializer: one thread for the tokenizer and OpenMP (the pool has one process per core), and
    exit with the stage that started the pool."""
    os.environ.update(SINGLE_THREADED)
    end_with_parent(parent_pid)


@contextmanager
def worker_pool(workers: int, *, preload: list[str]) -> Iterator[typing.Any]:
    """A pool of `workers` single-threaded processes (forkserver, `preload` modules imported once), for
    `map_units`; None for one worker: the stage runs in this process."""
    if workers <= 1:
        yield None
        return
    import multiprocessing  # lazy: every CLI run imports this module; a worker pool is a data stage's alone
    from concurrent.futures import ProcessPoolExecutor  # lazy: as multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_single_threaded_worker,
                             initargs=(os.getpid(),)) as pool:
        yield pool


def default_work_dir(work_dir: str | None) -> Path:
    """Stage outputs live under the project data directory unless a work_dir is given."""
    return Path(work_dir) if work_dir else bertflow_home() / "work"


def balanced_batches(items: list, sizes: list[float], num_batches: int) -> list[list]:
    """Split items into about `num_batches` batches of similar total size, keeping their order inside each.

    One Prefect task per batch instead of per item keeps the orchestration overhead (API calls, state changes)
    small next to the work when there are thousands of small items.
    """
    loads = [0.0] * max(1, min(num_batches, len(items)))
    batches: list[list[int]] = [[] for _ in loads]
    for index in sorted(range(len(items)), key=lambda i: -sizes[i]):
        target = loads.index(min(loads))
        batches[target].append(index)
        loads[target] += sizes[index]
    return [[items[i] for i in sorted(batch)] for batch in batches if batch]
