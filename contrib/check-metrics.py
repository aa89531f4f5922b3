#!/usr/bin/env python3
"""Every nicebill_* metric the alert rules, their tests and the Grafana dashboard name must be
one src/health.rs writes (`prometheus`). Exit 1 naming each unknown metric.

Usage: python3 contrib/check-metrics.py [FILE...]   (default: the files under contrib/)
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = [
    "contrib/prometheus/nicebill-alerts.yml",
    "contrib/prometheus/nicebill-alerts.test.yml",
    "contrib/grafana/nicebill-dashboard.json",
]


def written_metrics(health_rs: str) -> set[str]:
    """The names `health::prometheus` writes: each `metric("name", …)` call, and each
    `("name", c.field)` of the counters' loop with `_total` appended."""
    if 'nicebill_{name}' not in health_rs or 'format!("{name}_total")' not in health_rs:
        sys.exit("check-metrics: src/health.rs no longer writes `nicebill_{name}` / `{name}_total`; update this script")
    gauges = re.findall(r'\bmetric\(\s*"([a-z_]+)"', health_rs)
    counters = re.findall(r'\(\s*"([a-z_]+)",\s*c\.[a-z_]+\s*\)', health_rs)
    if not gauges or not counters:
        sys.exit("check-metrics: found no metric names in src/health.rs; update this script")
    return {f"nicebill_{n}" for n in gauges} | {f"nicebill_{n}_total" for n in counters}


def main() -> int:
    known = written_metrics((ROOT / "src/health.rs").read_text())
    files = sys.argv[1:] or [str(ROOT / f) for f in DEFAULT_FILES]
    bad = 0
    for name in files:
        path = Path(name)
        text = path.read_text()
        name = str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else name
        if name.endswith(".json"):
            json.loads(text)  # a dashboard that is not JSON fails here
        used = set(re.findall(r"\bnicebill_[a-z_]+", text))
        if not used:
            print(f"{name}: names no nicebill_* metric", file=sys.stderr)
            bad += 1
        for metric in sorted(used - known):
            print(f"{name}: {metric} is not written by src/health.rs", file=sys.stderr)
            bad += 1
        if used and used <= known:
            print(f"{name}: {len(used)} metric(s), all written by src/health.rs")
    if bad:
        print(f"check-metrics: {bad} problem(s); known metrics: {', '.join(sorted(known))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
