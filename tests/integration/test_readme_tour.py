"""The README's five-minute tour, run as written: every `$ command` of its console blocks is executed
in order in a fresh folder (a trailing `&` starts it in the background, as a shell would), and each
command must print the lines the README shows under it, in order. `...` in a shown line stands for
any text, and every number may differ (timings, losses on another CPU); everything else must match,
so a renamed flag, a changed message or a stale run id fails here."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinyconf import ROOT

pytestmark = pytest.mark.slow


def tour() -> list[tuple[str, list[str]]]:
    """(command, the lines shown under it) for every `$ ` line of the README's console blocks."""
    readme = (ROOT / "README.md").read_text()
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
    return steps


def pattern(shown: str) -> re.Pattern:
    parts = [re.sub(r"\d+", r"\\d+(?:\\.\\d+)?", re.escape(piece)) for piece in shown.split("...")]
    return re.compile(".*".join(parts))


def assert_prints(command: str, shown: list[str], output: str) -> None:
    lines = output.splitlines()
    at = 0
    for expected in (s for s in shown if s.strip() != "..."):
        want = pattern(expected.rstrip())
        while at < len(lines) and not want.fullmatch(lines[at].rstrip()):
            at += 1
        assert at < len(lines), f"`{command}` did not print {expected!r} (in order); it printed:\n{output}"
        at += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(process: subprocess.Popen, log: Path, shown: list[str], command: str) -> None:
    """Wait until a background command's output (in `log`) has its shown lines (a server's banner)."""
    deadline = time.monotonic() + 90
    while True:
        output = log.read_text()
        try:
            return assert_prints(command, shown, output)
        except AssertionError:
            assert process.poll() is None, f"`{command}` exited with {process.returncode}:\n{output}"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_readme_tour_prints_what_the_readme_says(tmp_path):
    steps = tour()
    assert {c.split()[1] for c, _ in steps if c.startswith("decoder ")} >= {
        "run", "generate", "export", "serve", "sweep"}
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "MPLBACKEND": "Agg"}
    port = str(free_port())
    background: list[subprocess.Popen] = []
    try:
        for command, shown in steps:
            command = command.replace("8000", port)
            shown = [line.replace("8000", port) for line in shown]
            if command.endswith("&"):
                log = tmp_path / f"background-{len(background)}.log"
                with log.open("w") as out:
                    process = subprocess.Popen(command[:-1], shell=True, cwd=tmp_path, env=env,
                                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                background.append(process)
                wait_for(process, log, shown, command)
                continue
            done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, text=True, timeout=600,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert done.returncode == 0, f"`{command}` exited with {done.returncode}:\n{done.stdout}"
            assert_prints(command, shown, done.stdout)
    finally:
        for process in background:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
