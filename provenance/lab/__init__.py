"""The lab: pipeline steps, sweeps, the ledger, batches, the site, the miniature generator."""
