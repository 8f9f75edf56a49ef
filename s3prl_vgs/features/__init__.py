"""Image region (RoI) features for FaST-VGS: extraction, TSV import and the HDF5 store.

Only the store is imported here (not ``extract``, which needs torchvision), so
reading features (``RoIFeatureStore``) costs only h5py.
"""

from .store import FORMAT, NUM_BOXES, MissingImageError, RoIFeatureStore, StoreError

__all__ = ["FORMAT", "NUM_BOXES", "MissingImageError", "RoIFeatureStore", "StoreError"]
