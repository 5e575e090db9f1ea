"""The rule of the report stage (rules/report.smk): the standalone HTML report."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from plmdiff.report.render import build_report, read_items


def run_report(
    items: Iterable[Mapping[str, Any]], config: Mapping[str, Any], out_path: str | os.PathLike
) -> str:
    """The report rule: render the items `report_items()` (rules/report_items.smk) hands over."""
    return build_report(read_items(items), config, out_path)
