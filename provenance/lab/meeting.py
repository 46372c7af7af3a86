"""Where a batch's head and workers meet: the lab's DVC remote (S3, SSH, a shared path) or, when every
worker shares the head's disk, a scratch directory. Objects travel by digest under PREFIX, beside
DVC's own files; every object is re-hashed when it arrives (`fetch`), and an S3 remote's
credentials travel in its configuration, as DVC's config carries them (`dvc_remote`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from provenance.core.errors import MissingEnvironment, ProvError, VerificationFailed
from provenance.store.objects import Store

PREFIX = "prov-store/objects"  # under the remote's root, beside DVC's own files/md5/


class _Dir:
    """A directory every party can reach (one machine, or a shared mount)."""

    def __init__(self, path: str):
        self.base = path

    def exists(self, rel: str) -> bool:
        return os.path.exists(os.path.join(self.base, rel))

    def put(self, src: Path, rel: str) -> None:
        dest = os.path.join(self.base, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = f"{dest}.tmp-{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)  # a reader sees the whole object or none

    def open(self, rel: str):
        return open(os.path.join(self.base, rel), "rb")


class _DvcFs:
    """The lab's DVC remote, through DVC's own filesystem for it (credentials as DVC has them)."""

    def __init__(self, conf: dict):
        try:
            from dvc.fs import get_cloud_fs
        except ImportError:
            raise MissingEnvironment("a DVC remote as meeting point needs dvc (pip install 'comma-lab[lab]')") from None
        cls, fsconf, root = get_cloud_fs(None, **conf)
        self.fs, self.base = cls(**fsconf), root.rstrip("/")

    def _p(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._p(rel))

    def put(self, src: Path, rel: str) -> None:
        self.fs.makedirs(self._p(rel).rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(src), self._p(rel))  # object stores publish a key whole

    def open(self, rel: str):
        return self.fs.open(self._p(rel), "rb")


def dvc_remote(repo: str | Path, name: str | None) -> dict:
    """The resolved configuration of one of the repository's DVC remotes (default: core.remote),
    as a worker needs it: url and options, relative paths made absolute."""
    try:
        from dvc.config import Config
        from dvc.fs import get_fs_config
    except ImportError:
        raise MissingEnvironment("--remote needs dvc (pip install 'comma-lab[lab]')") from None
    dvc_dir = Path(repo) / ".dvc"
    if not dvc_dir.is_dir():
        raise ProvError(f"{repo}: not a DVC repository (no .dvc/)")
    try:
        cfg = Config(dvc_dir=str(dvc_dir))
        name = name or cfg["core"].get("remote")
        if not name:
            raise ProvError(f"{repo}: no default DVC remote; name one with --remote")
        conf = dict(get_fs_config(cfg, name=name))
    except ProvError:
        raise
    except Exception as e:  # dvc's config errors: one line
        raise ProvError(f"{repo}: DVC remote {name!r}: {e}") from None
    return _with_credentials(conf, name)


S3_KEYS = ("access_key_id", "secret_access_key")


def _with_credentials(conf: dict, name: str) -> dict:
    """An S3 remote's credentials as the workers need them: DVC's config when it names keys, else the
    ones this head resolves (AWS_* variables, a profile, an instance role), carried in the remote's
    configuration as DVC's own config would carry them; a worker's environment is not the head's.
    None anywhere is one line naming the settings, before any task starts."""
    if not str(conf.get("url", "")).startswith("s3://") or all(conf.get(k) for k in S3_KEYS):
        return conf
    try:
        import botocore.session
    except ImportError:  # DVC without S3 support fails on its own, naming dvc-s3
        return conf
    session = botocore.session.get_session()
    if conf.get("profile"):
        session.set_config_variable("profile", conf["profile"])
    try:
        creds = session.get_credentials()
    except Exception:  # a named profile that does not exist, a broken config file
        creds = None
    frozen = creds.get_frozen_credentials() if creds is not None else None
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise ProvError(f"DVC remote {name!r} ({conf['url']}): no credentials for the workers: set access_key_id "
                        f"and secret_access_key (dvc remote modify --local {name} access_key_id ...), or "
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY where prov runs")
    out = {**conf, "access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key}
    if frozen.token:
        out["session_token"] = frozen.token
    return out


def meeting(spec: dict):
    return _Dir(spec["path"]) if spec["kind"] == "dir" else _DvcFs(spec["conf"])


def _rel(b3: str) -> str:
    return f"{PREFIX}/{b3[:2]}/{b3}"


def closure(store: Store, roots: list[str]) -> list[list]:
    """[blake3, kind, children] for every object reachable from `roots` through the index's links,
    each once; what a receiving store needs to index them."""
    out, seen, todo = [], set(), list(roots)
    while todo:
        b3 = todo.pop()
        if b3 in seen:
            continue
        seen.add(b3)
        info = store.info(b3) or store._missing(b3)
        kids = store.children(b3)
        out.append([b3, info.kind, kids])
        todo.extend(reversed(kids))
    return out


def publish(store: Store, rows: list[list], where) -> int:
    sent = 0
    for b3, _kind, _kids in rows:
        if not where.exists(_rel(b3)):
            where.put(store.path_of(b3), _rel(b3))
            sent += 1
    return sent


def fetch(store: Store, rows: list[list], where) -> int:
    """Bring objects into `store` from the meeting point, re-hashing each: an object whose bytes
    are not its name is refused and nothing of this fetch becomes visible. A tree is indexed under
    its own SHA-256 view (from its children's), as an add would index it."""
    got, trees = 0, []
    with store.batch() as b:
        for b3, kind, kids in rows:
            if b.known(b3):
                continue
            try:
                with where.open(_rel(b3)) as src:
                    d = b.stage_verified(src, b3, kind, tuple(kids))
            except FileNotFoundError:
                raise VerificationFailed(f"object {b3} is missing from the meeting point") from None
            if d.blake3 != b3:
                raise VerificationFailed(f"object {b3} arrived corrupt (its bytes hash to {d.blake3}); not stored")
            if kind == "tree":
                trees.append(b3)
            got += 1
        _tree_views(store, b, trees)
    return got


def _tree_views(store: Store, b, trees: list[str]) -> None:
    """Index each fetched tree under its SHA-256 view, which needs its children's: subtrees first
    (rows of several roots are not in parent-child order), iteratively (trees may be deep)."""
    from provenance.core import tree as treemod
    pending = set(trees)
    for top in trees:
        stack = [top]
        while stack:
            b3 = stack[-1]
            if b3 not in pending:
                stack.pop()
                continue
            tmp, _d, kind, kids = b.new[b3]
            with open(tmp, "rb") as f:
                rows = treemod.parse(f.read(), b3)
            waiting = [child for _k, _n, _s, child in rows if child in pending]
            if waiting:
                stack.extend(waiting)
                continue

            def child_sha(_kind: str, name: str, child: str, tree=b3) -> str:
                staged = b.new.get(child)
                info = None if staged else store.info(child)
                if staged is None and info is None:
                    raise VerificationFailed(f"tree {tree}: child {name} ({child}) did not arrive")
                return staged[1].sha256 if staged else info.sha256
            b.new[b3] = (tmp, treemod.view_of(rows, child_sha), kind, kids)
            pending.discard(b3)
            stack.pop()
