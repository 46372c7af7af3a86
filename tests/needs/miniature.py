"""The miniature contest, built once per session: needs torch and PyAV."""

import pytest


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    """The miniature contest, built once per session (needs torch and PyAV)."""
    pytest.importorskip("torch")
    pytest.importorskip("av")
    from provenance.lab.miniature.build import build
    return build(tmp_path_factory.mktemp("mini") / "contest")


def sample(mini, name):
    return mini / "submissions" / name / "archive.zip", mini / "submissions" / name / "runtime"
