"""A stand-in for a TLS front that asks for a client certificate from the client CA (TLS 1.3
only) and answers Triton's readiness path: /root/mtls/{server.crt,server.key,client-ca.crt}."""

import http.server
import ssl

context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.minimum_version = ssl.TLSVersion.TLSv1_3
context.load_cert_chain("/root/mtls/server.crt", "/root/mtls/server.key")
context.verify_mode = ssl.CERT_REQUIRED
context.load_verify_locations("/root/mtls/client-ca.crt")


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ready")


server = http.server.HTTPServer(("0.0.0.0", 9443), Ready)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
