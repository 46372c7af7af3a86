"""The contest's rules: profiles and their pinned evaluators, the report parser, checks, grades.

`rules` holds the official profile and everything that judges a report; `miniature` the project's
own small contest. This module is the registry of both (light: no torch or av)."""

from provenance.contest import miniature, rules
from provenance.core.errors import ProvError

PROFILES = {p.name: p for p in (rules.OFFICIAL, miniature.PROFILE)}


def get_profile(name: str) -> rules.Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ProvError(f"unknown contest profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None
