#!/usr/bin/env python3
import os
import socket
import sys
import time
for (key, value) in os.environ.items():
    print(f"{key}={value}")
port = int(sys.argv[1])
print(f"port is {port}")
s = socket.socket()
s.bind(("127.0.0.1", port))
s.listen()
(conn, _) = s.accept()
conn.recv(1)
s.close()
