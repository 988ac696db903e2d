"""ComCLIP tests: one torch thread while they run (tiny models on a shared 2-core machine: extra OpenMP threads only
contend), restored afterwards."""

import pytest

from tests.conftest import single_torch_thread


one_torch_thread = pytest.fixture(autouse=True, scope="package")(single_torch_thread)
