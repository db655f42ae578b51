"""How spend is split: by AWS service, by usage type, or by the value of one cost allocation tag.

GetCostAndUsage's `GroupBy` takes `{"Type": "DIMENSION", "Key": "SERVICE" | "USAGE_TYPE"}` or
`{"Type": "TAG", "Key": "<tag key>"}` (AWS Cost Explorer API reference, `GroupDefinition`). A
tag group's `Keys[0]` is `"<tag key>$<value>"`, and spend on resources without the tag comes
as `"<tag key>$"` (the same shape hic-infra/hic-aws-costing-tools builds in
`hic_aws_costing_tools/aws_costs.py`: `f"{service_or_tag}${t}"`). `name_of` turns those keys
into what a person reads, and names the untagged spend `UNTAGGED`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from bot.context import Runtime

UNTAGGED = "(untagged)"
GROUPING_LABEL = "service|usage-type|tag:KEY"
# Cost allocation tag keys: up to 128 letters, digits, spaces and + - = . _ : / @ (AWS
# Billing user guide, "User-defined cost allocation tags"); one word here, so no spaces.
_TAG_KEY = re.compile(r"^[\w+\-=.:/@]{1,128}$")


@dataclass(frozen=True)
class Grouping:
    """One way of splitting spend; `label` names it in replies ("service", "tag Name")."""

    kind: Literal["DIMENSION", "TAG"]
    key: str
    label: str

    def group_by(self) -> dict[str, Any]:
        """GetCostAndUsage's GroupBy entry."""
        return {"Type": self.kind, "Key": self.key}

    def name_of(self, raw: str) -> str:
        """A group's Keys[0] as shown: the tag's value ("Name$limesurvey" → "limesurvey"),
        `UNTAGGED` for "Name$"; a dimension's value unchanged."""
        if self.kind != "TAG":
            return raw
        prefix = f"{self.key}$"
        value = raw[len(prefix) :] if raw.startswith(prefix) else raw
        return value or UNTAGGED


BY_SERVICE = Grouping("DIMENSION", "SERVICE", "service")
BY_USAGE_TYPE = Grouping("DIMENSION", "USAGE_TYPE", "usage type")


def parse_grouping(text: str) -> Grouping:
    """`service`, `usage-type` or `tag:KEY` (e.g. `tag:Name`); ValueError for anything else."""
    word = text.strip()
    low = word.lower()
    if low == "service":
        return BY_SERVICE
    if low in ("usage-type", "usage_type", "usagetype"):
        return BY_USAGE_TYPE
    if low.startswith("tag:"):
        key = word[4:]
        if not _TAG_KEY.match(key):
            raise ValueError(f"`{key}` is not a tag key (e.g. tag:Name or tag:team)")
        return Grouping("TAG", key, f"tag {key}")
    raise ValueError(f"`{text}` is not a grouping; use service, usage-type or tag:KEY")


def grouping(word: str, rt: Runtime) -> Grouping:
    """The `--by` converter: see `parse_grouping`."""
    return parse_grouping(word)
