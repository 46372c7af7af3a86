"""prov batch replay on a real Ray cluster of two nodes on loopback, with moto's S3 server as the
lab's DVC remote: a worker killed mid-replay, records byte-identical to sequential `prov replay`,
and the local engine where `import ray` fails."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import PROV, prov_json, run_prov

pytest.importorskip("torch")
pytest.importorskip("dvc")
BIN = Path(sys.executable).parent
# Ray turns 127.0.0.1 into the machine's outward address; another loopback address it leaves be
IP = "127.0.0.2"
RUN_DESCRIBING = ("timings", "created_at")  # what a run is allowed to change in a record
# the tests on the two-node cluster share one pytest worker, so one cluster is started, not one per worker
ON_THE_CLUSTER = pytest.mark.xdist_group("ray_cluster")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, probe, proc=None, limit=120.0):
    """Poll `probe` until it returns a truthy value; `limit` only guards a hang, not a speed."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = probe()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not ready after {limit} s")


def session_of(pid: int) -> list[int]:
    """Every process in the session that `pid` leads (we start each server in a new session)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == pid:
                out.append(int(d))
    return out


def stop(proc: subprocess.Popen) -> None:
    """End a server we started and every process of its session: Ray's daemons do not all go
    with `ray start --block`, so they are killed by id."""
    members = session_of(proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    for pid in set(members) | set(session_of(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def record_without_run_fields(store: Path, digest: str) -> bytes:
    from provenance.core import canonical
    from provenance.store.objects import Store
    s = Store(store)
    try:
        doc = json.loads(s.read_bytes(s.resolve(digest).blake3))
    finally:
        s.close()
    for k in RUN_DESCRIBING:
        doc.pop(k)
    return canonical.dumps(doc)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini") / "m"
    run_prov("miniature", "build", d, check=0)
    return d


@pytest.fixture(scope="module")
def sequential_half(mini, tmp_path_factory):
    """What `prov replay` records for the miniature's `half`, alone: (store, record sha256)."""
    store = tmp_path_factory.mktemp("seq") / "store"
    sub = mini / "submissions" / "half"
    got = prov_json("replay", "--archive", sub / "archive.zip", "--runtime", sub / "runtime", "--upstream",
                    mini / "upstream", store=store)
    return store, got["digest"]["sha256"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """moto's S3 server, a DVC repo whose remote `lab` is a bucket there, and a two-node Ray cluster."""
    base = tmp_path_factory.mktemp("cluster")
    short = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's Unix sockets need a short path
    procs = []
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_TMPDIR=str(short), RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0")
    for k in [k for k in env if k.startswith("AWS_")]:  # the remote's credentials travel in DVC's config
        env.pop(k)
    env.pop("PROV_STORE", None)
    try:
        s3_port = free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        procs.append(moto)
        endpoint = f"http://127.0.0.1:{s3_port}"

        def bucket():
            import boto3
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="lab")
                return True
            except Exception:
                return False
        wait_for("moto server", bucket, moto)

        repo = base / "repo"
        repo.mkdir()
        dvc = str(BIN / "dvc")
        for cmd in (["init", "--no-scm", "-q"], ["remote", "add", "-d", "lab", "s3://lab/comma-lab"],
                    ["remote", "modify", "lab", "endpointurl", endpoint],
                    ["remote", "modify", "--local", "lab", "access_key_id", "testing"],
                    ["remote", "modify", "--local", "lab", "secret_access_key", "testing"]):
            subprocess.run([dvc, *cmd], cwd=repo, env=env, check=True, capture_output=True)

        port = free_port()
        common = ["--num-cpus", "1", "--object-store-memory", str(80 << 20), "--disable-usage-stats", "--block",
                  "--node-ip-address", IP]

        def ports():
            return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                    "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
                    "--dashboard-agent-listen-port", str(free_port()),
                    "--dashboard-agent-grpc-port", str(free_port())]
        def started(log: Path):
            return lambda: log.exists() and "Ray runtime started" in log.read_text(errors="replace")
        head_log, worker_log = base / "head.log", base / "worker.log"
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard",
                                 "false", "--temp-dir", str(short),
                                 *common, *ports()], stdout=open(head_log, "wb"), stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        procs.append(head)
        address = f"{IP}:{port}"

        def nodes() -> int:
            code = ("import ray,sys; ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2], log_to_driver=False);"
                    "print(sum(1 for n in ray.nodes() if n['Alive']))")
            try:
                r = subprocess.run([sys.executable, "-c", code, address, IP], env=env, capture_output=True, text=True,
                                   timeout=60)
            except subprocess.TimeoutExpired:
                return 0
            return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else 0
        wait_for("ray head", started(head_log), head)
        worker = subprocess.Popen([str(BIN / "ray"), "start", "--address", address, *common, *ports()],
                                  stdout=open(worker_log, "wb"), stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        procs.append(worker)
        wait_for("second ray node", started(worker_log), worker)
        assert nodes() == 2
        yield {"address": address, "repo": repo, "env": env, "endpoint": endpoint, "base": base}
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(short, ignore_errors=True)


def ray_workers_replaying() -> list[int]:
    """PIDs of Ray worker processes running our task with a child (the sandbox) under them."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[0]
            kids = Path(f"/proc/{d}/task/{d}/children").read_text().split()
        except OSError:
            continue
        if cmd.startswith(b"ray::prov_replay") and kids:
            out.append(int(d))
    return out


@ON_THE_CLUSTER
def test_batch_on_cluster_survives_a_killed_worker_and_matches_sequential(cluster, mini, sequential_half, tmp_path):
    subs = mini / "submissions"
    store = tmp_path / "lab-store"
    env = dict(cluster["env"], PROV_STORE=str(store))
    p = subprocess.Popen([PROV, "batch", "replay", "half", "copy", "--submissions", subs, "--upstream",
                          mini / "upstream", "--engine", "ray", "--address", cluster["address"], "--node-ip-address",
                          IP, "--remote", "lab", "--repo", cluster["repo"], "--out", tmp_path / "out", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # kill one worker while its replay runs; Ray re-runs that task
    victim = wait_for("a replay running on a worker", ray_workers_replaying, p)[0]
    os.kill(victim, signal.SIGKILL)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()
    res = json.loads(out)
    assert [r["name"] for r in res["results"]] == ["half", "copy"] and all(r["ok"] for r in res["results"])
    assert {r["upstream_from"] for r in res["results"]} == {"in place"}  # one disk: the same checkout

    # every record once in the lab's store and its log, in the order given, not the order finished
    leaves = prov_json("log", "verify", store=store)
    assert leaves["ok"] and leaves["size"] == 2
    assert [r["logged"] for r in res["results"]] == [0, 1]
    assert prov_json("fsck", store=store)["ok"]
    # the workers' outputs came back through S3: record, report, phase logs
    for r in res["results"]:
        rec = json.loads((tmp_path / "out" / r["name"] / "record.json").read_text())
        assert rec["label"] == r["name"]
        for blob in [rec["report"], *rec["logs"].values()]:
            run_prov("cat", blob["sha256"], store=store, check=0)
    import boto3
    keys = boto3.client("s3", endpoint_url=cluster["endpoint"], region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing").list_objects_v2(
        Bucket="lab", Prefix="comma-lab/prov-store/objects/")
    assert keys["KeyCount"] > 10

    # the same answer as a sequential `prov replay`, byte for byte, but for run-describing fields
    assert record_without_run_fields(*sequential_half) == record_without_run_fields(store, res["results"][0]["record"])


@ON_THE_CLUSTER
def test_bad_cluster_input_is_one_line(cluster, mini, tmp_path):
    r = run_prov("batch", "replay", "copy", "--submissions", mini / "submissions", "--upstream", mini / "upstream",
                 "--engine", "local", "--address", cluster["address"], store=tmp_path / "s")
    assert r.returncode == 2 and r.err.count("\n") == 1 and "--engine ray" in r.err
    r = run_prov("batch", "replay", "nope", "--submissions", mini / "submissions", "--upstream", mini / "upstream",
                 store=tmp_path / "s")
    assert r.returncode == 2 and "archive.zip" in r.err and "Traceback" not in r.err


def test_local_engine_without_ray_records_failures(mini, sequential_half, tmp_path):
    """`import ray` fails (a shim first on the path); the default engine is then local, a broken
    submission is a recorded failure, and the good one still lands in store and log."""
    shim = tmp_path / "shim"
    (shim / "ray").mkdir(parents=True)
    (shim / "ray" / "__init__.py").write_text("raise ImportError('ray is not installed here')\n")
    subs = tmp_path / "subs"
    shutil.copytree(mini / "submissions" / "half", subs / "half", symlinks=True)
    shutil.copytree(mini / "submissions" / "copy", subs / "broken", symlinks=True)
    (subs / "broken" / "runtime" / "inflated").mkdir()  # refused before any phase runs: cheap
    env = {"PYTHONPATH": str(shim)}
    r = run_prov("batch", "replay", "broken", "half", "--submissions", subs, "--upstream", mini / "upstream",
                 "--json", store=tmp_path / "store", env=env)
    assert r.returncode == 1, r.err
    res = json.loads(r.out)
    assert res["engine"] == "local"
    broken, half = res["results"]
    assert not broken["ok"] and "ships 'inflated'" in broken["reason"] and broken["exit_code"] == 2
    assert half["ok"] and half["logged"] == 0
    assert record_without_run_fields(*sequential_half) == record_without_run_fields(tmp_path / "store", half["record"])
    assert prov_json("log", "verify", store=tmp_path / "store")["size"] == 1
    r = run_prov("batch", "replay", "half", "--submissions", subs, "--upstream", mini / "upstream", "--engine", "ray",
                 store=tmp_path / "store", env=env)
    assert r.returncode == 3 and "comma-lab[ray]" in r.err


def test_worker_without_the_checkout_exports_it_from_the_store(mini, tmp_path):
    """A worker that lacks the head's upstream path gets the pinned tree by digest instead."""
    from provenance.lab import batch as B, meeting
    from provenance.store.objects import Store
    subs = tmp_path / "subs"
    shutil.copytree(mini / "submissions" / "copy", subs / "early", symlinks=True)
    (subs / "early" / "runtime" / "archive").mkdir()  # refused after the inputs arrive, before any phase
    store = Store(tmp_path / "store", create=True)
    b = B.ReplayBatch(store, B.collect(subs, ["early"]), mini / "upstream")
    meet = {"kind": "dir", "path": str(tmp_path / "meet")}
    task = b.tasks(meet)[0]
    task["upstream_path"] = str(tmp_path / "not-here")
    got = B.work(task)
    assert got["upstream_from"] == "store" and not got["ok"] and "ships 'archive'" in got["reason"]
    # a meeting point that corrupts an object: refused on arrival, nothing stored
    victim = next(r[0] for r in task["inputs"] if r[1] == "blob")
    path = tmp_path / "meet" / meeting._rel(victim)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"x")
    got = B.work(task)
    assert not got["ok"] and "arrived corrupt" in got["reason"] and got["exit_code"] == 1


def test_ctrl_c_stops_the_batch_and_leaves_the_store_consistent(mini, tmp_path):
    store = tmp_path / "store"
    env = dict(os.environ, PROV_STORE=str(store))
    p = subprocess.Popen([PROV, "batch", "replay", "copy", "half", "--submissions", mini / "submissions",
                          "--upstream", mini / "upstream", "--engine", "local"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         # a Ctrl-C as a terminal gives it: a runner that started us in the background
                         # (sh's `&`) passes SIGINT down ignored, and Python then installs no handler
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def sandbox_running():
        try:
            return Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        except OSError:
            return []
    kids = wait_for("the first replay's sandbox", sandbox_running, p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
    assert prov_json("fsck", store=store)["ok"]
    assert prov_json("log", "verify", store=store)["size"] == 0  # nothing half-merged, nothing logged
    for k in kids:  # the sandbox went with it
        wait_for("the sandbox to end", lambda: not Path(f"/proc/{k}").exists() or
                 Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_cli_and_verify_path_import_no_ray():
    code = ("import sys, provenance.cli.app, provenance.release.verify, provenance.cli.batch;"
            "print(sorted(m for m in ('ray', 'dvc', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def s3_repo(cluster, path: Path, creds_in_config: bool) -> Path:
    """A DVC repo whose default remote is the cluster's bucket, with or without keys in DVC's config."""
    path.mkdir()
    dvc = str(BIN / "dvc")
    cmds = [["init", "--no-scm", "-q"], ["remote", "add", "-d", "lab", "s3://lab/comma-lab"],
            ["remote", "modify", "lab", "endpointurl", cluster["endpoint"]]]
    if creds_in_config:
        cmds += [["remote", "modify", "--local", "lab", k, "testing"] for k in ("access_key_id", "secret_access_key")]
    for cmd in cmds:
        subprocess.run([dvc, *cmd], cwd=path, env=cluster["env"], check=True, capture_output=True)
    return path


@ON_THE_CLUSTER
def test_credentials_from_the_head_environment_reach_the_workers(cluster, mini, tmp_path):
    """The workers were started without AWS variables and DVC's config names no keys: the head's
    AWS_* credentials reach them, and a failure names the submission by its path on the head."""
    repo = s3_repo(cluster, tmp_path / "repo", creds_in_config=False)
    subs = tmp_path / "subs"
    shutil.copytree(mini / "submissions" / "copy", subs / "broken", symlinks=True)
    (subs / "broken" / "runtime" / "inflated").mkdir()  # refused after its inputs arrive from S3, before any phase
    env = dict(cluster["env"], AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_EC2_METADATA_DISABLED="true", PROV_STORE=str(tmp_path / "store"))
    r = subprocess.run([PROV, "batch", "replay", "broken", "--submissions", subs, "--upstream", mini / "upstream",
                        "--engine", "ray", "--address", cluster["address"], "--node-ip-address", IP, "--remote", "lab",
                        "--repo", repo, "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert "NoCredentials" not in res["reason"] and "ships 'inflated'" in res["reason"], res
    assert res["path"] == str(subs / "broken") and "prov-batch-" not in res["reason"], res


@ON_THE_CLUSTER
def test_no_credentials_anywhere_is_one_line_before_any_task(cluster, mini, tmp_path):
    repo = s3_repo(cluster, tmp_path / "repo", creds_in_config=False)
    env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_PROFILE": ""}
    r = run_prov("batch", "replay", "copy", "--submissions", mini / "submissions", "--upstream", mini / "upstream",
                 "--engine", "local", "--remote", "lab", "--repo", repo, store=tmp_path / "s", env=env)
    assert r.returncode == 2 and len(r.err.splitlines()) == 1, r.err
    assert "AWS_ACCESS_KEY_ID" in r.err and "access_key_id" in r.err and "'lab'" in r.err
    assert not (tmp_path / "s").exists() or prov_json("log", "verify", store=tmp_path / "s")["size"] == 0


@pytest.mark.parametrize("kind", ["dead", "silent"])
def test_an_address_that_does_not_answer_ends_within_the_timeout(mini, tmp_path, kind):
    """Nothing listening, or a port that accepts and never speaks: one line, exit 3, no hang."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "--no-scm", "-q"], ["remote", "add", "-d", "lab", str(tmp_path / "remote")]):
        subprocess.run([str(BIN / "dvc"), *cmd], cwd=repo, check=True, capture_output=True)
    srv = None
    if kind == "silent":
        srv = socket.socket()
        srv.bind((IP, 0))
        srv.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = srv.getsockname()[1]
    else:
        port = free_port()
    try:
        r = subprocess.run([PROV, "batch", "replay", "copy", "--submissions", mini / "submissions", "--upstream",
                            mini / "upstream", "--engine", "ray", "--address", f"{IP}:{port}", "--node-ip-address", IP,
                            "--remote", "lab", "--repo", repo, "--connect-timeout", "5"],
                           capture_output=True, text=True, timeout=300,  # Ray's import may be slow; no hang
                           env=dict(os.environ, PROV_STORE=str(tmp_path / "s"), RAY_USAGE_STATS_ENABLED="0"))
    finally:
        if srv:
            srv.close()
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (f"no cluster answers at {IP}:{port}" if kind == "dead" else "did not answer within 5 s") in r.stderr
