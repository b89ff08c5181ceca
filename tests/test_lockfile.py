"""The lockfiles the images install (requirements/*.txt, ``make lock``) match pyproject.toml.

The Dockerfiles install exactly these pins with ``--no-deps``: a dependency added to pyproject
and not locked would be missing from the image, and a pin outside the declared range would
install a version the code was never meant to run on.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# Each lockfile: the extras it adds to the core dependencies, and the image installing it.
LOCKS = {
    "requirements/web.txt": (("kubernetes",), "docker/Dockerfile"),
    "requirements/agent.txt": (("agent",), "docker/Dockerfile.agent"),
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lockfile: str) -> dict[str, str]:
    return {canonical(name): version for name, version in PIN.findall((ROOT / lockfile).read_text())}


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize("lockfile", sorted(LOCKS))
def test_the_lockfile_pins_every_declared_dependency_within_its_range(lockfile):
    extras, _ = LOCKS[lockfile]
    locked = pins(lockfile)
    missing = [str(req) for req in requirements(extras) if canonical(req.name) not in locked]
    assert missing == [], f"run `make lock`: {lockfile} lacks {missing}"
    outside = [
        f"{req.name}=={locked[canonical(req.name)]} (pyproject: {req})"
        for req in requirements(extras)
        if not req.specifier.contains(locked[canonical(req.name)], prereleases=True)
    ]
    assert outside == [], f"run `make lock`: {outside}"


@pytest.mark.parametrize("lockfile", sorted(LOCKS))
def test_every_pin_carries_hashes_and_the_image_installs_the_lockfile(lockfile):
    text = (ROOT / lockfile).read_text()
    blocks = [block for block in re.split(r"\n(?=[A-Za-z0-9])", text) if PIN.match(block)]
    assert len(blocks) == len(pins(lockfile)) > 10
    unhashed = [block.split(" ", 1)[0] for block in blocks if "--hash=sha256:" not in block]
    assert unhashed == []
    _, dockerfile = LOCKS[lockfile]
    assert f"--no-deps --require-hashes -r {lockfile}" in (ROOT / dockerfile).read_text()


def test_pins_are_read_with_canonical_names():
    lock = pins("requirements/web.txt")
    assert "django" in lock and "psycopg-binary" in lock and "django-guardian" in lock
    assert all(re.fullmatch(r"[a-z0-9-]+", name) for name in lock)
