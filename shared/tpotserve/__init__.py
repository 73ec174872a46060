"""tpotserve: the contract shared by the API and the trainer.

Settings, request schemas, the model store, domain errors and the queue's job
names. It imports neither Flask, nor the RQ worker, nor TPOT.
"""

# Every module of the package (tests/unit/test_docs.py checks this list against the files
# and against docs/architecture.md's layout).
__all__ = [
    "atomic", "backup", "clock", "compiled", "contract", "datasets", "drift", "errors", "jobs", "live", "logs",
    "model_meta", "names", "offline", "policy", "registry", "schema", "settings", "shadow", "signing", "store",
    "training",
]
