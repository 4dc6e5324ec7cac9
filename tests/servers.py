"""Real servers for the stack tests, started on this machine and stopped after: PostgreSQL
(Debian's binaries, a fresh cluster in a temporary directory), Redis (Debian's
``redis-server``, no persistence) and an MLflow tracking server on that Postgres with its
artifacts served by itself. ``make servers`` installs the Debian packages when missing.

The MLflow server is reached by the machine's host name, not 127.0.0.1: MLflow 3 refuses a
Host header that is not localhost or a private IP unless ``--allowed-hosts`` names it, and
the server runs the command docker/compose.yaml gives the ``mlflow`` service
(``compose_command``: only the port, database, artifact folder and host name are this
machine's), so what the deployment runs is what the tests exercise."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Debian's PostgreSQL (the newest installed major version)
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name),
             default=Path("/usr/lib/postgresql/15/bin"))
REDIS = Path("/usr/bin/redis-server")
DATABASES = ("airflow", "freshen", "mlflow")  # as docker/initdb.sql creates them beside Airflow's
COMPOSE = Path(__file__).resolve().parents[1] / "docker" / "compose.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 90.0, log=None, every: float = 0.5):
    """Poll ``check`` until it returns something truthy, and return that; a connection error
    counts as not yet. On timeout the error carries ``log``'s tail (a file, or a function
    returning text)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if got := check():
                return got
        except OSError:  # requests' connection errors too
            pass
        time.sleep(every)
    if callable(log):
        tail = log()
    else:
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class Servers:
    root: Path
    host: str = field(default_factory=socket.gethostname)
    pg_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    mlflow_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg2://freshen@127.0.0.1:{self.pg_port}/{name}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def start(self) -> Servers:
        missing = [str(p) for p in (PG_BIN / "initdb", REDIS) if not p.exists()]
        assert not missing, f"{', '.join(missing)} missing: `make servers` installs postgresql and redis-server"
        self.root.mkdir(parents=True, exist_ok=True)
        self._postgres()
        self._redis()
        self._mlflow()
        return self

    def _postgres(self) -> None:
        pg = self.root / "pg"
        pg.mkdir()
        if os.geteuid() == 0:
            shutil.chown(pg, "postgres")
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(pg / "data"), "-U", "freshen",
                                     "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True)
        log = pg / "server.log"
        self.procs.append(subprocess.Popen(
            _as_postgres([str(PG_BIN / "postgres"), "-D", str(pg / "data"), "-p", str(self.pg_port),
                          "-k", str(pg), "-c", "listen_addresses=127.0.0.1"]),
            stdout=open(log, "wb"), stderr=subprocess.STDOUT))
        wait_for(lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.pg_port)],
                                        capture_output=True).returncode == 0, "PostgreSQL", log=log)
        for db in DATABASES:
            self.create_database(db)

    def create_database(self, name: str) -> str:
        """A new database on the test's PostgreSQL (one per test that needs its own), as a URL."""
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "freshen", name],
                       check=True, capture_output=True)
        return self.database_url(name)

    def _redis(self) -> None:
        log = self.root / "redis.log"
        self.procs.append(subprocess.Popen(
            [str(REDIS), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT))

        def pong() -> bool:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(pong, "Redis", log=log)

    def _mlflow(self) -> None:
        log = self.root / "mlflow.log"
        cmd = compose_command("mlflow", port=str(self.mlflow_port), backend_store_uri=self.database_url("mlflow"),
                              artifacts_destination=str(self.root / "mlartifacts"),
                              allowed_hosts=f"{self.host}:{self.mlflow_port}")
        assert cmd[:2] == ["mlflow", "server"] and "--serve-artifacts" in cmd
        cmd[0] = str(Path(sys.executable).with_name("mlflow"))
        self.procs.append(subprocess.Popen([*cmd, "--workers", "1"], stdout=open(log, "wb"),
                                           stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}))
        import requests

        wait_for(lambda: requests.get(f"{self.tracking_uri}/health", timeout=2).status_code == 200,
                 "the MLflow server", timeout=180, log=log)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def compose_command(service: str, **values: str) -> list[str]:
    """``service``'s command in docker/compose.yaml, split as a shell splits it, with the values
    of the flags named here (``backend_store_uri`` is ``--backend-store-uri``) replaced by this
    machine's. Every flag named must be in the file: a flag the deployment loses fails here."""
    import shlex

    import yaml

    cmd = shlex.split(yaml.safe_load(COMPOSE.read_text())["services"][service]["command"])
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        assert flag in cmd, f"docker/compose.yaml: the {service} command has no {flag}"
        cmd[cmd.index(flag) + 1] = value
    return cmd


def compose_environment(values: dict[str, str], drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment docker/compose.yaml gives freshen's services (``x-freshen``), with
    ``values`` in place of this machine's addresses, secrets and paths, and the keys of
    ``drop`` left out (their defaults apply). Every key named must be in the file, and none of
    the file's ``${...}`` may be left unreplaced."""
    import yaml

    env = {k: str(v) for k, v in yaml.safe_load(COMPOSE.read_text())["x-freshen"]["environment"].items()}
    missing = [k for k in (*values, *drop) if k not in env]
    assert not missing, f"docker/compose.yaml: x-freshen's environment has no {missing}"
    env = {k: v for k, v in env.items() if k not in drop} | values
    left = [k for k, v in env.items() if "${" in v]
    assert not left, f"docker/compose.yaml: {left} need this machine's values"
    return env


def worker_name() -> str:
    """The host name a test's Celery worker reports to Airflow (``[core] hostname_callable``),
    so a task instance tells which of two workers on one machine ran it."""
    return os.environ["FRESHEN_TEST_WORKER"]
