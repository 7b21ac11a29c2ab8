"""Workflow hygiene and scheduling: the Snakefiles are formatted and lint-free, timing jobs run alone,
GPU jobs are limited to the GPUs present, and a cluster run counts neither."""

import importlib.util
import re

import pytest
import yaml

from conftest import REPO, copy_workflow, run

SNAKEFILES = ["Snakefile", "rules"]


def test_the_snakefiles_are_formatted():
    # line length and the rest from pyproject.toml [tool.snakefmt]; `snakefmt Snakefile rules` fixes them
    run(["snakefmt", "--check", *SNAKEFILES], cwd=REPO)


@pytest.mark.slow  # Snakemake parsing the workflow: seconds
@pytest.mark.parametrize("configfile", ["config/demo.yaml", None])
def test_snakemake_lint_finds_nothing(tmp_path, configfile):
    work = copy_workflow(tmp_path / "w")
    # (`--lint json` prints text all the same in Snakemake 9.27: the exit status says whether it found any)
    proc = run(["snakemake", "--lint"] + (["--configfile", configfile] if configfile else []), cwd=work, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in output, output[-4000:]
    assert "Congratulations, your workflow is in a good condition!" in output


def dry_run_jobs(work, *args: str) -> list[tuple[str, str, dict[str, str]]]:
    """(rule, first output, resources) of every job that `snakemake -n ARGS` lists."""
    return listed_jobs(run(["snakemake", "-n", *args], cwd=work).stdout)


def listed_jobs(out: str) -> list[tuple[str, str, dict[str, str]]]:
    """(rule, first output, resources) of every job in a dry run's output."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", out, flags=re.M)[1:]:
        name, _, body = block.partition(":\n")
        fields = dict(re.findall(r"^    (\w+): (.*)$", body, flags=re.M))
        resources = dict(item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item)
        jobs.append((name, fields.get("output", "").split(",")[0], resources))
    assert jobs, out
    return jobs


def is_timing_job(rule: str, output: str) -> bool:
    return rule == "checkpointing_study" or (rule == "train" and output.startswith("results/runs/scaling/"))


@pytest.mark.slow  # a real training or several Snakemake runs: seconds
def test_timing_jobs_take_the_whole_machine_and_every_other_job_one_share(tmp_path):
    work = copy_workflow(tmp_path / "w")
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    assert [name for name, study in config["studies"].items() if study.get("timed")] == ["scaling"]
    for cores in ("2", "3"):
        jobs = dry_run_jobs(work, "--cores", cores, "--configfile", "config/demo.yaml")
        shares = {(rule, output): res["machine"] for rule, output, res in jobs if rule != "all"}
        timing = {job for job in shares if is_timing_job(*job)}
        assert len(timing) == 7  # six scaling runs and the checkpointing study
        assert {shares[job] for job in timing} == {cores}
        assert {share for job, share in shares.items() if job not in timing} == {"1"}
    # a limit of one's own: the timing jobs take that
    jobs = dry_run_jobs(work, "--cores", "2", "--resources", "machine=5", "--configfile", "config/demo.yaml")
    assert {res["machine"] for rule, output, res in jobs if is_timing_job(rule, output)} == {"5"}


def demo_on_auto_device(work):
    config = yaml.safe_load((work / "config" / "demo.yaml").read_text())
    config["device"] = "auto"
    (work / "config" / "auto.yaml").write_text(yaml.safe_dump(config))
    return "config/auto.yaml"


def gpus_by_run(jobs) -> dict[str, int]:
    return {output.rsplit("/", 1)[0]: int(res["gpu"]) for rule, output, res in jobs if rule == "train"}


@pytest.mark.slow  # a real training or several Snakemake runs: seconds
def test_gpu_jobs_are_limited_to_the_gpus_present(tmp_path, monkeypatch):
    work = copy_workflow(tmp_path / "w")
    configfile = demo_on_auto_device(work)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("FRELON_FAKE_GPUS", raising=False)
    # a machine without GPUs (this one): runs on device auto take none, so nothing waits for one
    cpu = gpus_by_run(dry_run_jobs(work, "--cores", "2", "--configfile", configfile))
    assert set(cpu.values()) == {0}
    # with GPUs: one per process, limited to the GPUs present
    monkeypatch.setenv("FRELON_FAKE_GPUS", "1")
    one = gpus_by_run(dry_run_jobs(work, "--cores", "2", "--configfile", configfile))
    assert one["results/runs/scaling/w1-nowarmup"] == 1 and one["results/runs/scaling/w2-fixed-warmup"] == 1
    # more than there are: lowered to what the machine shows, rather than jobs waiting an hour for GPUs (a
    # 2-process run asks for one, and its launch fails at once, naming the fix)
    monkeypatch.setenv("FRELON_FAKE_GPUS", "1")
    too_many = run(["snakemake", "-n", "--cores", "2", "--resources", "gpu=2", "--configfile", configfile], cwd=work)
    assert "--resources gpu=2: this machine shows 1 GPU(s)" in too_many.stderr and "using gpu=1" in too_many.stderr
    assert gpus_by_run(listed_jobs(too_many.stdout))["results/runs/scaling/w2-fixed-warmup"] == 1
    # the demo pins the CPU: no GPU even where there are some
    demo = gpus_by_run(dry_run_jobs(work, "--cores", "2", "--configfile", "config/demo.yaml"))
    assert set(demo.values()) == {0}


needs_slurm_plugin = pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                                        reason="the SLURM executor plugin is not installed (pip install '.[slurm]')")


@pytest.mark.slow  # Snakemake runs: seconds
@needs_slurm_plugin
def test_on_a_cluster_each_job_asks_for_its_gpus_and_shares_nothing(tmp_path, monkeypatch):
    work = copy_workflow(tmp_path / "w")
    configfile = demo_on_auto_device(work)
    monkeypatch.setenv("FRELON_FAKE_GPUS", "0")  # the submitting host has no GPU; the allocations have
    jobs = dry_run_jobs(work, "--executor", "slurm", "--jobs", "4", "--configfile", configfile)
    gpus = gpus_by_run(jobs)
    assert gpus["results/runs/scaling/w1-nowarmup"] == 1 and gpus["results/runs/scaling/w2-fixed-warmup"] == 2
    assert {res["machine"] for rule, output, res in jobs if rule != "all"} == {"1"}  # SLURM ignores it


@pytest.mark.slow  # Snakemake runs: seconds
@needs_slurm_plugin
def test_the_slurm_executor_runs_the_workflow_without_a_core_count(tmp_path):
    # Snakemake counts no cores under a cluster executor; the checkpointing study's threads once asked
    # for them as the Snakefile was read, which stopped every SLURM run before its first job.
    work = copy_workflow(tmp_path / "w")
    spec = "results/runs/finetune/random/seed0/spec.json"  # a local rule: runs here, no sbatch needed
    run(["snakemake", "--executor", "slurm", "--jobs", "1", "--slurm-init-seconds-before-status-checks", "1", spec,
         "--configfile", "config/demo.yaml"], cwd=work)
    assert (work / spec).is_file()
