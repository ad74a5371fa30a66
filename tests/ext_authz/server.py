#!/usr/bin/env python3
"""Envoy ext_authz test authorizer (for the proxy tests in tests/tests/mesh_ext_authz.rs): gRPC (envoy.service.auth.v3.Authorization/Check)
and the HTTP ext_authz protocol, with one decision table for both.

Dependencies: stdlib + grpcio + xds-protos (Envoy's compiled API protos) from requirements.txt;
the harness (tests/src/ext_authz.rs) installs them in a virtualenv of its own.

    venv/bin/python server.py --address 127.0.0.1 --grpc-port 9001 \
        --http-port 9002 --log /tmp/authz.jsonl [--http-path-prefix /authz] \
        [--tls-cert cert.pem --tls-key key.pem --grpcs-port 9003 --https-port 9004]

With --tls-cert/--tls-key, the same two services also listen with TLS (gRPC with ALPN h2).

Prints "READY" on stdout once both listeners are bound; exits 0 on SIGTERM/SIGINT.

Decision (user = "x-user" request header; gRPC: attributes.request.http.headers):
  path starts with /slow -> sleep --slow-seconds (2) then allow (no extra headers)
  user == "alice"        -> allow, upstream header x-authz-user: alice
  user == "mallory"      -> deny 403, x-authz-reason: blocked-user, body "mallory is blocked"
  user missing/empty     -> deny 401, www-authenticate: Bearer realm="authz"
  anything else          -> deny 403, body "not allowed"
"""
import argparse
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

ARGS = None
LOG_LOCK = threading.Lock()
LOG_FH = None


# --------------------------------------------------------------------------- decision
class Decision:
    __slots__ = ("allow", "status", "headers", "body", "grpc_code", "reason", "slow")

    def __init__(self, allow, status, headers=(), body="", grpc_code=0, reason="", slow=False):
        self.allow = allow
        self.status = status            # HTTP status (200 for allow)
        self.headers = list(headers)    # [(name, value)]: upstream (allow) or client (deny)
        self.body = body
        self.grpc_code = grpc_code      # google.rpc.Code for CheckResponse.status.code
        self.reason = reason
        self.slow = slow

    def as_dict(self):
        return {
            "allow": self.allow, "status": self.status,
            "headers": [[k, v] for k, v in self.headers], "body": self.body,
            "grpc_code": self.grpc_code, "reason": self.reason, "slow": self.slow,
        }


def decide(user, path):
    if path.startswith("/slow"):
        return Decision(True, 200, reason="slow", slow=True)
    if user == "alice":
        return Decision(True, 200, [("x-authz-user", "alice")], reason="alice")
    if user == "mallory":
        return Decision(False, 403, [("x-authz-reason", "blocked-user")], "mallory is blocked",
                        code_pb2.PERMISSION_DENIED, reason="blocked-user")
    if not user:
        return Decision(False, 401, [("www-authenticate", 'Bearer realm="authz"')], "",
                        code_pb2.UNAUTHENTICATED, reason="missing-user")
    return Decision(False, 403, [], "not allowed", code_pb2.PERMISSION_DENIED,
                    reason="not-allowed")


def log_check(rec):
    rec = dict(rec)
    rec["ts"] = time.time()
    line = json.dumps(rec, sort_keys=True)
    with LOG_LOCK:
        if LOG_FH is not None:
            LOG_FH.write(line + "\n")
            LOG_FH.flush()
    if ARGS is not None and ARGS.verbose:
        print(line, file=sys.stderr, flush=True)


def ci_get(mapping, name):
    """case-insensitive lookup in a str->str mapping"""
    if name in mapping:
        return mapping[name]
    lname = name.lower()
    for k, v in mapping.items():
        if k.lower() == lname:
            return v
    return None


# --------------------------------------------------------------------------- gRPC
def _peer_dict(peer):
    sa = peer.address.socket_address if peer.address.HasField("socket_address") else None
    d = {
        "principal": peer.principal,
        "service": peer.service,
        "certificate": peer.certificate,
        "labels": dict(peer.labels),
        "address": sa.address if sa is not None else None,
        "port": sa.port_value if sa is not None else None,
        "address_kind": peer.address.WhichOneof("address"),
    }
    return d


def _hvo(name, value):
    # append / append_action intentionally left unset (Envoy: unset append on
    # ext_authz responses means "set/overwrite").
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value))


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def Check(self, request, context):
        attrs = request.attributes
        http = attrs.request.http
        headers = dict(http.headers)
        if not headers and http.HasField("header_map"):
            # Envoy with encode_raw_headers=true sends header_map (field 13) instead
            for hv in http.header_map.headers:
                v = hv.value or hv.raw_value.decode("utf-8", "replace")
                headers[hv.key] = (headers[hv.key] + "," + v) if hv.key in headers else v
        user = ci_get(headers, "x-user")
        path = http.path
        d = decide(user, path)
        try:
            remaining = context.time_remaining()
        except Exception:  # pragma: no cover
            remaining = None
        rec = {
            "protocol": "grpc",
            "method": http.method,
            "path": path,
            "host": http.host,
            "headers": headers,
            "user": user,
            "scheme": http.scheme,
            "query": http.query,
            "fragment": http.fragment,
            "request_id": http.id,
            "request_protocol": http.protocol,
            "request_size": http.size,
            "request_body_len": len(http.body) + len(http.raw_body),
            "source": _peer_dict(attrs.source),
            "destination": _peer_dict(attrs.destination),
            # flat convenience copies for test assertions
            "source_principal": attrs.source.principal,
            "source_address": _peer_dict(attrs.source)["address"],
            "source_port": _peer_dict(attrs.source)["port"],
            "destination_address": _peer_dict(attrs.destination)["address"],
            "destination_port": _peer_dict(attrs.destination)["port"],
            "context_extensions": dict(attrs.context_extensions),
            "tls_sni": attrs.tls_session.sni if attrs.HasField("tls_session") else None,
            "has_request_time": attrs.request.HasField("time"),
            "grpc_peer": context.peer(),
            "grpc_metadata": [[k, v if isinstance(v, str) else v.hex()]
                              for k, v in (context.invocation_metadata() or ())],
            "grpc_time_remaining": (None if remaining is None or remaining > 1e9
                                    else round(remaining, 3)),
            "decision": d.as_dict(),
        }
        log_check(rec)
        if d.slow:
            time.sleep(ARGS.slow_seconds)
        resp = external_auth_pb2.CheckResponse()
        resp.status.SetInParent()
        resp.status.code = d.grpc_code
        if d.allow:
            resp.ok_response.SetInParent()  # ensure oneof is ok_response even with no headers
            for k, v in d.headers:
                resp.ok_response.headers.append(_hvo(k, v))
        else:
            resp.status.message = d.reason
            dr = resp.denied_response
            dr.status.code = d.status  # envoy.type.v3.StatusCode numeric == HTTP status
            for k, v in d.headers:
                dr.headers.append(_hvo(k, v))
            dr.body = d.body
        return resp


# --------------------------------------------------------------------------- HTTP
class AuthzHTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive; we always send Content-Length
    server_version = "extauthz-lab"

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):  # quiet unless --verbose
        if ARGS is not None and ARGS.verbose:
            sys.stderr.write("http: " + (fmt % args) + "\n")

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _handle(self):
        body = self._read_body()
        raw_path = self.path
        prefix = ARGS.http_path_prefix or ""
        dpath = raw_path[len(prefix):] if prefix and raw_path.startswith(prefix) else raw_path
        if not dpath.startswith("/"):
            dpath = "/" + dpath
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = (headers[k] + "," + v) if k in headers else v
        user = headers.get("x-user")
        d = decide(user, dpath)
        rec = {
            "protocol": "http",
            "method": self.command,
            "path": raw_path,
            "decision_path": dpath,
            "host": self.headers.get("Host"),
            "headers": headers,
            "header_list": [[k, v] for k, v in self.headers.items()],
            "user": user,
            "http_version": self.request_version,
            "body_len": len(body),
            "client_address": self.client_address[0],
            "client_port": self.client_address[1],
            "decision": d.as_dict(),
        }
        log_check(rec)
        if d.slow:
            time.sleep(ARGS.slow_seconds)
        payload = d.body.encode()
        self.send_response(d.status)
        for k, v in d.headers:
            self.send_header(k, v)
        if payload:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    # any method -> _handle  (BaseHTTPRequestHandler looks up do_<METHOD>)
    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


class DualStackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # e.g. BrokenPipe when the proxy gave up on a /slow check: one line, no traceback
        exc = sys.exc_info()[1]
        print(f"http: client {client_address} error: {exc!r}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- main
def main():
    global ARGS, LOG_FH
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default="127.0.0.1", help="listen address for both listeners")
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--log", required=True, help="JSON-lines file, one line per check (appended)")
    ap.add_argument("--http-path-prefix", default="",
                    help="prefix the proxy puts before the original path (stripped before the /slow test)")
    ap.add_argument("--slow-seconds", type=float, default=2.0)
    ap.add_argument("--grpc-workers", type=int, default=16)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--tls-cert", help="PEM certificate chain for the TLS listeners")
    ap.add_argument("--tls-key", help="PEM private key for the TLS listeners")
    ap.add_argument("--grpcs-port", type=int, help="gRPC with TLS")
    ap.add_argument("--https-port", type=int, help="HTTP protocol with TLS")
    ARGS = ap.parse_args()

    LOG_FH = open(ARGS.log, "a", buffering=1, encoding="utf-8")

    v6 = ":" in ARGS.address
    # gRPC: disable SO_REUSEPORT so a port clash fails loudly instead of silently sharing.
    gserver = grpc.server(
        futures.ThreadPoolExecutor(max_workers=ARGS.grpc_workers),
        options=[("grpc.so_reuseport", 0)],
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AuthorizationServicer(), gserver)
    gaddr = f"[{ARGS.address}]:{ARGS.grpc_port}" if v6 else f"{ARGS.address}:{ARGS.grpc_port}"
    try:
        bound = gserver.add_insecure_port(gaddr)
    except RuntimeError as e:
        bound = 0
        print(f"grpc bind error: {e}", file=sys.stderr)
    if not bound:
        print(f"failed to bind gRPC listener on {gaddr}", file=sys.stderr)
        return 2

    tls = ARGS.tls_cert and ARGS.tls_key
    if tls and ARGS.grpcs_port:
        with open(ARGS.tls_key, "rb") as k, open(ARGS.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        saddr = f"[{ARGS.address}]:{ARGS.grpcs_port}" if v6 else f"{ARGS.address}:{ARGS.grpcs_port}"
        if not gserver.add_secure_port(saddr, creds):
            print(f"failed to bind gRPC TLS listener on {saddr}", file=sys.stderr)
            return 2

    if v6:
        DualStackHTTPServer.address_family = socket.AF_INET6
    servers = []
    try:
        hserver = DualStackHTTPServer((ARGS.address, ARGS.http_port), AuthzHTTPHandler)
        servers.append(hserver)
        if tls and ARGS.https_port:
            sserver = DualStackHTTPServer((ARGS.address, ARGS.https_port), AuthzHTTPHandler)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
            sserver.socket = ctx.wrap_socket(sserver.socket, server_side=True)
            servers.append(sserver)
    except OSError as e:
        print(f"failed to bind an HTTP listener on {ARGS.address}: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    gserver.start()
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="http", daemon=True).start()
    print(f"listening grpc={gaddr} http={ARGS.address}:{hserver.server_address[1]} pid={os.getpid()}",
          file=sys.stderr, flush=True)
    print("READY", flush=True)

    while not stop.wait(0.5):
        pass

    for server in servers:
        server.shutdown()
        server.server_close()
    gserver.stop(grace=0.5).wait(2)
    with LOG_LOCK:
        LOG_FH.close()
        LOG_FH = None
    print("stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
