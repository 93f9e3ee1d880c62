"""Real servers the cluster tests start and stop: PostgreSQL, the MLflow tracking server, Ray nodes, each in
its own process group on a loopback address, and what stops a Ray node as a lost machine would."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"{url}: the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # it answers (e.g. 401 without the cluster's token): it is up
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def stop_groups(groups: list[int]) -> None:
    """SIGTERM, then SIGKILL, every process group a test started."""
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    time.sleep(2)
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


# ------------------------------------------------------------------------------------ PostgreSQL
def postgres_bin(name: str) -> str:
    """Debian keeps PostgreSQL's server programs out of PATH, under /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: apt-get install postgresql (.ci/run does)")
    return found


class Postgres:
    """A fresh PostgreSQL cluster on 127.0.0.1, trust authentication (loopback only), one database, in a folder of
    its own under /tmp. initdb refuses to run as root: as root, the server runs as Debian's ``postgres`` user (and
    its folder sits where that user can reach it, not under pytest's root-only tmp_path)."""

    def __init__(self, database: str = "mlflow"):
        self.folder, self.database, self.port = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp")), database, free_port()
        self.data, self.sockets = self.folder / "data", self.folder / "sockets"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(self, *command: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self) -> str:
        self.sockets.mkdir(parents=True)
        if self.as_user:
            self.folder.chmod(0o755)
            shutil.chown(self.folder, "postgres")
            shutil.chown(self.sockets, "postgres")
        self.run(postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off"
        self.run(
            postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "start"
        )
        self.run(postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)
        # SQLAlchemy 2.1 takes psycopg 3 for a bare postgresql://; MLflow's docs and our server use psycopg2.
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------------------------------ MLflow
def start_mlflow_server(host: str, backend: str, artifacts: str, log: Path, env: dict[str, str]) -> tuple[int, str]:
    """(process group, URL) of ``mlflow server`` with one worker, answering /health."""
    port = free_port(host)
    with open(log, "w") as out:  # the server keeps its own copy of the descriptor
        server = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--workers",
                "1",
                "--host",
                host,
                "--port",
                str(port),
                "--backend-store-uri",
                backend,
                "--artifacts-destination",
                artifacts,
                "--allowed-hosts",  # the API refuses any other Host header than localhost's and private networks'
                f"{host},{host}:*,localhost,localhost:*",
            ],
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{host}:{port}"
    try:
        wait_for(f"{url}/health", 120, server)
    except TimeoutError:
        raise TimeoutError(f"mlflow server did not start: {log.read_text()[-3000:]}") from None
    return server.pid, url


# ------------------------------------------------------------------------------------ Ray nodes
def ray_start(args: list[str], env: dict[str, str]) -> int:
    """``ray start ...`` in its own process group; returns the group (the daemons stay in it)."""
    node = subprocess.Popen(
        [str(BIN / "ray"), "start", "--disable-usage-stats", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = node.communicate(timeout=180)
    if node.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed: {out.decode()[-3000:]}")
    return node.pid


def node_processes(temp_dir: str) -> list:
    """A Ray node's processes: its daemons name its temp dir; its workers are its raylet's children."""
    import psutil

    daemons = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    return daemons + [child for p in daemons for child in p.children(recursive=True)]


def kill_node(temp_dir: str) -> int:
    """Stop a Ray node as a lost machine stops: every process of it SIGKILLed at once. Returns how many."""
    import psutil

    processes = {p.pid: p for p in node_processes(temp_dir)}
    for process in processes.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return len(processes)


def node_of_process(marker: str, temp_dirs: list[str]) -> str | None:
    """The temp dir of the node whose worker process is titled ``marker`` (e.g. ray::RayTrainWorker), if any."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if marker not in " ".join(process.info["cmdline"] or []):
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            for parent in process.parents():
                line = " ".join(parent.cmdline())
                for temp_dir in temp_dirs:
                    if temp_dir in line:
                        return temp_dir
    return None
