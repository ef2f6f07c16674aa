#!/usr/bin/env python3
# Cold start to listening: starts BINARY N times on a one-listener
# configuration (a free loopback port) and times exec to the first accepted
# TCP connection. Usage: packaging/cold-start.py BINARY [N]
import socket, subprocess, sys, time, tempfile, os, statistics
bin=sys.argv[1]; n=int(sys.argv[2]) if len(sys.argv)>2 else 20
d=tempfile.mkdtemp()
times=[]
for i in range(n):
    s=socket.socket(); s.bind(("127.0.0.1",0)); port=s.getsockname()[1]; s.close()
    cfg=os.path.join(d,"m.toml")
    open(cfg,"w").write(f'[gateway]\nstate_dir = "{d}/state"\n[[listener]]\nprotocol = "imap"\naddress = "127.0.0.1:{port}"\n')
    t0=time.perf_counter()
    p=subprocess.Popen([bin,"-c",cfg,"run"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    while True:
        try:
            c=socket.create_connection(("127.0.0.1",port),timeout=1); c.close(); break
        except OSError:
            time.sleep(0.0005)
    times.append((time.perf_counter()-t0)*1000)
    p.terminate(); p.wait()
print(f"{bin}: cold start to listening, median {statistics.median(times):.1f} ms, min {min(times):.1f} ms over {n}; size {os.path.getsize(bin)} bytes")
