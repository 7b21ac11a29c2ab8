"""Write the experiment spec that Snakemake resolved from the config (rule `spec`)."""

from frelon.atomic import write_json

write_json(snakemake.output[0], snakemake.params.spec)  # noqa: F821 (injected by Snakemake)
