"""Prometheus metrics, in a registry of their own so several bots can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Every metric the core exports; features add theirs to `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commands = Counter(
            "infrabot_commands_total",
            "Commands run, by command and outcome.",
            ["command", "outcome"],
            registry=self.registry,
        )
        self.command_seconds = Histogram(
            "infrabot_command_duration_seconds",
            "Time from a command's arrival to its handler's end.",
            ["command"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=self.registry,
        )
        self.sync_lag = Gauge(
            "infrabot_sync_lag_seconds",
            "Age of the newest message when the sync delivered it.",
            registry=self.registry,
        )
        self.sync_seconds = Histogram(
            "infrabot_sync_request_seconds",
            "Duration of sync requests (long-polls included).",
            registry=self.registry,
        )
        self.errors = Counter(
            "infrabot_errors_total",
            "Errors by where they happened.",
            ["where"],
            registry=self.registry,
        )
        self.messages_sent = Counter(
            "infrabot_messages_sent_total", "Events sent to the homeserver.", registry=self.registry
        )
        self.outbox_pending = Gauge(
            "infrabot_outbox_pending", "Messages waiting in the outbox.", registry=self.registry
        )
        self.outbox_refused = Counter(
            "infrabot_outbox_refused_total",
            "Messages the homeserver refused for good, by errcode and what became of them "
            "(given_up, already_delivered).",
            ["errcode", "outcome"],
            registry=self.registry,
        )
        self.job_runs = Counter(
            "infrabot_job_runs_total",
            "Scheduled job runs by job and outcome.",
            ["job", "outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The exposition text for /metrics."""
        return generate_latest(self.registry)
