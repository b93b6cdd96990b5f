"""ocisquash: compile OCI and Docker container images into flattened squashfs images."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compile import CompiledImage, compile_image

__all__ = ["CompiledImage", "__version__", "compile_image"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import ocisquash` (and the CLI) starts fast.
    if name in ("compile_image", "CompiledImage"):
        from . import compile as _compile

        return getattr(_compile, name)
    raise AttributeError(f"module 'ocisquash' has no attribute {name!r}")
