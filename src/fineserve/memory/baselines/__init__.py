"""Baseline KV memory schemes behind the same `KVAllocator` interface as KV Slab."""
