"""Data layer: data-dir io and validation, corpus readers, audio/image loading, the synthetic corpus.

Nothing is re-exported here; import the module you need (``s3prl_vgs.data.validate``, ...).
"""
