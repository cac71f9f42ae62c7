"""The chaos tests run only when asked for: ``pytest -m chaos`` or ``KOSMO_CHAOS=1``."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = "chaos" in (config.getoption("markexpr") or "") or os.environ.get("KOSMO_CHAOS")
    for item in items:
        if item.get_closest_marker("chaos") is None:
            continue
        if not wanted:
            item.add_marker(pytest.mark.skip(reason="chaos run: pytest -m chaos to run it"))
        elif shutil.which("mosquitto") is None:
            item.add_marker(pytest.mark.skip(reason="the chaos run needs mosquitto on PATH"))
