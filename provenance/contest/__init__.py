"""The contest's rules: profiles and their pinned evaluators, the report parser, checks, grades.

`rules` holds the official profile and everything that judges a report; `miniature` the project's
own small contest. This module is the registry of both (light: no torch or av)."""

from provenance.contest import miniature, profiles
from provenance.core.errors import ProvError

PROFILES = {p.name: p for p in (profiles.OFFICIAL, miniature.PROFILE)}


def get_profile(name: str) -> profiles.Profile:
    """A registered profile; NAME+stand-ins is that profile with labelled stand-ins (its `stand_ins`
    says so, and nothing under it bears a score)."""
    suffix = profiles.STAND_IN_SUFFIX
    base = name[:-len(suffix)] if name.endswith(suffix) else name
    try:
        profile = PROFILES[base]
    except KeyError:
        raise ProvError(f"unknown contest profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None
    return profile.named_stand_ins(name) if base != name else profile
