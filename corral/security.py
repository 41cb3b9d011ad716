"""CurveZMQ for a cluster: one server keypair, one client keypair, and who may connect.

With ``--curve`` every TCP socket of a cluster is encrypted and authenticated. The controller's
sockets (and the task scheduler's, which it starts) are curve *servers* holding the server
secret; engines, clients and the scheduler's outgoing sockets are curve *clients* holding the
cluster's one client keypair. A ZAP authenticator on each server context admits that client
public key and nothing else, so a peer needs the connection file to even complete a handshake.

The server secret never leaves memory: the controller makes it and hands it to the scheduler
process on its stdin. Connection files (mode 0600) hold the server's public key and the client
keypair under ``"curve"`` as z85 strings. Inproc sockets never use curve: there is no wire.

This module is the only place that knows the socket options; roles call its functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
import zmq.utils.z85

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

from corral.errors import ConnectionError

__all__ = [
    "CurveKeys",
    "client_options",
    "make_client",
    "make_server",
    "server_options",
    "start_authenticator",
]

CONNECTION_FIELD = "curve"
PUBLIC_FIELDS = ("server_public", "client_public", "client_secret")
SocketOptions = list[tuple[int, int | bytes]]


@dataclass(frozen=True, repr=False)
class CurveKeys:
    """The cluster's keys, z85-encoded (40 ASCII bytes each).

    ``server_secret`` is None everywhere but in the controller and its scheduler; only
    :meth:`to_connection` output is ever written to disk, and it never holds that secret.
    """

    server_public: bytes
    client_public: bytes
    client_secret: bytes
    server_secret: bytes | None = None

    def __post_init__(self) -> None:
        if zmq.curve_public(self.client_secret) != self.client_public:
            raise ValueError("the client public key does not match the client secret key")
        if self.server_secret is not None:
            if zmq.curve_public(self.server_secret) != self.server_public:
                raise ValueError("the server public key does not match the server secret key")

    @classmethod
    def generate(cls) -> CurveKeys:
        """Fresh keypairs for a new cluster (the server secret included)."""
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public, client_public, client_secret, server_secret)

    def to_connection(self) -> dict[str, str]:
        """The ``"curve"`` section of a connection file: everything but the server secret."""
        return {name: getattr(self, name).decode("ascii") for name in PUBLIC_FIELDS}

    def to_settings(self) -> dict[str, str]:
        """Every key, for the scheduler's stdin settings (never for a file)."""
        settings = self.to_connection()
        if self.server_secret is not None:
            settings["server_secret"] = self.server_secret.decode("ascii")
        return settings

    @classmethod
    def from_connection(cls, info: Mapping[str, Any]) -> CurveKeys | None:
        """The keys under ``info["curve"]`` (a connection file or settings dict); None when
        the cluster does not use curve. A malformed section raises ConnectionError."""
        section = info.get(CONNECTION_FIELD)
        if section is None:
            return None
        if not isinstance(section, Mapping):
            raise ConnectionError("connection info: 'curve' must be an object of z85 keys")
        try:
            keys = {name: _z85_key(section[name]) for name in PUBLIC_FIELDS}
            secret = section.get("server_secret")
            return cls(**keys, server_secret=None if secret is None else _z85_key(secret))
        except KeyError as missing:
            raise ConnectionError(f"connection info: 'curve' lacks {missing}") from None
        except (TypeError, ValueError) as err:
            raise ConnectionError(f"connection info: unusable curve keys ({err})") from None

    def __repr__(self) -> str:
        return f"CurveKeys(server_public={self.server_public!r}, client_public=...)"


def _z85_key(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 40:
        raise ValueError("a key must be a 40-character z85 string")
    key = value.encode("ascii")
    zmq.utils.z85.decode(key)  # raises ValueError on characters outside z85
    return key


def server_options(keys: CurveKeys) -> SocketOptions:
    """Options that make a socket a curve server (for devices' ``setsockopt_in/out``)."""
    if keys.server_secret is None:
        raise ValueError("a curve server needs the server secret key")
    return [(zmq.CURVE_SERVER, 1), (zmq.CURVE_SECRETKEY, keys.server_secret)]


def client_options(keys: CurveKeys) -> SocketOptions:
    """Options that make a socket a curve client of the cluster's server."""
    return [
        (zmq.CURVE_SERVERKEY, keys.server_public),
        (zmq.CURVE_PUBLICKEY, keys.client_public),
        (zmq.CURVE_SECRETKEY, keys.client_secret),
    ]


def make_server(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Make ``sock`` a curve server; call before it binds."""
    for option, value in server_options(keys):
        sock.setsockopt(option, value)


def make_client(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Make ``sock`` a curve client; call before it connects."""
    for option, value in client_options(keys):
        sock.setsockopt(option, value)


class _ClusterClientOnly:
    """ZAP credentials check: the cluster's client public key, and no other."""

    def __init__(self, client_public: bytes) -> None:
        self.client_public = client_public

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.client_public


def start_authenticator(context: zmq.Context[Any], keys: CurveKeys) -> ThreadAuthenticator:
    """Start a ZAP handler on ``context`` that admits only the cluster's client key.

    Start it before any curve server socket of ``context`` binds (without a ZAP handler
    libzmq admits every client key); stop it before the context is destroyed. NULL peers never
    reach it: a curve server refuses them during the handshake, and inproc has none.

    (Imported here: ``zmq.auth.thread`` imports asyncio, and with it ssl, which only the
    controller's processes need, not each engine and client: corral.socket_events.)
    """
    from zmq.auth.thread import ThreadAuthenticator

    authenticator = ThreadAuthenticator(context)
    authenticator.configure_curve_callback("*", _ClusterClientOnly(keys.client_public))
    authenticator.start()
    return authenticator
