# frelon: the deep-learning course as a reproducible pipeline.
#   snakemake --cores all --configfile config/demo.yaml     # embedded demo, CPU, minutes
#   snakemake --cores all --resources gpu=4                 # the course study on a workstation
#   snakemake --profile profiles/slurm                      # on a SLURM cluster
from frelon import config as frelon_config

# The course study by default; `--configfile` replaces it (it would otherwise be merged into it).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


# Your own data folders are checked when a job that reads them is scheduled (see dataset_input), so
# a study runs without the data of the others.
frelon_config.validate(config, workflow.source_path("config/schema.yaml"))


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/studies.smk"
include: "rules/report.smk"


# Every job takes one share of the machine, unless its rule asks for more (timing jobs take all of them:
# see MACHINE in rules/common.smk).
for r in workflow.rules:
    r.resources.setdefault("machine", 1)


# Bookkeeping steps, and downloads (compute nodes often have no internet access), run on the
# submitting host, not as cluster jobs.
localrules:
    all,
    fetch_weights,
    fetch_archive,
    data,
    runs,
    report,
    spec,
    spec_pretrain,
    study_table,
    metrics,
    claims,
    study_figure,
    scaling_figure,


rule all:
    default_target: True
    input:
        rules.report.output,
        rules.data.input,
