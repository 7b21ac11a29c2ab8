"""The conda environment of `--software-deployment-method conda`: it asks for what pyproject.toml asks
for, installs this repository, and every rule that runs project code uses it.

No conda can be installed here (it is on none of the package registries this machine reaches, and its
channels are out of reach too), so no environment is really solved. A stand-in `conda` answers
Snakemake's questions instead, and its `env create` checks what conda's pip step would install: conda
runs pip in the folder of the file it is given (conda/env/installers/pip.py: the pip workdir is the
env file's folder), which is Snakemake's copy of envs/frelon.yaml under .snakemake/conda/. That shows
which env file each rule names, where Snakemake puts it, and which folder `-e` installs; not that
conda-forge solves the environment, nor that pip installs into it.
"""

import json
import os
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import REPO, copy_workflow, run
from frelon.data.demo_hornet_detection import generate

ENV_FILE = REPO / "envs" / "frelon.yaml"


def env_pip() -> list[str]:
    env = yaml.safe_load(ENV_FILE.read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def test_the_conda_environment_pins_what_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load(ENV_FILE.read_text())
    pip = env_pip()
    pinned = [r for r in pip if not r.startswith("-e")]
    assert pinned and set(pinned) <= set(project["dependencies"]), pinned
    assert f"python{project['requires-python']}" in env["dependencies"]
    # The project itself, which brings the rest of its dependencies; without extras: the jobs need
    # neither the test tools nor the SLURM plugin (the Snakemake that submits them has it).
    assert set(project["optional-dependencies"]) == {"test", "slurm"}
    assert [r for r in pip if r.startswith("-e")] == ["-e ../.."]


def test_the_editable_install_is_this_repository_from_where_snakemake_copies_the_file():
    # conda runs pip in .snakemake/conda/, beside Snakemake's copy <hash>.yaml of the env file
    editable = [r.split(maxsplit=1)[1] for r in env_pip() if r.startswith("-e ")]
    assert [(REPO / ".snakemake" / "conda" / path).resolve() for path in editable] == [REPO]


def test_every_conda_directive_names_the_environment_file():
    for smk in sorted((REPO / "rules").glob("*.smk")):
        lines = smk.read_text().splitlines()
        paths = [lines[i + 1].strip().strip('"') for i, line in enumerate(lines) if line.strip() == "conda:"]
        assert all((smk.parent / path).resolve() == ENV_FILE for path in paths), (smk.name, paths)
    # that every rule which runs something has one: `snakemake --lint` (tests/test_workflow.py)


FAKE_CONDA = '''#!{python}
"""A stand-in for conda: answers Snakemake's questions; `env create` checks the folder that conda's pip
step would install (pip runs in the env file's folder), then makes an environment whose python and
frelon are this interpreter's, each call recorded in calls.log."""
import json, sys, tomllib
from pathlib import Path
import yaml
ROOT = Path({root!r})
args = sys.argv[1:]
if args == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": str(ROOT), "platform": "linux-64"}}))
elif args == ["--version"]:
    print("conda 24.11.3")
elif args[:2] == ["config", "--get"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
elif args[:1] == ["clean"]:
    pass
elif args[:2] == ["env", "create"]:
    file, prefix = Path(args[args.index("--file") + 1]), Path(args[args.index("--prefix") + 1])
    pip = next(d["pip"] for d in yaml.safe_load(file.read_text())["dependencies"] if isinstance(d, dict))
    editable = [(file.resolve().parent / r.split(maxsplit=1)[1]).resolve() for r in pip if r.startswith("-e ")]
    for project in editable:
        pyproject = project / "pyproject.toml"
        if not pyproject.is_file() or tomllib.loads(pyproject.read_text())["project"]["name"] != "frelon":
            sys.exit(f"fake conda: pip would install {{project}}, which is not the frelon project")
    with open(ROOT / "created.jsonl", "a") as f:
        print(json.dumps({{"file": str(file.resolve()), "prefix": str(prefix.resolve()),
                           "editable": [str(p) for p in editable]}}), file=f)
    (prefix / "bin").mkdir(parents=True)
    for name in ("python", "frelon"):
        tool = prefix / "bin" / name
        tool.write_text(f'#!/bin/sh\\necho {{name}} "$@" >> {{ROOT / "calls.log"}}\\nexec {bin}/{{name}} "$@"\\n')
        tool.chmod(0o755)
else:
    sys.exit(f"fake conda: {{args}} is not answered")
'''


@pytest.fixture
def fake_conda(tmp_path, monkeypatch):
    """A `conda` first on PATH (see FAKE_CONDA); its folder, where created.jsonl and calls.log appear."""
    root = tmp_path / "conda"
    (root / "bin").mkdir(parents=True)
    conda = root / "bin" / "conda"
    conda.write_text(FAKE_CONDA.format(python=sys.executable, root=str(root), bin=Path(sys.executable).parent))
    conda.chmod(0o755)
    (root / "bin" / "activate").write_text('PATH="$1/bin:$PATH"; export PATH\n')  # `source activate <env>`
    monkeypatch.setenv("PATH", f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return root


def conda_workflow(dest: Path) -> Path:
    """A copy of the workflow with its conda environment and the project file pip installs."""
    work = copy_workflow(dest)
    shutil.copytree(REPO / "envs", work / "envs", dirs_exist_ok=True)
    shutil.copy2(REPO / "pyproject.toml", work / "pyproject.toml")
    return work


@pytest.mark.slow  # Snakemake resolving every job's environment: seconds
@pytest.mark.parametrize("configfile", ["config/demo.yaml", None])
def test_a_conda_dry_run_resolves_the_environment_of_every_job(tmp_path, fake_conda, configfile):
    work = conda_workflow(tmp_path / "w")
    if configfile is None:  # the course config, with a small hornet folder and trap set where it looks for them
        for name in ("absence", "presence"):
            (work / "raw" / "hornet" / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 40), (40 * i, 90, 60)).save(work / "raw" / "hornet" / name / f"{i}.png")
        generate(work / "raw" / "hornet_traps", images=4, size=32, seed=0)
    cmd = ["snakemake", "--sdm", "conda", "-n", "--cores", "2"] + (["--configfile", configfile] if configfile else [])
    out = run(cmd, cwd=work).stdout
    # the demo's DAG has a job of every rule: each env file is read (a wrong path fails the dry run)
    assert "Conda environment envs/frelon.yaml will be created." in out
    assert out.count("Conda environment") == 1


@pytest.mark.slow  # a Snakemake run through conda: seconds
def test_jobs_run_inside_the_environment_that_installs_this_checkout(tmp_path, fake_conda):
    work = conda_workflow(tmp_path / "w")
    spec = "results/runs/finetune/random/seed0/spec.json"  # a script rule; demo_hornet runs a shell command
    run(["snakemake", "--sdm", "conda", "--cores", "2", "data/demo/hornet", spec, "--configfile", "config/demo.yaml"],
        cwd=work)
    assert (work / spec).is_file() and (work / "data" / "demo" / "hornet" / "presence").is_dir()
    created = [json.loads(line) for line in (fake_conda / "created.jsonl").read_text().splitlines()]
    assert len(created) == 1
    env_copy = Path(created[0]["file"])
    assert env_copy.parent == work / ".snakemake" / "conda" and env_copy.read_text() == ENV_FILE.read_text()
    assert created[0]["editable"] == [str(work)]
    calls = (fake_conda / "calls.log").read_text()
    assert "frelon demo-data hornet data/demo/hornet" in calls and "write_spec.py" in calls
