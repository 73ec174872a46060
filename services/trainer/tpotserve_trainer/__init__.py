"""The trainer: RQ jobs that run TPOT and publish models to the store."""
