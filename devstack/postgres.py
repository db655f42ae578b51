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
from pathlib import Path

import psycopg

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
