# frelon: the deep-learning course as a reproducible pipeline.
#   snakemake --cores all --configfile config/demo.yaml     # embedded demo, CPU, minutes
#   snakemake --cores all --resources gpu=4                 # the course study on a workstation
#   snakemake --profile profiles/slurm                      # on a SLURM cluster
from frelon import config as frelon_config

# The course study by default; `--configfile` replaces it (it would otherwise be merged into it).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


frelon_config.validate(config, workflow.source_path("config/schema.yaml"))


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        rules.report.input,
    default_target: True
