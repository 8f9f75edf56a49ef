"""s3prl-vgs: visually grounded speech models (FaST-VGS, speech-guided MIM) for S3PRL and ESPnet."""

__version__ = "0.1.0"

from .checkpoint import load_model, save_model  # noqa: E402
from .models import available_models, build_model  # noqa: E402
from .upstream import install as _install_s3prl_entries  # noqa: E402

# After `import s3prl_vgs`, s3prl.hub has our entries (registered lazily, on its import).
_install_s3prl_entries()

__all__ = ["build_model", "load_model", "save_model", "available_models", "__version__"]
