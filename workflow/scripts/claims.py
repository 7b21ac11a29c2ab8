"""Snakemake step: the course's claims checked on the tables (frelon.report.claims)."""

import sys

from frelon.report import claims

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects it)
table = claims.write(snakemake.params.claims, snakemake.output.csv, snakemake.output.md)  # noqa: F821
print(claims.markdown(table))
