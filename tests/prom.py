"""Reading Prometheus text exposition in tests."""

from __future__ import annotations


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one series `name` whose labels include `labels`."""
    found = []
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        if metric == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            found.append(float(value))
    assert len(found) == 1, f"{name}{labels}: {len(found)} series"
    return found[0]
