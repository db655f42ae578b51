"""Resources that cost money while doing nothing, with an estimated monthly price each."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.errors import RemoteError
from commands.costs.aws import AwsClients

HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class Prices:
    """USD list prices used for estimates (override in config for your region)."""

    ebs_gb_month: dict[str, float]
    snapshot_gb_month: float
    instance_hour: dict[str, float]
    previous_generation: tuple[str, ...]
    previous_generation_saving: float


@dataclass(frozen=True)
class IdleItem:
    """One resource and what it costs per month."""

    kind: str  # "volume", "snapshot", "stopped instance", "previous generation"
    region: str
    resource: str
    detail: str
    monthly: float | None  # None when the price table has no entry
    saving: float  # what acting on it would save per month
    # When `monthly` is None: the config key to add the price under, e.g.
    # "aws.prices.instance_hour: {m3.2xlarge: …}".
    missing_price: str = ""


def _missing(table: str, key: str) -> str:
    return f"aws.prices.{table}: {{{key}: …}}"


def _age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "?"
    days = (now - moment.astimezone(UTC)).days
    return f"{days} d"


def _name(tags: list[dict[str, str]] | None) -> str:
    for tag in tags or []:
        if tag.get("Key") == "Name":
            return f" ({tag.get('Value')})"
    return ""


@dataclass(frozen=True)
class IdleReport:
    """What was found, and the regions that could not be checked (region → why)."""

    items: list[IdleItem]
    failed: dict[str, str]


async def find_idle(
    aws: AwsClients,
    regions: list[str],
    prices: Prices,
    snapshot_max_age: timedelta,
    now: datetime,
) -> IdleReport:
    """Unattached volumes, own snapshots older than snapshot_max_age at `now` (aware),
    stopped instances' volumes, previous-generation types. A region that fails is reported
    in `failed` and does not hide the others; raises RemoteError only when AWS cannot say
    whose account this is (nothing could be checked)."""
    identity = await aws.call("sts", "get_caller_identity")
    account = str(identity["Account"])
    per_region = await asyncio.gather(
        *(_checked(aws, r, account, prices, snapshot_max_age, now) for r in regions)
    )
    items = [item for found, _ in per_region for item in found]
    failed = {r: why for r, (_, why) in zip(regions, per_region, strict=True) if why}
    return IdleReport(items, failed)


async def _checked(
    aws: AwsClients, region: str, account: str, prices: Prices, max_age: timedelta, now: datetime
) -> tuple[list[IdleItem], str]:
    try:
        return await _region(aws, region, account, prices, max_age, now), ""
    except RemoteError as exc:
        return [], str(exc)


async def _region(
    aws: AwsClients, region: str, account: str, prices: Prices, max_age: timedelta, now: datetime
) -> list[IdleItem]:
    items: list[IdleItem] = []
    volumes = await aws.paginate(
        "ec2",
        "describe_volumes",
        region,
        "Volumes",
        Filters=[{"Name": "status", "Values": ["available"]}],
    )
    for v in volumes:
        price = prices.ebs_gb_month.get(v.get("VolumeType", ""), None)
        monthly = None if price is None else v["Size"] * price
        items.append(
            IdleItem(
                "volume",
                region,
                v["VolumeId"] + _name(v.get("Tags")),
                f"{v['Size']} GiB {v.get('VolumeType', '?')}, unattached, "
                f"{_age(v.get('CreateTime'), now)} old",
                monthly,
                monthly or 0.0,
                "" if price is not None else _missing("ebs_gb_month", v.get("VolumeType", "?")),
            )
        )
    cutoff = now - max_age
    snapshots = await aws.paginate(
        "ec2", "describe_snapshots", region, "Snapshots", OwnerIds=["self"]
    )
    for s in snapshots:
        # Public and AWS-provided snapshots can show up too; only our own cost us money.
        if str(s.get("OwnerId")) != account or s["StartTime"].astimezone(UTC) > cutoff:
            continue
        monthly = s.get("VolumeSize", 0) * prices.snapshot_gb_month
        items.append(
            IdleItem(
                "snapshot",
                region,
                s["SnapshotId"] + _name(s.get("Tags")),
                f"{s.get('VolumeSize', 0)} GiB, {_age(s['StartTime'], now)} old"
                + (f", {s['Description'][:60]}" if s.get("Description") else ""),
                monthly,
                monthly,
            )
        )
    reservations = await aws.paginate(
        "ec2",
        "describe_instances",
        region,
        "Reservations",
        Filters=[{"Name": "instance-state-name", "Values": ["stopped", "running"]}],
    )
    instances = [i for r in reservations for i in r.get("Instances", [])]
    stopped_volume_ids = {
        m["Ebs"]["VolumeId"]: i["InstanceId"]
        for i in instances
        if i["State"]["Name"] == "stopped"
        for m in i.get("BlockDeviceMappings", [])
        if "Ebs" in m
    }
    if stopped_volume_ids:
        attached = await aws.paginate(
            "ec2", "describe_volumes", region, "Volumes", VolumeIds=sorted(stopped_volume_ids)
        )
        sizes: dict[str, float] = {}
        unpriced: dict[str, str] = {}  # instance → a volume type without a price
        for v in attached:
            price = prices.ebs_gb_month.get(v.get("VolumeType", ""))
            instance = stopped_volume_ids[v["VolumeId"]]
            if price is None:
                unpriced[instance] = v.get("VolumeType", "?")
                continue
            sizes[instance] = sizes.get(instance, 0.0) + v["Size"] * price
        for i in instances:
            if i["State"]["Name"] != "stopped":
                continue
            iid = i["InstanceId"]
            # A partial sum would understate it: no figure until every volume has a price.
            monthly = None if iid in unpriced else sizes.get(iid, 0.0)
            items.append(
                IdleItem(
                    "stopped instance",
                    region,
                    iid + _name(i.get("Tags")),
                    f"{i['InstanceType']} stopped, its volumes still billed",
                    monthly,
                    monthly or 0.0,
                    _missing("ebs_gb_month", unpriced[iid]) if iid in unpriced else "",
                )
            )
    for i in instances:
        family = i["InstanceType"].split(".")[0]
        if i["State"]["Name"] != "running" or family not in prices.previous_generation:
            continue
        hourly = prices.instance_hour.get(i["InstanceType"])
        monthly = None if hourly is None else hourly * HOURS_PER_MONTH
        items.append(
            IdleItem(
                "previous generation",
                region,
                i["InstanceId"] + _name(i.get("Tags")),
                f"{i['InstanceType']} running (a current generation type is cheaper)",
                monthly,
                (monthly or 0.0) * prices.previous_generation_saving,
                "" if hourly is not None else _missing("instance_hour", i["InstanceType"]),
            )
        )
    return items
