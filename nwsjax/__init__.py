"""nwsjax: populations of small CNNs trained together, their weight snapshots as a zoo,
and meta-classifiers that read training properties from the weights."""

__version__ = "0.1.0"

from nwsjax.errors import ConfigError, DatasetError, NWSError, ZooError  # noqa: E402
from nwsjax.zoo import Zoo, open_zoo  # noqa: E402

__all__ = ["ConfigError", "DatasetError", "NWSError", "ZooError", "Zoo", "open_zoo", "__version__"]
