#!/usr/bin/python3
"""Adds N internal snapshots to a qcow2 image through one qemu-storage-daemon
(QMP blockdev-snapshot-internal-sync), so that bench/compare.sh can time
`qemu-img snapshot -c` at 10,000 existing snapshots without paying 10,000
process start-ups (qemu-img rewrites the whole snapshot table on every
create, so filling one snapshot per process takes hours).

Usage: qcow2_fill.py IMAGE COUNT [PREFIX]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def main():
    image, count = sys.argv[1], int(sys.argv[2])
    prefix = sys.argv[3] if len(sys.argv) > 3 else "fill"
    tmp = tempfile.mkdtemp(prefix="qcow2-fill-")
    sock_path = os.path.join(tmp, "qmp.sock")
    daemon = subprocess.Popen([
        "qemu-storage-daemon",
        "--blockdev", f"driver=file,node-name=file0,filename={image},aio=io_uring",
        "--blockdev", "driver=qcow2,node-name=disk0,file=file0",
        "--chardev", f"socket,id=qmp0,path={sock_path},server=on,wait=off",
        "--monitor", "chardev=qmp0",
    ])
    try:
        for _ in range(200):
            if os.path.exists(sock_path):
                break
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        f = s.makefile("rw")

        def reply():
            while True:
                msg = json.loads(f.readline())
                if "event" not in msg:
                    return msg

        reply()  # greeting
        f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n")
        f.flush()
        reply()
        for i in range(count):
            f.write(json.dumps({"execute": "blockdev-snapshot-internal-sync",
                                "arguments": {"device": "disk0", "name": f"{prefix}{i}"}}) + "\n")
            f.flush()
            r = reply()
            if "error" in r:
                sys.exit(f"qcow2_fill: snapshot {i}: {r['error']}")
        f.write(json.dumps({"execute": "quit"}) + "\n")
        f.flush()
    finally:
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:  # quit never sent or not obeyed
            daemon.kill()
            daemon.wait()


if __name__ == "__main__":
    main()
