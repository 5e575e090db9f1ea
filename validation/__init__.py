"""The validation suite: small studies with a known answer, run through the real workflow and scored.

`python -m validation.run --suite full|ci` (or `make validate` / `make validate-ci`) builds the
studies of `validation.studies`, runs snakemake on each and writes the scores; VALIDATION.md
holds the numbers and what they say about the diff's statistics.
"""
