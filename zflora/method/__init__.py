"""The zFLoRA method itself: config, layers, model wrapper, fusion and swapping, adapter
files, the architecture table, base fingerprints, safe loading and disk-to-disk export.

Everything a user needs to add, train, fuse and switch zFLoRA adapters lives here; the
experiment harness (`zflora.harness`) builds on it, never the other way round.
"""
