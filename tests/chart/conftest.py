"""Fixtures of the chart tests: the chart loaded once, and a caching render()."""

from __future__ import annotations

from typing import Any, Dict, Optional

import helm_python
import pytest

from chartlib import CHART_DIR, NAMESPACE, RELEASE, Rendered


@pytest.fixture(scope="session")
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart):
    """render(values, name=..., namespace=...) -> Rendered, cached per arguments."""
    cache: Dict[str, Rendered] = {}

    def _render(
        values: Optional[Dict[str, Any]] = None,
        *,
        name: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> Rendered:
        key = repr((values, name, namespace))
        if key not in cache:
            cache[key] = Rendered(chart.render(values=values or {}, name=name, namespace=namespace))
        return cache[key]

    return _render
