"""Every error ocisquash raises on purpose.

The tree::

    OcisquashError                      root; carries message, context and hint
    ├── UsageError(ValueError)          bad options or arguments from the caller
    ├── ReferenceSyntaxError(ValueError)  an image reference that does not parse
    ├── UnsupportedError                a format or feature ocisquash does not handle
    │   └── MissingExtraError(ImportError)  an optional Python package is absent
    ├── IntegrityError                  content does not match what was promised
    │   ├── DigestMismatchError         wrong hash
    │   └── SizeMismatchError           wrong length
    ├── ManifestError(ValueError)       a manifest, index or config that is invalid
    ├── RuntimeConfigError(ValueError)  an image config that cannot become a runtime config
    ├── PlatformNotFoundError(LookupError)  no manifest for the requested platform
    ├── ImageNotFoundError(LookupError) no image, tag or blob of that name
    ├── RegistryError                   the registry answered with an error
    │   ├── AuthError                   credentials refused or missing
    │   ├── RegistryUnreachableError    its name does not resolve, or nothing listens
    │   └── TransientRegistryError      temporary: 429, 5xx, a timeout, a cut connection
    ├── LayerError                      a layer's stream is invalid (bad tar, bad gzip)
    │   └── UnsafeLayerError            a layer tries to leave the image root
    ├── LimitExceededError              a hostile-input limit was reached
    ├── SquashfsError                   the writer was given something it cannot write
    ├── ErofsError                      the EROFS writer was given something it cannot write
    ├── CacheError                      the cache directory is unusable
    └── OutputError(OSError)            the output cannot be written (full disk, …)

Each error has ``message`` (what was wrong, one line), ``context`` (where: the
layer, blob or path; may be empty) and ``hint`` (what to do; may be empty).
``str(err)`` is ``"context: message"``, the line the CLI prints after
``ocisquash:``.

``exit_code`` is the command's exit status for the error, by kind (the table is in
the README and ``ocisquash --help``): 1 the work failed (output, cache, writer, a
check that found bytes not matching their digest, a feature not available here), 2
usage, 3 the image (not found, no such platform, invalid or unsafe), 4 the registry
or the network.
"""

from __future__ import annotations


class OcisquashError(Exception):
    """Root of all ocisquash errors."""

    #: exit status the CLI uses for this error
    exit_code: int = 1

    def __init__(self, message: str, *, context: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.context}: {self.message}" if self.context else self.message

    def with_context(self, context: str) -> OcisquashError:
        """Prefix ``context`` to this error's context and return the error."""
        self.context = f"{context}: {self.context}" if self.context else context
        return self


class UsageError(OcisquashError, ValueError):
    exit_code = 2


class ReferenceSyntaxError(OcisquashError, ValueError):
    exit_code = 2


class UnsupportedError(OcisquashError):
    pass


class MissingExtraError(UnsupportedError, ImportError):
    pass


class IntegrityError(OcisquashError):
    pass


class DigestMismatchError(IntegrityError):
    pass


class SizeMismatchError(IntegrityError):
    pass


class ManifestError(OcisquashError, ValueError):
    exit_code = 3


class RuntimeConfigError(OcisquashError, ValueError):
    exit_code = 3


class PlatformNotFoundError(OcisquashError, LookupError):
    exit_code = 3


class ImageNotFoundError(OcisquashError, LookupError):
    exit_code = 3


class RegistryError(OcisquashError):
    exit_code = 4

    def __init__(
        self, message: str, *, context: str = "", hint: str = "", status: int | None = None
    ) -> None:
        super().__init__(message, context=context, hint=hint)
        self.status = status

    @property
    def temporary(self) -> bool:
        """Whether retrying the same request may succeed."""
        return False


class AuthError(RegistryError):
    pass


class RegistryUnreachableError(RegistryError):
    """The registry (or the proxy before it) cannot be reached at all: its name does
    not resolve, or a host never reached in this run refuses the connection. Waiting
    a few seconds will not change that, so it is not retried."""


class TransientRegistryError(RegistryError):
    def __init__(
        self,
        message: str,
        *,
        context: str = "",
        hint: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, context=context, hint=hint, status=status)
        self.retry_after = retry_after

    @property
    def temporary(self) -> bool:
        return True


class LayerError(OcisquashError):
    exit_code = 3


class UnsafeLayerError(LayerError):
    pass


class LimitExceededError(OcisquashError):
    exit_code = 3


class SquashfsError(OcisquashError):
    pass


class ErofsError(OcisquashError):
    pass


class CacheError(OcisquashError):
    pass


class OutputError(OcisquashError, OSError):
    pass
