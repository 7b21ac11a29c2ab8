"""The conda environment for `--software-deployment-method conda` asks for what pyproject.toml asks for."""

import tomllib

import yaml

from conftest import REPO


def test_the_conda_environment_pins_what_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "envs" / "frelon.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = [r for r in pip if not r.startswith("-e")]
    assert pinned and set(pinned) <= set(project["dependencies"]), pinned
    assert f"python{project['requires-python']}" in env["dependencies"]
    assert "-e ../" in pip  # the project itself, which brings the rest of its dependencies
