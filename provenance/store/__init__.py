"""The content-addressed store: objects, index, refs, fsck, gc (objects, check), and what lstat alone can
say of a tree (statcheck). Knows nothing of logs or records."""

import os


def default_store_path() -> str:
    """$PROV_STORE, else evidence/store in the enclosing repository (.git or dvc.yaml), else here."""
    env = os.environ.get("PROV_STORE")
    if env:
        return env
    here = os.getcwd()
    d = here
    while True:
        if os.path.exists(os.path.join(d, ".git")) or os.path.exists(os.path.join(d, "dvc.yaml")):
            return os.path.join(d, "evidence", "store")
        up = os.path.dirname(d)
        if up == d:
            return os.path.join(here, "evidence", "store")
        d = up
