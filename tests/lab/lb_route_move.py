import json, socket, subprocess, sys, time
addr, pool, new_via, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = socket.create_connection((addr, 80), timeout=3)
ok, err, moved, pods = 0, None, False, set()
payload = "x" * 1000
t0 = time.monotonic()
while time.monotonic() - t0 < seconds:
    if not moved and time.monotonic() - t0 > seconds / 3:
        subprocess.run(["ip", "route", "replace", pool, "via", new_via], check=True)
        moved = True
    try:
        s.sendall(f"GET /echo?msg={payload} HTTP/1.1\r\nHost: lb\r\n\r\n".encode())
        data = b""
        while not data.endswith(payload.encode()):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed by peer")
            data += chunk
        ok += 1
    except OSError as exc:
        err = repr(exc)
        break
    time.sleep(0.02)
print(json.dumps({"ok": ok, "error": err, "moved": moved}))
