"""Many replays at once: `prov batch replay`, sequentially (engine "local") or as Ray tasks.

The head hashes every input into the lab's store and publishes it, by digest, to a meeting
point: the lab's DVC remote (S3, SSH, a shared path) or, when every worker shares the head's
disk, a scratch directory. A worker owns nothing of the lab: it fetches its inputs by digest
into a private store (re-hashed on arrival), exports them, runs the ordinary replay, and
publishes what the replay stored (record, report, phase logs). The head fetches those
(re-hashed again) into the lab's store and appends records to the log in submission order,
whatever order the workers finished in, so the same batch gives the same log.

Faults: a failed submission is a result with its reason, not a crashed batch; a worker that
dies mid-replay is retried by Ray (its private store dies with it; nothing reaches the lab's
store but complete, verified objects); Ctrl-C cancels what is in flight and the store stays
what its write protocol guarantees. Ray is imported only when the ray engine runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from provenance.core.errors import MissingEnvironment, ProvError
from provenance.core.files import remove_tree
from provenance.store.objects import Store
from provenance.log.evidence import log_record
from provenance.lab.meeting import closure, fetch, meeting, publish

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Submission:
    name: str
    archive: Path
    runtime: Path


@dataclass
class ReplayOutcome:
    """One submission's result. `record` is the record's SHA-256 when it replayed; otherwise
    `reason` says why not (and `exit_code` which kind of failure, as the CLI would exit)."""
    name: str
    ok: bool
    record: str | None = None
    record_b3: str | None = None
    score: float | None = None
    grade: str | None = None
    reason: str | None = None
    exit_code: int = 0
    host: str | None = None  # describes the run, like timings: not part of the answer
    wall: float | None = None
    upstream_from: str | None = None  # "in place" (the head's path, same bytes) or "store"
    logged: int | None = None  # leaf index in the lab's log
    path: str | None = None  # the submission's folder on the head (where its archive.zip lies)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "record_b3"}


# -- which submissions -------------------------------------------------------------------------

def collect(folder: str | Path, names: list[str] | tuple[str, ...] = ()) -> list[Submission]:
    """FOLDER/<name>/{archive.zip,runtime/} for each name (default: every such sub-folder, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProvError(f"{folder}: no such folder of submissions")
    if not names:
        names = sorted(p.name for p in folder.iterdir() if (p / "archive.zip").is_file())
        if not names:
            raise ProvError(f"{folder}: no <name>/archive.zip in it")
    seen, out = set(), []
    for n in names:
        if not n.isidentifier():
            raise ProvError(f"{n!r}: a submission name must be a Python identifier")
        if n in seen:
            raise ProvError(f"{n}: named twice")
        seen.add(n)
        sub = folder / n
        if not (sub / "archive.zip").is_file() or not (sub / "runtime").is_dir():
            raise ProvError(f"{sub}: needs archive.zip and runtime/")
        out.append(Submission(n, sub / "archive.zip", sub / "runtime"))
    return out


# -- the work of one submission (runs on a worker) -------------------------------------------------

def _in_place(path: str, b3: str) -> bool:
    """Is the head's upstream checkout here, at the same path, with exactly the pinned bytes?"""
    from provenance.core import tree as treemod
    from provenance.core.digest import hash_file
    p = Path(path)
    try:
        return p.is_dir() and treemod.walk(p, lambda f, s: hash_file(f)).blake3 == b3
    except (OSError, ProvError):
        return False


def work(task: dict) -> dict:
    """Fetch the inputs by digest, replay in a private store, publish what it stored.
    Always returns: a failure is a result with its reason.

    The upstream checkout is used where the head has it when this machine holds the same bytes at
    the same path (a shared disk, or one image for every machine): the evaluator prints its paths
    into the report, so only then is the report byte-identical to a replay on the head. Otherwise
    it is exported from the store, re-verified, into scratch."""
    from provenance.replay.run import replay
    from provenance.replay.limits import Limits
    started = time.monotonic()
    host = socket.gethostname()
    scratch = Path(tempfile.mkdtemp(prefix="prov-batch-"))
    base = {"name": task["name"], "host": host}
    try:
        where = meeting(task["meeting"])
        store = Store(scratch / "store", create=True)
        try:
            up = Path(task["upstream_path"])
            base["upstream_from"] = "in place" if _in_place(task["upstream_path"], task["upstream"]) else "store"
            up_rows = {r[0] for r in task["upstream_rows"]}
            fetch(store, [r for r in task["inputs"] if base["upstream_from"] == "store" or r[0] not in up_rows], where)
            if base["upstream_from"] == "store":
                up = scratch / "upstream"
                store.export(task["upstream"], up)
            runtime = scratch / task["name"] / "runtime"
            store.export(task["runtime"], runtime)
            archive = scratch / task["name"] / "archive.zip"
            store.copy_out(task["archive"], archive)  # re-hashed on the way out, like every export
            res = replay(store, archive, runtime, up, name=task["name"], device=task["device"],
                         sandboxed=task["sandboxed"], limits=Limits(**task["limits"]), scratch_base=str(scratch))
            have = {r[0] for r in task["inputs"]}
            made = [r for r in closure(store, [res.digest.blake3]) if r[0] not in have]
            publish(store, made, where)
            return {**base, "ok": True, "record": res.digest.sha256, "record_b3": res.digest.blake3,
                    "score": res.record.result.canonical_score, "grade": res.record.grade, "rows": made,
                    "wall": round(time.monotonic() - started, 3)}
        finally:
            store.close()
    except ProvError as e:  # named as the head knows the submission, not by this worker's scratch
        reason = str(e).replace(str(scratch / task["name"] / "archive.zip"), task["archive_path"]).replace(
            str(scratch / task["name"] / "runtime"), task["runtime_path"]).replace(str(scratch), "(worker scratch)")
        return {**base, "ok": False, "reason": reason, "exit_code": e.exit_code,
                "wall": round(time.monotonic() - started, 3)}
    finally:
        remove_tree(scratch)  # a replay's scratch may hold whatever a submission made


# -- the head ----------------------------------------------------------------------------------------

@dataclass
class ReplayBatch:
    store: Store
    submissions: list[Submission]
    upstream: Path
    device: str = "cpu"
    sandboxed: bool = True
    limits: dict = field(default_factory=dict)
    meeting: dict | None = None  # None: a scratch directory on the head's disk
    progress: Callable[[str, str, ReplayOutcome | None], None] | None = None  # (name, state, outcome)

    def paths(self) -> dict[str, str]:
        """Each submission's folder on the head, by name: what a result is named by."""
        return {s.name: str(Path(s.archive).parent) for s in self.submissions}

    def tasks(self, meet: dict) -> list[dict]:
        up = self.upstream
        if not (up / "evaluate.py").is_file():
            raise ProvError(f"{up}: not an upstream checkout (no evaluate.py)")
        if self.device not in ("cpu", "cuda"):
            raise ProvError(f"--device {self.device}: must be cpu or cuda")
        up_d = self.store.add_as(up, "tree", "upstream")
        up_rows = closure(self.store, [up_d.blake3])
        where = meeting(meet)
        out = []
        for s in self.submissions:
            a = self.store.add_as(s.archive, "file", "archive")
            r = self.store.add_as(s.runtime, "tree", "runtime")
            rows = closure(self.store, [up_d.blake3, r.blake3, a.blake3])
            publish(self.store, rows, where)
            out.append({"name": s.name, "archive": a.blake3, "runtime": r.blake3, "upstream": up_d.blake3,
                        "archive_path": str(s.archive), "runtime_path": str(s.runtime),
                        "inputs": rows, "upstream_rows": up_rows, "upstream_path": str(up), "device": self.device,
                        "sandboxed": self.sandboxed, "limits": self.limits, "meeting": meet})
        return out

    def _say(self, name: str, state: str, o: ReplayOutcome | None = None) -> None:
        if self.progress:
            self.progress(name, state, o)


def _merge(b: ReplayBatch, where, res: dict, results: dict[str, ReplayOutcome], order: list[str], logged: list[int]) -> None:
    """Take one worker's answer: fetch its objects (verified), then log every record whose turn has come."""
    name = res["name"]
    if res["ok"]:
        try:
            fetch(b.store, res["rows"], where)
        except ProvError as e:
            res = {"name": name, "ok": False, "reason": f"results did not arrive intact: {e}",
                   "exit_code": e.exit_code, "host": res.get("host"), "wall": res.get("wall")}
    o = ReplayOutcome(**{k: v for k, v in res.items() if k != "rows"}, path=b.paths().get(name))
    results[name] = o
    b._say(name, "done" if o.ok else "failed", o)
    while logged[0] < len(order) and order[logged[0]] in results:
        nxt = results[order[logged[0]]]
        if nxt.ok:
            nxt.logged = log_record(b.store, nxt.record_b3)
        logged[0] += 1


def run_local(b: ReplayBatch) -> list[ReplayOutcome]:
    """One after another in this process: the same work() a Ray worker runs."""
    with tempfile.TemporaryDirectory(prefix="prov-meet-") as tmp:
        meet = b.meeting or {"kind": "dir", "path": tmp}
        tasks = b.tasks(meet)
        where = meeting(meet)
        results: dict[str, ReplayOutcome] = {}
        order, logged = [t["name"] for t in tasks], [0]
        for t in tasks:
            b._say(t["name"], "running")
            _merge(b, where, work(t), results, order, logged)
        return [results[n] for n in order]


def _loopback_only(address: str | None) -> None:
    """An embedded Ray is this machine alone: keep its traffic on loopback. (Ray otherwise binds
    and dials the machine's outward address; the switch is read once, when ray is imported.)"""
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def ray_available(address: str | None = None) -> bool:
    _loopback_only(address or os.environ.get("RAY_ADDRESS") or None)
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


CONNECT_TIMEOUT = 30.0  # seconds a cluster has to answer (--connect-timeout)


def run_ray(b: ReplayBatch, address: str | None = None, cpus: float = 1.0, retries: int = 3,
            node_ip: str | None = None, connect_timeout: float = CONNECT_TIMEOUT) -> list[ReplayOutcome]:
    import contextlib
    import sys
    with contextlib.redirect_stdout(sys.stderr):  # Ray prints its workers' deaths: stdout is our answer's
        return _run_ray(b, address, cpus, retries, node_ip, connect_timeout)


def _join(ray, address: str, node_ip: str | None, timeout: float, kw: dict) -> None:
    """ray.init against a cluster, bounded: Ray itself retries a dead or silent address for minutes,
    printing its own warnings. The address must take a TCP connection, then a throwaway driver in a
    child process must join within `timeout` (its output and its retries die with it); otherwise one
    line, exit 3. Only then does this process join."""
    import subprocess
    import sys
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise MissingEnvironment(f"Ray: no cluster answers at {address} ({getattr(e, 'strerror', None) or e}); "
                                 "start one with `ray start --head`, or check --address") from None
    code = ("import sys, ray; print('imported', flush=True); "
            "ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False, "
            "**({'_node_ip_address': sys.argv[2]} if sys.argv[2] else {})); ray.shutdown()")
    probe = subprocess.Popen([sys.executable, "-c", code, address, node_ip or ""], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        probe.stdout.readline()  # the clock starts once Ray is imported: a slow import is not a dead cluster
        try:
            probe.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MissingEnvironment(f"Ray: the cluster at {address} did not answer within {timeout:g} s "
                                     "(--connect-timeout)") from None
        if probe.returncode != 0:
            why = [line for line in probe.stderr.read().splitlines() if line.strip()]
            raise MissingEnvironment(f"Ray: cannot join the cluster at {address}: {why[-1] if why else probe.returncode}")
    finally:
        if probe.poll() is None:
            probe.kill()
        probe.wait()
        probe.stdout.close()
        probe.stderr.close()
    ray.init(address=address, **({"_node_ip_address": node_ip} if node_ip else {}), **kw)


def _run_ray(b: ReplayBatch, address: str | None, cpus: float, retries: int, node_ip: str | None,
             connect_timeout: float = CONNECT_TIMEOUT) -> list[ReplayOutcome]:
    """Fan out as Ray tasks (num_gpus=1 with --device cuda). Without an address, an embedded Ray
    on this machine. At most as many tasks are in flight as the cluster has slots, so 'running'
    means running."""
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable, honoured as Ray does
    _loopback_only(address)
    try:
        import ray
    except ImportError:
        raise MissingEnvironment("--engine ray needs Ray: pip install 'comma-lab[ray]'") from None
    if address and b.meeting is None:
        raise ProvError("--address: workers on other machines need a meeting point: pass --remote (a DVC remote)")
    started_here = not ray.is_initialized()
    if started_here:
        kw = dict(log_to_driver=False, configure_logging=False)
        try:
            if address:
                _join(ray, address, node_ip, connect_timeout, kw)
            else:  # this machine only: small object store (tasks pass digests, not data), no dashboard
                ray.init(include_dashboard=False, object_store_memory=128 << 20, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise MissingEnvironment(f"Ray: cannot start or join a cluster at {address or '(embedded)'}: "
                                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    tmp = tempfile.mkdtemp(prefix="prov-meet-")
    pending: dict = {}
    try:
        meet = b.meeting or {"kind": "dir", "path": tmp}
        tasks = b.tasks(meet)
        where = meeting(meet)
        gpu = b.device == "cuda"
        remote = ray.remote(work).options(num_cpus=0 if gpu else cpus, num_gpus=1 if gpu else 0,
                                          max_retries=retries, retry_exceptions=False, name="prov_replay")
        results: dict[str, ReplayOutcome] = {}
        order, logged = [t["name"] for t in tasks], [0]
        queue = list(tasks)

        def slots() -> int:
            res = ray.cluster_resources()
            have = res.get("GPU", 0) if gpu else res.get("CPU", 0) / max(cpus, 1e-9)
            return max(1, int(have))

        while queue or pending:
            while queue and len(pending) < slots():
                t = queue.pop(0)
                pending[remote.remote(t)] = t["name"]
                b._say(t["name"], "running")
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                name = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as e:  # out of retries, or our own bug on the worker
                    msg = str(e).strip().splitlines()
                    res = {"name": name, "ok": False, "exit_code": 1,
                           "reason": f"worker failed: {type(e).__name__}: {msg[-1] if msg else ''}"[:500]}
                _merge(b, where, res, results, order, logged)
        return [results[n] for n in order]
    finally:
        for ref in pending:  # Ctrl-C or an error: stop what is still running
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        if started_here:
            ray.shutdown()


def run(b: ReplayBatch, engine: str | None = None, **kw) -> tuple[str, list[ReplayOutcome]]:
    """(the engine used, one outcome per submission in the order given)."""
    engine = engine or ("ray" if ray_available(kw.get("address")) else "local")
    if engine not in ENGINES:
        raise ProvError(f"--engine {engine}: must be one of {', '.join(ENGINES)}")
    return engine, (run_ray(b, **kw) if engine == "ray" else run_local(b))
