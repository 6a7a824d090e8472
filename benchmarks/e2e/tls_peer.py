"""The ``ytun-tls`` column: ytun as in the ``ytun`` column, with TLS on the server's port.

ytun serves its public side and its clients on one port, so with ``--tls-cert/--tls-key``
both are TLS: the load generator speaks HTTPS to the server (a handshake per new connection
in the new-connection scenarios) and the client verifies the server with ``--tls-ca``. The
certificate is issued for 127.0.0.1 by a throw-away CA (trustme).
"""

from __future__ import annotations

import shlex

from .plans import PeerContext, Plan, ToolMissing


def plan(ctx: PeerContext) -> Plan:
    try:
        import trustme
    except ImportError:
        raise ToolMissing(
            "trustme not installed (pip install -e '.[bench]'), needed for the certificate"
        ) from None
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory = ctx.workdir
    ca_path, chain_path, key_path = (
        directory / "ca.pem",
        directory / "chain.pem",
        directory / "key.pem",
    )
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key_path))
    with open(chain_path, "wb") as dst:
        for blob in cert.cert_chain_pems:
            dst.write(blob.bytes())
    server = (
        ctx.ytun_server
        + " "
        + shlex.join(["--tls-cert", str(chain_path), "--tls-key", str(key_path)])
    )
    client = ctx.ytun_client + " " + shlex.join(["--tls-ca", str(ca_path)])
    return Plan(
        server=server,
        server_port=ctx.ytun_port,
        public_port=ctx.ytun_port,
        client=client,
        host=ctx.ytun_host,
        tls_ca=ca_path,
        describe="ytun with TLS on its port: HTTPS for the load generator, TLS to the client",
    )
