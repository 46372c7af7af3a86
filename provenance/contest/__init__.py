"""The contest's rules: profiles and their pinned evaluators, the report parser, checks, grades.

`rules` holds the official profile and everything that judges a report; `miniature` the project's
own small contest. This module is the registry of both (light: no torch or av)."""

from provenance.contest import miniature, rules
from provenance.core.errors import ProvError

PROFILES = {p.name: p for p in (rules.OFFICIAL, miniature.PROFILE)}


def get_profile(name: str) -> rules.Profile:
    """A registered profile; NAME+stand-ins is that profile with labelled stand-ins (its `stand_ins`
    says so, and nothing under it bears a score)."""
    base = name[:-len(rules.STAND_IN_SUFFIX)] if name.endswith(rules.STAND_IN_SUFFIX) else name
    try:
        profile = PROFILES[base]
    except KeyError:
        raise ProvError(f"unknown contest profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None
    if base != name:
        import dataclasses
        profile = dataclasses.replace(profile, name=name, stand_ins=tuple(
            rel for rel, _, _ in profile.evaluator if rel.startswith(rules.LFS_FILES)))
    return profile
