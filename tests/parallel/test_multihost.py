"""Many hosts, one remote queue: claims by conditional writes, leases, takeover after a
host dies — over the local transport and over S3 (moto's server, real HTTP)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fspl_gateway.core.packet import Meta, encode_header, make_command
from fspl_gateway.gateway.multihost import claim_name, parse_claim

JOB = r'''
echo "start $FSPL_PARAM_1 $FSPL_GW_HOST_ID $(date +%s.%N)" >> "$LOG"
sleep "$SLEEP"
echo "end $FSPL_PARAM_1 $FSPL_GW_HOST_ID $(date +%s.%N)" >> "$LOG"
'''


def _packet(seq: int) -> bytes:
    return encode_header(Meta(seq=seq, cmd=make_command([b"%d" % seq]))) + b"payload"


class Remote:
    def __init__(self, args: list[str], put, names) -> None:  # type: ignore[no-untyped-def]
        self.args = args
        self.put = put
        self.names = names


@pytest.fixture(params=["local", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    if request.param == "local":
        d = tmp_path / "remote"
        (d / "jobs").mkdir(parents=True)
        return Remote(["-t", "local", "-r", str(d)],
                      lambda n, b: (d / "jobs" / n).write_bytes(b),
                      lambda: os.listdir(d / "jobs"))
    b = request.getfixturevalue("s3_bucket")
    args = ["-t", "s3", "-r", f"s3://{b.name}/q"]
    for k, v in b.options.items():
        args += ["-o", f"{k}={v}"]

    def names() -> list[str]:
        out = b.client.list_objects_v2(Bucket=b.name, Prefix="q/jobs/").get("Contents", [])
        return [o["Key"].removeprefix("q/jobs/") for o in out]

    return Remote(args, lambda n, data: b.client.put_object(Bucket=b.name, Key="q/jobs/" + n,
                                                             Body=data), names)


def _host(remote: Remote, work: Path, host: str, log: Path, sleep: float,
          *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "fspl_gateway", "workers", *remote.args, "-q", str(work),
           "-n", "1", "--host-id", host, "--lease", "2", "--clock-skew", "0.5", *extra,
           "--allow-job-params", "sh", "--", "-c", JOB]
    return subprocess.Popen(cmd, env={**os.environ, "LOG": str(log), "SLEEP": str(sleep)},
                            stderr=subprocess.PIPE)


def _log(log: Path) -> list[list[str]]:
    return [ln.split() for ln in log.read_text().splitlines()] if log.exists() else []


def test_claim_names_round_trip() -> None:
    n = "fspl-0b6e.fspl"
    assert parse_claim(claim_name(n, 7)) == (n, 7)
    assert parse_claim(n) is None and parse_claim("x.claim.1") is None


def test_two_hosts_share_a_queue_one_dies_mid_lease(remote: Remote, tmp_path: Path) -> None:
    total = 16
    from fspl_gateway.core.queue import new_job_filename

    for s in range(1, total + 1):
        remote.put(new_job_filename(), _packet(s))
    log = tmp_path / "log"
    a = _host(remote, tmp_path / "wa", "A", log, 0.3)
    b = _host(remote, tmp_path / "wb", "B", log, 0.3)
    # kill A (kill -9) while one of its jobs runs: its lease is then valid but orphaned
    deadline = time.time() + 30
    while time.time() < deadline and not any(e[0] == "start" and e[2] == "A/1" for e in _log(log)):
        time.sleep(0.02)
    a.send_signal(signal.SIGKILL)
    killed_at = time.time()
    a.wait()
    _, err = b.communicate(timeout=120)
    assert b.returncode == 0, err.decode()
    # B stopped once nothing was claimable; A's job is still held by A's (expired) lease
    time.sleep(2.6)
    c = _host(remote, tmp_path / "wc", "C", log, 0.0)
    _, err = c.communicate(timeout=120)
    assert c.returncode == 0, err.decode()
    entries = _log(log)
    ends = collections.Counter(int(e[1]) for e in entries if e[0] == "end")
    assert set(ends) == set(range(1, total + 1))
    # intervals per job and host: never two hosts at once on one job
    spans: dict[int, list[tuple[str, float, float]]] = collections.defaultdict(list)
    open_: dict[tuple[int, str], float] = {}
    for e in entries:
        key = (int(e[1]), e[2])
        if e[0] == "start":
            open_[key] = float(e[3])
        else:
            spans[key[0]].append((key[1], open_.pop(key), float(e[3])))
    for (seq, host), t0 in open_.items():  # started, never ended: A's killed job
        assert host == "A/1"
        spans[seq].append((host, t0, killed_at))
    for seq, ss in spans.items():
        ss.sort(key=lambda x: x[1])
        for (h1, _s1, e1), (h2, s2, _e2) in zip(ss, ss[1:], strict=False):
            assert h1 != h2 and s2 >= e1, f"job {seq} ran on {h1} and {h2} at once"
    assert len(open_) == 1  # A was really killed mid-job, and that job ran again later
    # the remote is empty: jobs and claims deleted
    assert remote.names() == []


def _workers(remote_args: list[str], work: Path, log: Path,
             *extra: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "fspl_gateway", "workers", *remote_args, "-q", str(work),
           "-n", "1", *extra, "sh", "--", "-c", 'echo ran >> "$LOG"']
    return subprocess.run(cmd, env={**os.environ, "LOG": str(log)}, capture_output=True,
                          timeout=120)


@pytest.mark.parametrize("on_error", ["retry", "delete"])
def test_bad_env_key_fails_the_job_like_the_process_module(tmp_path: Path,
                                                           on_error: str) -> None:
    """The one executor: an FSPL_SET_ key with '=' fails the job with run_job's message,
    without running the command; its claim is released (retry) or the job deleted."""
    from fspl_gateway.core.queue import new_job_filename

    d = tmp_path / "remote"
    (d / "jobs").mkdir(parents=True)
    name = new_job_filename()
    bad = Meta(seq=1, cmd=make_command([b"1"], env=[(b"A=B", b"x")]))
    (d / "jobs" / name).write_bytes(encode_header(bad) + b"payload")
    log = tmp_path / "log"
    p = _workers(["-t", "local", "-r", str(d)], tmp_path / "w", log, "--on-error", on_error)
    err = p.stderr.decode()
    assert "cannot set environment variable b'FSPL_SET_A=B'" in err
    assert not log.exists()  # the command never ran
    if on_error == "retry":
        assert p.returncode == 1, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("Error: job 1 (") and "cannot set environment variable" in last
        assert os.listdir(d / "jobs") == [name]  # released: no claim left behind
    else:
        assert p.returncode == 0, err
        assert os.listdir(d / "jobs") == []


def test_refuses_a_transport_without_atomic_noclobber(s3_bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Claims rely on no-clobber writes: S3 with conditional_writes=false is refused
    (one line, exit 2) before anything is claimed or run."""
    from fspl_gateway.core.queue import new_job_filename

    b = s3_bucket
    name = new_job_filename()
    b.client.put_object(Bucket=b.name, Key="q/jobs/" + name, Body=_packet(1))
    args = ["-t", "s3", "-r", f"s3://{b.name}/q", "-o", "conditional_writes=false"]
    for k, v in b.options.items():
        args += ["-o", f"{k}={v}"]
    log = tmp_path / "log"
    p = _workers(args, tmp_path / "w", log)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "conditional_writes" in err
    assert not log.exists()
    keys = [o["Key"] for o in b.client.list_objects_v2(Bucket=b.name).get("Contents", [])]
    assert keys == ["q/jobs/" + name]  # no claim written


def test_a_host_survives_a_transient_listing_error(request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    """The connection of the first listing is cut (botocore's own retries off): the retry
    policy lists again, the job runs.  Before, one transient listing error ended the host."""
    from urllib.parse import urlsplit

    from fspl_gateway.core.process import ProcessOpts
    from fspl_gateway.core.queue import new_job_filename
    from fspl_gateway.gateway.multihost import HostOpts, run_hosts
    from fspl_gateway.gateway.retry import RetryPolicy
    from fspl_gateway.transports.s3 import S3Transport
    from tests.fixtures.tcpproxy import TcpProxy

    b = request.getfixturevalue("s3_bucket")
    job = new_job_filename()
    b.client.put_object(Bucket=b.name, Key="q/jobs/" + job, Body=_packet(1))
    port = urlsplit(b.options["endpoint_url"]).port
    with TcpProxy(port) as proxy:
        t = S3Transport(f"s3://{b.name}/q", {**b.options, "max_attempts": 1,
                                             "endpoint_url": f"http://127.0.0.1:{proxy.port}"})
        proxy.cut_after(0)  # the first answer (the listing) never arrives
        opts = HostOpts(ProcessOpts("true"), str(tmp_path / "work"), "h", lease=10,
                        retry=RetryPolicy(attempts=3, backoff=0.01))
        try:
            assert run_hosts(t, opts, 1) == 1
        finally:
            t.close()
        assert proxy.accepted >= 2
    left = b.client.list_objects_v2(Bucket=b.name, Prefix="q/jobs/").get("Contents", [])
    assert left == [], "the job and its claims are gone"
