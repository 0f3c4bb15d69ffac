"""A real `ponder serve` (scripted backend) killed with SIGKILL under load: every 200 has its row."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from ponder.ledger import Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(db: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PONDER_CONFIG": str(tmp / "none.toml"),
        "PONDER_CACHE_DIR": str(tmp / "cache"),
    }
    cmd = [
        sys.executable,
        "-m",
        "ponder.cli",
        "serve",
        "--backend",
        "fake",
        "--fake-delay",
        "0.005",
        "--port",
        str(port),
        "--db",
        db,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ponder serve exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("ponder serve did not become healthy within 60 s")


def test_sigkill_under_load_loses_no_row_of_a_200(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ponder.db'}"
    port = _free_port()
    proc = _serve(db, port, tmp_path)
    ok_ids: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        "/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": "What is 2+2?"}]},
                    )
                except httpx.HTTPError:
                    continue  # the server is gone: this request has no answer to account for
                if r.status_code == 200:
                    with lock:
                        ok_ids.append(r.json()["id"])

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    # Kill only once real load has gone through (no timing in the assertion itself).
    while True:
        with lock:
            if len(ok_ids) >= 50:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()

    store = Store(db)
    try:
        rows = store.row_ids()
    finally:
        store.close()
    missing = set(ok_ids) - rows
    assert not missing, f"{len(missing)} of {len(ok_ids)} answered requests have no ledger row"

    # The store is intact and a restarted server serves again on the same database.
    proc = _serve(db, port, tmp_path)
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "again"}]},
            timeout=10,
        )
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
