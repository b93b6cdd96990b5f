"""A client for the OCI distribution API (registry v2), in layers.

``options``     the client's frozen settings: TLS, credentials, mirrors, time budget,
                retries, proxies (``proxies``); ``schemes`` what loopback registries speak
``transport``   one HTTP request: TLS, timeouts, redirects (dropping credentials
                when they leave the registry), scheme fallback for local registries
``auth``        the ``WWW-Authenticate`` challenge flow: Bearer tokens and Basic
``credentials`` where a user's credentials come from: options, auth files, helpers
``client``      manifests, blobs and referrers of one repository, with retries driven
                by errors that know whether they are temporary, and resumed downloads
``upload``      blobs (monolithic, chunked, mounted) and manifests pushed to one repository
"""

from __future__ import annotations

from .client import FetchedManifest, RegistryClient
from .credentials import Credentials, find_credentials
from .options import RegistryOptions
from .proxies import ProxySettings
from .schemes import SchemeHints

__all__ = ["Credentials", "FetchedManifest", "ProxySettings", "RegistryClient", "RegistryOptions",
           "SchemeHints", "find_credentials"]
