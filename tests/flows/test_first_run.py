"""A local run on a fresh machine, as the README's first command makes it: no PREFECT_API_URL and no Prefect database
yet, so Prefect starts its temporary server, which first creates and migrates the database. The session's test
harness waits up to 120 s for its own server, which is how a 20 s wait that failed on a 2-core machine went unseen."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FLOW = """
import flows
from prefect import flow
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

@flow
def hello() -> str:
    return "hello"

print(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), hello())
"""


def test_first_local_run_starts_prefects_temporary_server_on_a_new_database(tmp_path):
    import tomllib

    # The wait the repository's prefect.toml sets, where the README's commands start
    settings = tomllib.loads((REPO / "prefect.toml").read_text())
    EPHEMERAL_SERVER_STARTUP_SECONDS = settings["server"]["ephemeral"]["startup_timeout_seconds"]
    assert EPHEMERAL_SERVER_STARTUP_SECONDS >= 60

    unset = ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    out = subprocess.run([sys.executable, "-c", FLOW], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].split() == [str(EPHEMERAL_SERVER_STARTUP_SECONDS), "hello"]
    assert (tmp_path / "prefect" / "prefect.db").is_file()  # the run made its database: it was a first run
