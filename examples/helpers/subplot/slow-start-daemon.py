#!/usr/bin/env python3
import socket
import time
time.sleep(2)
s = socket.socket()
s.bind(("127.0.0.1", 8888))
s.listen()
(conn, _) = s.accept()
conn.recv(1)
s.close()
print("OK")
