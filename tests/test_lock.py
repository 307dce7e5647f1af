"""The environment is pinned: requirements.lock agrees with pyproject.toml, and the install used it."""
import os
import tomllib

import pytest
from conftest import ROOT
from packaging.requirements import Requirement

from transferlab.core import lock


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_requirement_is_locked_at_a_version_it_allows():
    pinned = lock.pins(ROOT / lock.NAME)
    for requirement in requirements():
        name = lock.canonical(requirement.name)
        assert name in pinned, f"{requirement.name} is in pyproject.toml but not in {lock.NAME}: bash .ci/lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock.NAME} pins {name}=={pinned[name]}, outside pyproject's {requirement}: bash .ci/lock")


def test_the_lock_pins_exact_versions_once_each():
    lines = [line for line in (ROOT / lock.NAME).read_text().splitlines() if line and not line.startswith("#")]
    names = [lock.canonical(line.split("==")[0]) for line in lines]
    assert all("==" in line for line in lines) and len(names) == len(set(names))
    assert lock.digest(ROOT / lock.NAME) != "none" and len(lock.digest(ROOT / lock.NAME)) == 12


def test_this_environment_was_installed_from_the_lock():
    differ = lock.unlike_installed(ROOT / lock.NAME)
    if differ and not os.environ.get("TRANSFERLAB_INSTALLED_FROM_LOCK"):  # .ci/run sets it once it has installed
        pytest.skip(f"this environment was not installed from {lock.NAME}: {', '.join(differ[:3])}")
    assert not differ, f"installed versions differ from {lock.NAME}: {differ}"
