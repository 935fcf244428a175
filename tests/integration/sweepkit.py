"""Helpers of the sweep tests: tiny search files, `decoder sweep` worker processes, and a throwaway
PostgreSQL server (Debian's postgresql package: initdb + pg_ctl in a temporary data directory, as
the `postgres` user when run as root, since PostgreSQL refuses to run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def tiny_search(path: Path, corpus: Path, name: str, space: dict, **search) -> Path:
    """A search file over a d_model 32, 1-block model on `corpus` (a trial takes a few seconds)."""
    raw = {
        "name": name,
        "base": {
            "model": {"d_model": 32, "n_heads": 2, "n_blocks": 1, "context_length": 16},
            "data": {"corpus": str(corpus), "tokenizer": "gpt2"},
            "training": {"batch_size": 8, "max_steps": 20, "eval_interval": 5, "warmup_steps": 2, "device": "cpu",
                         "precision": "fp32", "num_threads": 1, "log_interval": 5},
            "sampling": {"max_new_tokens": 4},
        },
        "search": {"space": space, **search},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def decoder_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "decoder", *args]


def start_worker(experiment: Path, cwd: Path, log: Path, *extra: str, command: str = "sweep") -> subprocess.Popen:
    """A `decoder sweep` (or `decoder run`) worker in the background, its output in `log`."""
    args = decoder_command(command, str(experiment), "--quiet", *extra)
    if command == "sweep":
        args += ["--heartbeat", "1", "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(predicate, timeout: float = 240, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def trainings(*logs: Path) -> dict[str, int]:
    """Run id -> how many times a worker started training it from scratch ('training' lines)."""
    counts: dict[str, int] = {}
    for log in logs:
        folder_of: dict[str, str] = {}
        for line in log.read_text().splitlines() if log.is_file() else []:
            m = re.match(r"\[trial (\d+)\] .* -> .*/([0-9a-f]{10})$", line)
            if m:
                folder_of[m[1]] = m[2]
            m = re.match(r"\[trial (\d+)\] training$", line)
            if m:
                counts[folder_of[m[1]]] = counts.get(folder_of[m[1]], 0) + 1
    return counts


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as `postgres` then (the package creates it)."""
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 in a throwaway data directory; yields its base URL
    (postgresql://postgres@127.0.0.1:PORT). Fails in CI (CI set) if it cannot start; elsewhere the
    tests skip when the binaries are absent."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found; .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); CI runs these tests")
    root = Path(tempfile.mkdtemp(prefix="decoder-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    port = _free_port()
    data = root / "data"
    run = lambda args: subprocess.run(_as_server_user(args), capture_output=True, text=True, timeout=120)  # noqa: E731
    done = run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
    if done.returncode != 0:
        pytest.fail(f"initdb failed: {done.stderr or done.stdout}")
    done = run([pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
                f"-h 127.0.0.1 -p {port} -k {root} -F", "start"])
    if done.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {done.stderr or done.stdout} {log}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def new_database(base_url: str, name: str) -> str:
    """CREATE DATABASE name on the server; returns its URL."""
    import psycopg

    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"
