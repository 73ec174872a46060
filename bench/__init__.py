"""The tpotserve benchmark: ``python -m bench.run`` (``make bench``); see bench/README.md."""
