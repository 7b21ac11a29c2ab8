"""Write the experiment spec that Snakemake resolved from the config (rule `spec`)."""

from frelon.atomic import write_json

spec, out, log = snakemake.params.spec, snakemake.output[0], snakemake.log[0]  # noqa: F821 (injected)
write_json(out, spec)
with open(log, "w") as f:
    f.write(f"{spec['experiment']}: lr {spec['train']['lr']:g} at global batch {spec['train']['global_batch']}\n")
