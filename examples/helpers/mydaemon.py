#!/usr/bin/env python3
# Seed 000's `/usr/bin/mydaemon`: serves /srv/www on port 8080 and writes its pid
# file once it listens, which is what the seed's wait_until waits for.
import functools
import http.server
import os

handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv/www")
server = http.server.HTTPServer(("127.0.0.1", 8080), handler)
with open("/var/run/mydaemon.pid", "w") as f:
    f.write(f"{os.getpid()}\n")
server.serve_forever()
