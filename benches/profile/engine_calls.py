#!/usr/bin/env python3
"""The engine limit with per-call timings: stop, remove, create, start and inspect of N agents through the
API over the unix socket, 5 at a time, no verification. Usage: V1=IMAGE:1 V2=IMAGE:2 engine_calls.py [N]."""
import atexit, socket, http.client, json, time, threading, subprocess, statistics, sys, os
N=int(sys.argv[1]) if len(sys.argv)>1 else 50
V1=os.environ["V1"]; V2=os.environ["V2"]
class UC(http.client.HTTPConnection):
    def __init__(s): super().__init__("localhost")
    def connect(s):
        s.sock=socket.socket(socket.AF_UNIX); s.sock.connect("/var/run/docker.sock")
def call(m,path,body=None):
    c=UC(); h={"Content-Type":"application/json"} if body is not None else {}
    t=time.monotonic(); c.request(m,"/v1.41"+path,json.dumps(body) if body is not None else None,h); r=c.getresponse(); r.read(); c.close()
    if r.status>=300: raise Exception(f"{m} {path} {r.status}")
    return time.monotonic()-t
names=[f"lim{i}" for i in range(N)]
def cleanup():
    subprocess.run("docker ps -aq --filter label=prof=1 | xargs -r docker rm -f >/dev/null", shell=True)
cleanup()
atexit.register(cleanup)  # also when a call fails
subprocess.run("printf '%s\\n' "+" ".join(names)+" | xargs -P 10 -I{} docker run -d --name {} --label prof=1 --restart unless-stopped "+V1+" >/dev/null", shell=True, check=True)
time.sleep(5)
times={"stop":[],"remove":[],"create":[],"start":[],"inspect":[]}
sem=threading.Semaphore(5); lock=threading.Lock()
def one(n):
    with sem:
        d={}
        d["stop"]=call("POST",f"/containers/{n}/stop?t=10")
        d["remove"]=call("DELETE",f"/containers/{n}")
        d["create"]=call("POST",f"/containers/create?name={n}",{"Image":V2,"Labels":{"prof":"1"},"HostConfig":{"RestartPolicy":{"Name":"unless-stopped"}}})
        d["start"]=call("POST",f"/containers/{n}/start")
        d["inspect"]=call("GET",f"/containers/{n}/json")
        with lock:
            for k,v in d.items(): times[k].append(v)
t0=time.monotonic()
ts=[threading.Thread(target=one,args=(n,)) for n in names]; [t.start() for t in ts]; [t.join() for t in ts]
print(f"engine limit total {time.monotonic()-t0:.1f} s")
for k,v in times.items(): print(f"{k:>8} median {statistics.median(v)*1000:6.0f} ms max {max(v)*1000:6.0f} ms")
