"""Data: manifests, text corpora, speech synthesis, token shards."""
