"""Snakemake step: results/report.md from the tables, figures and claims (frelon.report.document)."""

import sys

from frelon.report.document import build

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
inputs, config, params = snakemake.input, snakemake.config, snakemake.params  # noqa: F821
studies = {study: {"table": f"results/tables/{study}.csv", "runs": f"results/tables/runs/{study}.csv",
                   "figures": params.figures[study]} for study in config["studies"]}
checkpointing = adversarial = None
if "checkpointing" in config:
    checkpointing = {"tables": ["results/checkpointing/checkpointing.csv"],
                     "figures": ["results/checkpointing/checkpointing.png"]}
if "adversarial" in config:
    a = config["adversarial"]
    adversarial = {"tables": ["results/adversarial/attacks.csv", "results/adversarial/patch.csv"],
                   "figures": ["results/adversarial/example.png", "results/adversarial/patch.png"],
                   "note": f"Against the {', '.join(a['models'])} runs of study {a['study']}: accuracy under "
                           f"FGSM and PGD (L-inf, eps in 1/255 of the pixel range), and a patch made to turn "
                           f"one class into another, beside a noise patch of the same size. Each accuracy and "
                           f"success is a share of the test images attacked, from one run per model."}
build(snakemake.output[0], config, studies, "results/claims.md" if "claims" in config else None,  # noqa: F821
      checkpointing, adversarial, configfiles=params.configfiles, config_args=params.config_args, runs=params.runs)
