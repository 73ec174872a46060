"""tpotserve: the contract shared by the API and the trainer.

Settings, request schemas, the model store, domain errors and the queue's job
names. It imports neither Flask, nor the RQ worker, nor TPOT.
"""

__all__ = ["errors", "jobs", "offline", "schema", "settings", "store"]
