"""Start, check and stop a local Prefect server and MLflow tracking server, and set up bertflow's work pools.

    python -m deployments.servers start     # both servers on 127.0.0.1, SQLite backends, wait until healthy
    python -m deployments.servers setup     # work pools + concurrency limits on the Prefect server
    python -m deployments.servers status
    python -m deployments.servers stop      # SIGTERM each process group, SIGKILL after a grace period

Both bind to 127.0.0.1 unless `--host` says otherwise (exposing them is a deliberate choice: neither has
authentication here). State lives under the data directory (`$BERTFLOW_HOME`, default ~/.bertflow):
`prefect/prefect.db`, the same `mlflow.db` and `mlartifacts/` that embedded runs use (so runs made without a server
show up in its UI), and `servers/<name>.pid|.log`. MLflow runs with one worker and no job runner, Prefect with one
worker: about 0.5 GB and 0.25 GB (see ECOSYSTEM.md). `env` prints the variables a shell or worker needs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks import REGISTRY_LIMIT, TRAINING_TAG

PROCESS_POOL, GPU_POOL = "bertflow-process", "bertflow-gpu"


@dataclass(frozen=True)
class Settings:
    home: Path
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def state(self) -> Path:
        return self.home / "servers"

    def env(self) -> dict[str, str]:
        """What a shell, a worker or `prefect deploy` needs to use these servers."""
        return {"PREFECT_API_URL": self.prefect_api_url, "MLFLOW_TRACKING_URI": self.mlflow_url,
                "BERTFLOW_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "MLFLOW_DISABLE_TELEMETRY": "true"}


def _commands(s: Settings) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """name -> (command, extra environment, health URL)."""
    bin_dir = Path(sys.executable).parent
    prefect_db = s.home / "prefect" / "prefect.db"
    prefect = ([str(bin_dir / "prefect"), "server", "start", "--host", s.host, "--port", str(s.prefect_port),
                "--analytics-off", "--workers", "1"],
               {"PREFECT_HOME": str(s.home / "prefect"),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_db}",
                "PREFECT_UI_API_URL": s.prefect_api_url},
               f"{s.prefect_api_url}/health")
    mlflow = ([str(bin_dir / "mlflow"), "server", "--host", s.host, "--port", str(s.mlflow_port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{s.home / 'mlflow.db'}",
               "--artifacts-destination", str(s.home / "mlartifacts")],
              {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
              f"{s.mlflow_url}/health")
    return {"prefect": prefect, "mlflow": mlflow}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - our own loopback server
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _pid(s: Settings, name: str) -> int | None:
    path = s.state / f"{name}.pid"
    if not path.is_file():
        return None
    pid = int(path.read_text().strip() or 0)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        path.unlink(missing_ok=True)
        return None
    return pid


def start(s: Settings, names: tuple[str, ...] = ("prefect", "mlflow"), timeout_seconds: float = 120) -> dict:
    s.state.mkdir(parents=True, exist_ok=True)
    (s.home / "prefect").mkdir(parents=True, exist_ok=True)
    (s.home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    commands, started = _commands(s), {}
    for name in names:
        command, extra, health = commands[name]
        if _pid(s, name) and _healthy(health):
            started[name] = {"pid": _pid(s, name), "url": health, "already_running": True}
            continue
        if _healthy(health):
            raise RuntimeError(f"something else already serves {health}; stop it or pick another port")
        env = {**os.environ, **extra}
        env.pop("PREFECT_API_URL", None)  # the server must not try to talk to itself as a client first
        log = open(s.state / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=s.home,
                                   start_new_session=True)  # its own process group: stop() ends its children too
        (s.state / f"{name}.pid").write_text(str(process.pid))
        started[name] = {"pid": process.pid, "url": health, "process": process}
    deadline = time.monotonic() + timeout_seconds
    for name, info in started.items():
        while not _healthy(info["url"]):
            process = info.get("process")
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} server exited with code {process.returncode}; see {s.state / name}.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} server not healthy after {timeout_seconds:.0f} s; see {s.state / name}.log")
            time.sleep(0.5)
        info.pop("process", None)
    return started


def stop(s: Settings, names: tuple[str, ...] = ("prefect", "mlflow"), grace_seconds: float = 20) -> dict:
    stopped = {}
    for name in names:
        pid = _pid(s, name)
        if pid is None:
            stopped[name] = "not running"
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and _alive_group(pid):
            time.sleep(0.2)
        if _alive_group(pid):
            os.killpg(pid, signal.SIGKILL)
            stopped[name] = "killed"
        else:
            stopped[name] = "stopped"
        (s.state / f"{name}.pid").unlink(missing_ok=True)
    return stopped


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A zombie leader (started by this very process) still counts as a group member; reap it.
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def status(s: Settings) -> dict:
    return {name: {"pid": _pid(s, name), "healthy": _healthy(health), "url": health}
            for name, (_, _, health) in _commands(s).items()}


def setup(s: Settings, training_slots: int = 1, gpu_pool_slots: int = 1) -> list[str]:
    """Create the work pools and concurrency limits the deployments use (idempotent)."""
    env = {**os.environ, **s.env()}
    prefect = str(Path(sys.executable).parent / "prefect")
    steps = [
        [prefect, "work-pool", "create", PROCESS_POOL, "--type", "process", "--overwrite"],
        # One flow run at a time per GPU machine; training tasks additionally share `training_slots`.
        [prefect, "work-pool", "create", GPU_POOL, "--type", "process", "--overwrite"],
        [prefect, "work-pool", "set-concurrency-limit", GPU_POOL, str(gpu_pool_slots)],
        [prefect, "concurrency-limit", "create", TRAINING_TAG, str(training_slots)],
    ]
    done = []
    for command in steps:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} failed:\n{result.stdout}\n{result.stderr}")
        done.append(" ".join(command[1:]))
    result = subprocess.run([prefect, "global-concurrency-limit", "create", REGISTRY_LIMIT, "--limit", "1"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0 and "already exists" not in (result.stdout + result.stderr):
        raise RuntimeError(f"global-concurrency-limit create failed:\n{result.stdout}\n{result.stderr}")
    done.append(f"global-concurrency-limit {REGISTRY_LIMIT} (1 slot)")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop", "status", "setup", "env"))
    parser.add_argument("--home", type=Path, default=None, help="data directory (default: $BERTFLOW_HOME or ~/.bertflow)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--only", choices=("prefect", "mlflow"), default=None, help="start/stop only this server")
    args = parser.parse_args(argv)
    home = (args.home or Path(os.environ.get("BERTFLOW_HOME", Path.home() / ".bertflow"))).expanduser().resolve()
    s = Settings(home=home, host=args.host, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port)
    names = (args.only,) if args.only else ("prefect", "mlflow")
    if args.action == "start":
        result = start(s, names)
        print(json.dumps({k: {"pid": v["pid"], "url": v["url"]} for k, v in result.items()}, indent=2))
        print("\n# for your shell and workers:\n" + "\n".join(f"export {k}={v}" for k, v in s.env().items()))
    elif args.action == "stop":
        print(json.dumps(stop(s, names), indent=2))
    elif args.action == "status":
        print(json.dumps(status(s), indent=2))
    elif args.action == "setup":
        print("\n".join(setup(s)))
    else:
        print("\n".join(f"export {k}={v}" for k, v in s.env().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
