"""A throwaway PostgreSQL cluster with WAL archiving, run as the unprivileged `postgres` user.

The archive_command succeeds only while `switch_file` exists, so a test can break and mend
archiving and watch `pg_stat_archiver` change for real.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.synapse import free_port


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (initdb, pg_ctl), newest version first."""
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"{name} not found: apt-get install postgresql")


class LocalPostgres:
    """One cluster under `workdir` (which must not be inside a root-only directory)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir.resolve()
        self.port = port or free_port()
        self.data = self.workdir / "data"
        self.archive = self.workdir / "archive"
        self.switch_file = self.workdir / "archiving-works"
        self._as_root = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        """A libpq connection string for the superuser."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """initdb (once), configure archiving, start and wait."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.archive.mkdir(exist_ok=True)
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            for path in (self.workdir, self.archive):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.workdir}'\n"
                    "wal_level = replica\narchive_mode = on\n"
                    f"archive_command = 'test -f {self.switch_file} && cp %p {self.archive}/%f'\n"
                    "archive_timeout = 0\nfsync = off\n"
                )
        self.set_archiving(True)
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.workdir / "log"), "-w", "start"
        )

    def stop(self) -> None:
        """Stop the cluster (fast mode)."""
        if (self.data / "postmaster.pid").exists():
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def add_login(self, role: str, password: str) -> None:
        """A role that must log in with `password` over TCP (scram-sha-256), as in production.

        initdb's `-A trust` lets anyone in without one; the line put before the trust lines
        makes this role's password checked. The server reloads its pg_hba.conf.
        """
        hba = self.data / "pg_hba.conf"
        line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        if line not in hba.read_text():
            hba.write_text(line + hba.read_text())
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(role), sql.Literal(password)
                )
            )
            conn.execute("SELECT pg_reload_conf()")
        # The postmaster rereads pg_hba.conf when it gets to the signal: wait until a wrong
        # password is refused, so no later test connects under the old trust rule.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user={role} dbname=postgres",
                    password="wrong-" + password,
                ).close()
            except psycopg.OperationalError:
                return
            time.sleep(0.05)
        raise RuntimeError("pg_hba.conf reload did not take effect")

    def create_database(self, name: str, owner: str, template: str = "template1") -> None:
        """A new database owned by `owner`, a copy of `template` (which nobody may be using)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(owner), sql.Identifier(template)
                )
            )

    def switch_wal(self) -> None:
        """Write a little and switch WAL segments so the archiver has something to archive."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS infrabot_demo (at timestamptz)")
            conn.execute("INSERT INTO infrabot_demo VALUES (now())")
            conn.execute("SELECT pg_switch_wal()")

    def set_archiving(self, works: bool) -> None:
        """Make the archive_command succeed (True) or fail (False)."""
        if works:
            self.switch_file.touch()
        else:
            self.switch_file.unlink(missing_ok=True)
