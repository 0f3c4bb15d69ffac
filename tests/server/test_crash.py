"""A real `ponder serve` (scripted backend) killed with SIGKILL under load.

Every 200 has its ledger row; every job accepted (202) survives, and after a
restart each one completes and is in the ledger exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from ponder.budget.quota import Limit
from ponder.ledger import Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(
    db: str,
    port: int,
    tmp: Path,
    *,
    fake_delay: float = 0.005,
    env_extra: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PONDER_CONFIG": str(tmp / "none.toml"),
        "PONDER_CACHE_DIR": str(tmp / "cache"),
        **(env_extra or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "ponder.cli",
        "serve",
        "--backend",
        "fake",
        "--fake-delay",
        str(fake_delay),
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


def _job_states(path: Path) -> dict[str, tuple[str, str, int, str | None]]:
    """id -> (status, request_id, attempts, result) read straight from the file (no write lock)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = conn.execute(
            "SELECT id, status, request_id, attempts, result FROM ponder_jobs"
        ).fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def test_sigkill_with_jobs_queued_and_running_loses_none_and_runs_each_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ponder.db"
    db = f"sqlite:///{path}"
    port = _free_port()
    # Slow enough that a queue builds up behind four running jobs.
    serve_args = {"fake_delay": 0.05, "env_extra": {"PONDER_SERVER__JOB_CONCURRENCY": "4"}}
    proc = _serve(db, port, tmp_path, **serve_args)  # type: ignore[arg-type]
    accepted: list[str] = []
    chat_ok: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submit() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while not stop.is_set():
                with lock:
                    if len(accepted) >= 200:
                        break
                try:
                    r = client.post(
                        "/v1/jobs",
                        json={"messages": [{"role": "user", "content": "What is 2+2?"}]},
                    )
                except httpx.HTTPError:
                    continue
                if r.status_code == 202:
                    with lock:
                        accepted.append(r.json()["id"])

    def chat() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        "/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": "and now?"}]},
                    )
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    with lock:
                        chat_ok.append(r.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(4)]
    threads += [threading.Thread(target=chat) for _ in range(2)]
    for t in threads:
        t.start()
    # Kill while jobs are done, running and queued at once (as the database shows them).
    deadline = time.monotonic() + 120
    while True:
        statuses = [v[0] for v in _job_states(path).values()]
        if (
            statuses.count("succeeded") >= 10
            and statuses.count("running") >= 1
            and statuses.count("queued") >= 10
        ):
            break
        assert time.monotonic() < deadline, f"no mixed queue state reached: {statuses[:20]}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()

    at_kill = _job_states(path)
    # Every job that was answered 202 was stored before the answer.
    assert set(accepted) <= set(at_kill)
    left = [j for j, v in at_kill.items() if v[0] in ("queued", "running")]
    assert left, "the kill left no job to recover"

    proc = _serve(db, port, tmp_path, **serve_args)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 120
        while True:
            final = _job_states(path)
            if all(v[0] not in ("queued", "running") for v in final.values()):
                break
            assert time.monotonic() < deadline, "queued jobs did not complete after the restart"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    assert {v[0] for v in final.values()} == {"succeeded"}
    # Jobs interrupted mid-run ran again (a second attempt) and still count once below.
    running_at_kill = [j for j in left if at_kill[j][0] == "running"]
    assert all(final[j][2] == at_kill[j][2] + 1 for j in running_at_kill)
    with sqlite3.connect(path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM ponder_requests")]
    assert len(ids) == len(set(ids))
    ledger = Counter(ids)
    for job_id, (_, request_id, _, result) in final.items():
        assert ledger[request_id] == 1, f"job {job_id} has {ledger[request_id]} ledger rows"
        assert result is not None and json.loads(result)["id"] == request_id
    assert not set(chat_ok) - set(ids), "an answered chat request has no ledger row"


def _holds(path: Path) -> tuple[list[tuple[str, float, str | None]], int]:
    """(id, expires_at, owner) of every reservation, and the tokens held on counters."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = conn.execute("SELECT id, expires_at, owner FROM ponder_reservations").fetchall()
        (held,) = conn.execute(
            "SELECT COALESCE(SUM(reserved), 0) FROM ponder_quota_counters WHERE metric = 'tokens'"
        ).fetchone()
    finally:
        conn.close()
    return rows, int(held)


def test_a_restart_frees_the_holds_of_a_killed_server_at_once_and_requeues_its_job(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ponder.db"
    db = f"sqlite:///{path}"
    store = Store(db)
    try:
        _, secret = store.create_key("alice")
        store.set_limit(Limit("user", "alice", "tokens", "day", 1_000_000))
    finally:
        store.close()
    auth = {"authorization": f"Bearer {secret}"}
    port = _free_port()
    # Every upstream call hangs far longer than the test: whatever is running at the
    # kill holds quota until the restart frees it.
    proc = _serve(db, port, tmp_path, fake_delay=600)
    base = f"http://127.0.0.1:{port}"
    prompt = {"messages": [{"role": "user", "content": "What is 2+2?"}]}

    def hanging_chat() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{base}/v1/chat/completions", json=prompt, headers=auth, timeout=120)

    chat = threading.Thread(target=hanging_chat)
    chat.start()
    submitted = httpx.post(f"{base}/v1/jobs", json=prompt, headers=auth, timeout=10)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        holds, held = _holds(path)
        if len(holds) == 2 and _job_states(path)[job_id][0] == "running":
            break
        assert time.monotonic() < deadline, f"no hold of a chat and a running job: {holds}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chat.join()
    killed_at = time.time()

    # Left alone, these holds would pin the quota until their TTL (minutes from now).
    holds, held = _holds(path)
    assert len(holds) == 2 and held > 0
    assert all(expires > killed_at + 60 for _, expires, _ in holds)
    assert _owner_pid(holds) == proc.pid
    status, _, attempts, _ = _job_states(path)[job_id]
    assert (status, attempts) == ("running", 1)

    proc = _serve(db, port, tmp_path, fake_delay=0.005)
    try:
        # Freed at startup, before the restarted server answered its first request.
        holds_after, held_after = _holds(path)
        job_after = _job_states(path)[job_id]
        deadline = time.monotonic() + 60
        while _job_states(path)[job_id][0] in ("queued", "running"):
            assert time.monotonic() < deadline, "the requeued job did not finish"
            time.sleep(0.05)
        done = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth, timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    killed = {h[0] for h in holds}
    assert not killed & {h[0] for h in holds_after}, "a hold of the killed server survived"
    # Only the requeued job's own new run may hold anything by now.
    assert len(holds_after) <= 1 and held_after <= held
    assert job_after[0] in ("queued", "running", "succeeded")

    # Requeued exactly once, its interrupted first attempt on record, one ledger row.
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    (earlier,) = done["history"]
    assert earlier["attempt"] == 1 and earlier["reason"] == "its server process died"
    assert earlier["worker"].split("/")[0].rsplit(":", 2)[1] == str(_owner_pid(holds))
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT COUNT(*) FROM ponder_requests WHERE id = ?", (done["request_id"],)
        ).fetchone()
    assert rows == (1,)
    assert _holds(path) == ([], 0)


def _owner_pid(holds: list[tuple[str, float, str | None]]) -> int:
    """The pid recorded as the owner of the killed server's holds."""
    (pid,) = {int(owner.rsplit(":", 2)[1]) for _, _, owner in holds if owner}
    return pid
