#!/usr/bin/env python3
"""Generate the Helm chart's CRDs from the single source in crds/.

    python hack/sync-chart-crds.py           # write charts/evaluation-operator/crds/
    python hack/sync-chart-crds.py --check   # exit 1 (and say which file) when they drift

Each chart copy is the source file, byte for byte, under a header naming its origin. Chart
copies whose source is gone are removed, so a deleted CRD does not linger in the chart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = REPO_ROOT / "crds"
CHART_CRDS_DIR = REPO_ROOT / "charts" / "evaluation-operator" / "crds"
HEADER = (
    "# GENERATED from crds/{name} by hack/sync-chart-crds.py (make chart-crds).\n"
    "# Do not edit: change crds/{name} and regenerate.\n"
)


def expected_files(source_dir: Path = SOURCE_DIR) -> dict[str, str]:
    """File name -> content the chart's crds/ directory must hold."""
    return {
        path.name: HEADER.format(name=path.name) + path.read_text()
        for path in sorted(source_dir.glob("*.yaml"))
    }


def drift(source_dir: Path = SOURCE_DIR, chart_dir: Path = CHART_CRDS_DIR) -> list[str]:
    """What differs, one line per file; empty when the chart is in sync."""
    want = expected_files(source_dir)
    have = {p.name: p.read_text() for p in sorted(chart_dir.glob("*.yaml"))}
    problems = [f"{name}: missing from the chart" for name in want if name not in have]
    problems += [f"{name}: differs from crds/{name}" for name in want
                 if name in have and have[name] != want[name]]
    problems += [f"{name}: in the chart but not in crds/" for name in have if name not in want]
    return problems


def sync(source_dir: Path = SOURCE_DIR, chart_dir: Path = CHART_CRDS_DIR) -> list[str]:
    """Write the chart's copies; return the names written or removed."""
    want = expected_files(source_dir)
    chart_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, content in want.items():
        target = chart_dir / name
        if not target.exists() or target.read_text() != content:
            target.write_text(content)
            changed.append(name)
    for stale in chart_dir.glob("*.yaml"):
        if stale.name not in want:
            stale.unlink()
            changed.append(stale.name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="report drift instead of fixing it (exit 1 on drift)")
    args = parser.parse_args(argv)
    if not any(SOURCE_DIR.glob("*.yaml")):
        print(f"no CRDs in {SOURCE_DIR}", file=sys.stderr)
        return 1
    if args.check:
        problems = drift()
        for line in problems:
            print(f"{CHART_CRDS_DIR.relative_to(REPO_ROOT)}/{line}", file=sys.stderr)
        if problems:
            print("run `make chart-crds` to regenerate", file=sys.stderr)
        return 1 if problems else 0
    for name in sync():
        print(f"updated {CHART_CRDS_DIR.relative_to(REPO_ROOT)}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
