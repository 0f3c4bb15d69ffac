"""How soon a restarted `ponder serve` frees the quota a `kill -9`'d one was holding.

A real server (scripted upstream that hangs) holds quota for one chat request and one
running job; it is killed with SIGKILL and started again on the same SQLite file. Per
trial it prints one JSON line: the seconds from the restart to the first answered
request, whether the killed server's holds were gone by then (they are released at
startup, from the owner recorded on each hold), the seconds until its interrupted job
finished, and the TTL those holds still had at the kill, which is how long the
TTL-only release (the behaviour before owners were recorded) would have left them.

    .venv/bin/python benchmarks/crash_recovery.py --trials 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from ponder.budget.quota import Limit
from ponder.ledger import Store

PROMPT = {"messages": [{"role": "user", "content": "What is 2+2?"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(db: str, port: int, tmp: Path, delay: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PONDER_CONFIG": str(tmp / "none.toml")}
    env["PONDER_CACHE_DIR"] = str(tmp / "cache")
    cmd = [sys.executable, "-m", "ponder.cli", "serve", "--backend", "fake"]
    cmd += ["--fake-delay", str(delay), "--port", str(port), "--db", db]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        if proc.poll() is not None:
            raise SystemExit("ponder serve exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.02)


def _query(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def trial(index: int) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="ponder-crash-"))
    path = tmp / "ponder.db"
    db = f"sqlite:///{path}"
    store = Store(db)
    _, secret = store.create_key("alice")
    store.set_limit(Limit("user", "alice", "tokens", "day", 1_000_000))
    store.close()
    auth = {"authorization": f"Bearer {secret}"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(db, port, tmp, delay=600)

    def chat() -> None:
        with contextlib.suppress(httpx.HTTPError):  # killed mid-request
            httpx.post(f"{base}/v1/chat/completions", json=PROMPT, headers=auth, timeout=60)

    client = threading.Thread(target=chat)
    client.start()
    job = httpx.post(f"{base}/v1/jobs", json=PROMPT, headers=auth, timeout=10).json()["id"]
    while True:
        holds = _query(path, "SELECT id, expires_at FROM ponder_reservations")
        status = _query(path, "SELECT status FROM ponder_jobs WHERE id = ?", job)[0][0]
        if len(holds) == 2 and status == "running":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    client.join()
    ttl_left = min(float(e) for _, e in holds) - time.time()  # type: ignore[arg-type]

    started = time.monotonic()
    proc = _serve(db, port, tmp, delay=0.005)
    serving_s = time.monotonic() - started
    left = {r[0] for r in _query(path, "SELECT id FROM ponder_reservations")}
    while _query(path, "SELECT status FROM ponder_jobs WHERE id = ?", job)[0][0] in (
        "queued",
        "running",
    ):
        time.sleep(0.02)
    job_done_s = time.monotonic() - started
    done = httpx.get(f"{base}/v1/jobs/{job}", headers=auth, timeout=10).json()
    proc.terminate()
    proc.wait(timeout=30)
    return {
        "trial": index,
        "holds_at_kill": len(holds),
        "restart_to_serving_s": round(serving_s, 2),
        "killed_holds_freed_when_serving": not left & {h[0] for h in holds},
        "restart_to_job_done_s": round(job_done_s, 2),
        "job_attempts": done["attempts"],
        "job_interrupted_attempts_recorded": len(done["history"]),
        "ttl_only_release_after_s": round(ttl_left, 1),
        "ratio_ttl_only_to_owner": round(ttl_left / serving_s, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    for i in range(args.trials):
        print(json.dumps(trial(i)), flush=True)


if __name__ == "__main__":
    main()
