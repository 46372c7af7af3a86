"""`prov batch ...`: many replays at once (provenance.lab.batch). Hooked into the CLI by cli.py."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from provenance.cli.common import emit, json_option, open_store
from provenance.core.errors import ProvError


@click.group()
def batch():
    """Many replays at once: one after another, or fanned out on Ray."""


def _progress(total: int):
    """done / running / failed per submission, on a terminal; nothing when stderr is piped."""
    if not sys.stderr.isatty():
        return None
    state: dict[str, str] = {}

    def say(name, what, o):
        state[name] = what
        counts = {k: sum(1 for v in state.values() if v == k) for k in ("done", "running", "failed")}
        detail = ""
        if o is not None:
            detail = f" {o.score!r} ({o.grade})" if o.ok else f": {o.reason}"
        click.echo(f"batch: {name} {what}{detail}   [{counts['done']} done, {counts['running']} running, "
                   f"{counts['failed']} failed, {total - len(state)} waiting]", err=True)
    return say


@batch.command("replay")
@click.argument("names", nargs=-1)
@click.option("--submissions", "folder", default="submissions", show_default=True,
              type=click.Path(file_okay=False), help="Folder of <name>/{archive.zip,runtime/}.")
@click.option("--params", "params_path", type=click.Path(dir_okay=False, exists=True),
              help="params.yaml: replay its `submissions` list (instead of NAMES).")
@click.option("--upstream", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--engine", type=click.Choice(["local", "ray"]),
              help="local: one after another here; ray: Ray tasks. Default: ray when installed, else local.")
@click.option("--address", help="Join this Ray cluster (host:port) instead of starting one on this machine.")
@click.option("--node-ip-address", "node_ip", help="This machine's address in the cluster (as for ray start).")
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds the --address cluster has to answer; then one line and exit 3.")
@click.option("--remote", "remote_name", help="DVC remote (of --repo) as the meeting point; needed with --address.")
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False),
              help="DVC repository whose remote configuration --remote names.")
@click.option("--cpus-per-task", type=float, default=1.0, show_default=True)
@click.option("--retries", type=click.IntRange(0, 20), default=3, show_default=True,
              help="Times Ray re-runs a task whose worker died.")
@click.option("--no-sandbox", is_flag=True, help="Run without bubblewrap; recorded, and grades are capped below A.")
@click.option("--timeout", type=float, default=1800.0, show_default=True, help="Wall-clock limit per phase (s).")
@click.option("--mem-limit", type=int, default=16 << 30, show_default=True,
              help="Address-space limit in bytes (ignored with --device cuda).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Write OUT/<name>/record.json for each record and OUT/batch.json.")
@json_option
@click.pass_context
def batch_replay(ctx, names, folder, params_path, upstream, device, engine, address, node_ip, remote_name, repo,
                 cpus_per_task, retries, no_sandbox, timeout, mem_limit, out_dir, as_json, connect_timeout=30.0):
    """Replay many submissions; merge every record into the store and log, in submission order.

    Exit 0 when all replayed, 1 when any failed (each failure is reported with its
    reason), 2 on bad input, 3 when Ray, bubblewrap or the cluster is missing, 130 on Ctrl-C.

    \b
    Example:
      prov batch replay --params params.yaml --submissions submissions --upstream evidence/miniature/upstream
    """
    from provenance.lab.batch import ReplayBatch, collect, run
    from provenance.lab.meeting import dvc_remote
    from provenance.core.files import write_atomic, write_json
    if params_path:
        if names:
            raise ProvError("give NAMES or --params, not both")
        from provenance.lab.params import submissions_param
        names = submissions_param(Path(params_path))
    subs = collect(folder, list(names))
    if address:
        engine = engine or "ray"
        if engine != "ray":
            raise ProvError("--address joins a Ray cluster: it needs --engine ray")
    meet = {"kind": "dvc", "conf": dvc_remote(repo, remote_name)} if (remote_name or address) else None
    store = open_store(ctx, create=True)
    limits = {"timeout": timeout, "address_space": None if device == "cuda" else mem_limit}
    b = ReplayBatch(store, subs, Path(upstream).resolve(), device, not no_sandbox, limits, meet, _progress(len(subs)))
    try:
        chosen, outcomes = run(b, engine, address=address, cpus=cpus_per_task, retries=retries,
                             connect_timeout=connect_timeout, **({"node_ip": node_ip} if node_ip else {}))
    except KeyboardInterrupt:
        click.echo("prov: interrupted: in-flight replays stopped; the store holds only complete results", err=True)
        sys.exit(130)
    if out_dir:
        for o in outcomes:
            if o.ok:
                write_atomic(Path(out_dir) / o.name / "record.json", store.read_bytes(o.record_b3))
        write_json(Path(out_dir) / "batch.json", {"engine": chosen, "results": [o.as_dict() for o in outcomes]})
    failed = [o for o in outcomes if not o.ok]
    emit({"engine": chosen, "ok": not failed, "results": [o.as_dict() for o in outcomes]}, as_json,
         lambda: "\n".join([f"{o.name}: {o.score!r} ({o.grade}), record {o.record}" if o.ok else
                            f"{o.name}: FAILED: {o.reason}" for o in outcomes] +
                           [f"{len(outcomes) - len(failed)} replayed, {len(failed)} failed ({chosen})"]))
    if failed:
        sys.exit(1)
