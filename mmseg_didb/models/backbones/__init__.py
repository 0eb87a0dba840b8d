
from .didb_swin import DIDBSwin  # noqa: F401
from .didb_vit import DIDBViT  # noqa: F401
