"""Writes the seed corpus of every fuzz target into corpus/<target>/ (run from fuzz/:
`python3 seeds.py`; needs Python's `brotli` module for the brotli seeds). The seeds are the
inputs the targets' formats start from: the example policies, the JWT conformance tokens and
the RFCs' key sets, bodies with each kind of sensitive data, encoded bodies, request heads, TLS
ClientHellos with each kind of SNI, and the table tests' packets."""
import gzip, json, os, ssl, struct, zlib, hashlib, glob

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

def put(target, data, name=None):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    name = name or hashlib.sha1(data).hexdigest()[:16]
    open(os.path.join(d, name), "wb").write(data)

# policy_check: the example policies and a few broken ones.
for f in sorted(glob.glob(os.path.join(ROOT, "policies", "**", "*.yaml"), recursive=True)):
    put("policy_check", open(f, "rb").read(), os.path.basename(f))
put("policy_check", '{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "x", "namespace": "y"}, "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}], "ports": [{"port": 80, "endPort": 90}]}]}}', "json-netpol")
put("policy_check", "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Pod, metadata: {name: p, namespace: a, labels: {app: x}}, status: {podIP: 10.0.0.1}}\n", "list")
put("policy_check", "kind: NetworkPolicy\nmetadata: {name: [}\n", "broken")

# jwt_token: every token of the JWT conformance cases.
for line in open(os.path.join(ROOT, "tests", "conformance", "jwt_cases.jsonl")):
    case = json.loads(line)
    put("jwt_token", case["token"], case["id"])

# jwks_document: the RFCs' keys as sets, one key each, and broken ones.
keys = json.load(open(os.path.join(ROOT, "tests", "conformance", "jwt_keys.json")))
put("jwks_document", json.dumps(keys["idp_jwks"]), "idp")
for name, k in keys["keys"].items():
    jwk = k.get("jwk", k)
    put("jwks_document", json.dumps({"keys": [jwk]}), name)
put("jwks_document", '{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, {"kty": "oct"}, 1, null]}', "broken")

# dlp_stream: [choices, n, sizes..., body]
bodies = [
    b"card 4111 1111 1111 1111 and 5555-5555-5555-4444, ssn 123-45-6789, iban GB82 WEST 1234 5698 7654 32, mail ann@example.com, Authorization: Bearer abcdefgh12345678, EMP-123456",
    b'{"card": "\\u0034111111111111111", "n": "4111\\t1111\\t1111\\t1111", "ok": "378282246310005"}',
    b"x" * 1500 + b" 4111 1111 1111 1111 " + b"y" * 1500,
    b"1" * 2000 + b" 4111111111111111",
    ("card\u00a04111\u00a01111\u00a01111\u00a01111 " * 40).encode(),
]
for i, body in enumerate(bodies):
    for choices, sizes in [(0, [7]), (1, [1, 255]), (2, [100, 3, 17]), (3, [64])]:
        put("dlp_stream", bytes([choices, len(sizes)] + sizes) + body, f"body{i}-{choices}")

# decoders: [choices (encoding, limit), piece size, body]
plain = b"hello 4111 1111 1111 1111 " * 50
import brotli
encoded = {0: gzip.compress(plain), 1: zlib.compress(plain), 2: brotli.compress(plain)}
bomb = {0: gzip.compress(b"\0" * (1 << 20)), 1: zlib.compress(b"\0" * (1 << 20)), 2: brotli.compress(b"\0" * (1 << 20))}
for enc in range(3):
    for limit_bits in (4, 10, 15):
        put("decoders", bytes([enc | (limit_bits << 3), 13]) + encoded[enc], f"enc{enc}-limit{limit_bits}")
    put("decoders", bytes([enc | (15 << 3), 200]) + bomb[enc], f"bomb{enc}")
    put("decoders", bytes([enc, 1]) + encoded[enc][: len(encoded[enc]) // 2], f"cut{enc}")

# http_head
heads = [
    "GET /api/v1/items?q=1 HTTP/1.1\r\nHost: shop.example.com\r\nx-tenant: acme\r\n\r\n",
    "GET /internal/../api/./x//y HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
    "GET /%2e%2e/internal/%2Fsecret;x=1 HTTP/1.1\r\nHost: a.shop.example.com:8080\r\n\r\n",
    "POST /pay?pan=4111+1111+1111+1111&mail=ann%40example.com HTTP/1.1\r\nHost: shop.example.com\r\nx-api-key: key-acme-123\r\ncontent-length: 0\r\n\r\n",
    "GET http://shop.example.com/files/a/raw HTTP/1.1\r\nHost: shop.example.com\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v2/x HTTP/1.0\r\nConnection: x-debug\r\nx-debug: 1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "GET /a\\b HTTP/1.1\r\nHost: [::1]:80\r\nHost: other\r\n\r\n",
]
for i, h in enumerate(heads):
    put("http_head", h, f"head{i}")

# client_hello: ClientHellos with the tunnel's SNI, an ingress name, none.
def hello(sni, alpn=None, tls13=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()
put("client_hello", hello("0a000002.dst.rampart.invalid", ["h2"]), "tunnel-v4")
put("client_hello", hello("fd000000000000000000000000000002.dst.rampart.invalid"), "tunnel-v6")
put("client_hello", hello("00000000000000000000ffff0a000002.dst.rampart.invalid"), "tunnel-mapped")
put("client_hello", hello("shop.example.com", ["http/1.1"]), "ingress")
put("client_hello", hello("x.api.example.com", tls13=False), "ingress-wildcard-tls12")
put("client_hello", hello(None), "no-sni")

# packet: [choices, ...]: raw frames (bit 0 clear) and descriptions (bit 0 set).
def eth(ethertype, payload):
    return bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]) + struct.pack(">H", ethertype) + payload
def ipv4(src, dst, proto, l4, flags=0x40, ihl=5):
    return bytes([0x40 | ihl, 0]) + struct.pack(">H", 4 * ihl + len(l4)) + bytes([0, 1, flags, 0, 64, proto, 0, 0]) + bytes(src) + bytes(dst) + b"\x01" * (4 * (ihl - 5)) + l4
def tcp(s, d, flags=2):
    return struct.pack(">HH", s, d) + bytes([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0])
def ipv6(src, dst, nxt, payload):
    return bytes([0x60, 0, 0, 0]) + struct.pack(">H", len(payload)) + bytes([nxt, 64]) + src + dst + payload
A, B, S = [10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 9]
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("fd000000000000000000000000000002")
raw = [
    eth(0x0800, ipv4(A, B, 6, tcp(40000, 80))),
    eth(0x0800, ipv4(A, B, 6, tcp(40000, 81))),
    eth(0x0800, ipv4(S, B, 6, tcp(40000, 80))),
    eth(0x0800, ipv4(A, B, 6, tcp(40000, 81), ihl=7)),
    eth(0x0800, ipv4(A, B, 6, tcp(40000, 81), flags=0x20)),
    eth(0x0800, ipv4(A, B, 6, b"\0" * 8, flags=0x00) [:6] + bytes([0, 10]) + ipv4(A, B, 6, b"\0" * 8)[8:]),
    eth(0x86DD, ipv6(A6, B6, 6, tcp(40000, 81))),
    eth(0x86DD, ipv6(A6, B6, 0, bytes([60, 0, 1, 4, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0]) + tcp(40000, 80))),
    eth(0x86DD, ipv6(A6, B6, 44, bytes([6, 0, 0, 8, 0, 0, 0, 7]) + tcp(40000, 81))),
    eth(0x0806, b"\0" * 28),
    eth(0x0800, b"\x45"),
]
for i, frame in enumerate(raw):
    put("packet", bytes([0]) + frame, f"raw{i}")
described = [
    [1, 0, 0x9c, 0x40, 0, 81, 2, 0, 0],          # v4 A->B tcp/81
    [1, 1, 0x9c, 0x40, 0, 81, 2, 3, 0x00, 0x04, 0x0b, 10],   # v6 with three extension headers
    [1, 4, 0x9c, 0x40, 0x1f, 0x90, 2, 0x28, 0],  # spoofed, IPv4 options
    [1, 2, 0x9c, 0x40, 0, 22, 2, 0x80, 0],        # B->A tcp/22, more fragments
    [1, 8, 0x9c, 0x40, 0, 54, 0, 0, 5],           # A->B udp/54
]
for i, d in enumerate(described):
    put("packet", bytes(d), f"described{i}")
