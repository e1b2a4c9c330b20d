"""Connection settings read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

DEFAULT_URI = "grpc://localhost:8815"
DEFAULT_NAMESPACE = "default"
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def pod_namespace(path: str = SERVICE_ACCOUNT_NAMESPACE_FILE) -> Optional[str]:
    """The namespace of the pod this process runs in, from its service-account mount."""
    try:
        with open(path, encoding="utf-8") as f:
            ns = f.read().strip()
    except OSError:
        return None
    return ns or None


@dataclass(frozen=True)
class Settings:
    """Connection settings; see :meth:`from_env` for the environment variables."""

    uri: str = DEFAULT_URI
    token: Optional[str] = None
    namespace: str = DEFAULT_NAMESPACE
    tls_root_certs: Optional[str] = None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Reads ``FLIGHT_URI`` (default ``grpc://localhost:8815``), ``FLIGHT_TOKEN``,
        ``FLIGHT_NAMESPACE`` (default: the pod's namespace in Kubernetes, else ``default``)
        and ``FLIGHT_TLS_ROOT_CERTS`` (path of a PEM bundle for ``grpc+tls://`` URIs).
        Empty values count as unset."""
        env = os.environ if env is None else env
        uri = env.get("FLIGHT_URI") or DEFAULT_URI
        token = env.get("FLIGHT_TOKEN") or None
        namespace = env.get("FLIGHT_NAMESPACE") or pod_namespace() or DEFAULT_NAMESPACE
        certs = env.get("FLIGHT_TLS_ROOT_CERTS") or None
        return cls(uri=uri.strip(), token=token.strip() if token else None,
                   namespace=namespace.strip(), tls_root_certs=certs)
