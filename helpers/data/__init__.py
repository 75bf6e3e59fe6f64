"""2. Text and activations: corpora, collection into a sharded store, massive tokens, toy data."""
