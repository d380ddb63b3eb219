import pytest
from prefect.testing.utilities import prefect_test_harness

from flows import EPHEMERAL_SERVER_STARTUP_SECONDS


@pytest.fixture(scope="session", autouse=True)
def prefect_backend():
    with prefect_test_harness(server_startup_timeout=EPHEMERAL_SERVER_STARTUP_SECONDS):
        yield
