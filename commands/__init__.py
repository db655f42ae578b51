"""Every feature's router, listed explicitly: removing a feature is deleting one line."""

from bot.registry import Router
from commands import alerts, backups, core, costs, deploy

ROUTERS: list[Router] = [
    core.router,
    alerts.router,
    backups.router,
    deploy.router,
    costs.router,
]
