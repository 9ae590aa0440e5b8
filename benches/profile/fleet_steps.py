#!/usr/bin/env python3
"""Where a fleet rollout's time goes: runs `agentctl apply` (recreate, parallelism 5) over N fresh agents
and timestamps the step lines it prints with --no-progress, then prints per-step medians and the slot time
of the engine phase. Usage: V1=IMAGE:1 V2=IMAGE:2 [AGENTCTL=target/release/agentctl] fleet_steps.py [N]
[maxUnverified] [period]. Containers are labelled prof=1 and removed at the end."""
import atexit, subprocess, threading, time, sys, re, statistics, tempfile, os
N=int(sys.argv[1]) if len(sys.argv)>1 else 50
MU=int(sys.argv[2]) if len(sys.argv)>2 else 10
PERIOD=sys.argv[3] if len(sys.argv)>3 else "100ms"
A=os.environ.get("AGENTCTL","target/release/agentctl")
V1=os.environ["V1"]; V2=os.environ["V2"]
names=[f"prof{i}" for i in range(N)]
def cleanup():
    subprocess.run("docker ps -aq --filter label=prof=1 | xargs -r docker rm -f >/dev/null", shell=True)
cleanup()
atexit.register(cleanup)  # also when a step fails
subprocess.run("printf '%s\\n' "+" ".join(names)+" | xargs -P 10 -I{} docker run -d --name {} --label prof=1 --restart unless-stopped "+V1+" >/dev/null", shell=True, check=True)
time.sleep(5)
targets="".join(f"  - {{host: 'unix:///var/run/docker.sock', container: {n}}}\n" for n in names)
spec=f"name: prof\nimage: {V2}\ntargets:\n{targets}strategy:\n  recreate: {{}}\nparallelism: 5\nmaxUnverified: {MU}\nhealth: {{minHealthyTime: 1s, deadline: 30s, period: {PERIOD}}}\n"
state=tempfile.mkdtemp(dir=os.environ.get("STATE_PARENT","/tmp"))
spec_file=os.path.join(state,"spec.yaml")
open(spec_file,"w").write(spec)
lines=[]
t0=time.monotonic()
p=subprocess.Popen([A,"--state-dir",state,"--no-progress","apply","-f",spec_file],stdout=subprocess.PIPE,stderr=subprocess.PIPE,text=True)
def rd(f,tag):
    for l in f: lines.append((time.monotonic()-t0,tag,l.rstrip()))
th=[threading.Thread(target=rd,args=(p.stdout,"out")),threading.Thread(target=rd,args=(p.stderr,"err"))]
[t.start() for t in th]; p.wait(); [t.join() for t in th]
total=time.monotonic()-t0
if p.returncode!=0:
    sys.exit(f"agentctl apply exited {p.returncode}:\n"+"\n".join(l for _,_,l in lines[-10:]))
ev={}
def mark(n,k,t):
    ev.setdefault(n,{}).setdefault(k,t)
for t,tag,l in lines:
    if tag!="err":
        continue
    m=re.match(r"preflight ok: (prof\d+)",l) or re.match(r"verifying (prof\d+)",l)
    if m: mark(m.group(1),"preflight" if l.startswith("preflight") else "verifying",t)
    # `[stop-old] stopping NAME`, `[rename-old] NAME -> NAME.revN`, `[create-new] creating NAME from …`
    m=re.match(r"\[(stop-old|rename-old|create-new|start-new)\] .*?\b(prof\d+)\b",l)
    if m: mark(m.group(2),m.group(1),t)
print(f"N={N} maxUnverified={MU} exit={p.returncode} total {total:.1f} s")
# (A target's `updated` line comes when its whole step ends, so verification is not timed per target.)
order=["preflight","stop-old","rename-old","create-new","start-new","verifying"]
for a,b in zip(order,order[1:]):
    d=[v[b]-v[a] for v in ev.values() if a in v and b in v]
    if d: print(f"{a:>10} -> {b:<10} median {statistics.median(d)*1000:7.0f} ms  max {max(d)*1000:7.0f} ms  n={len(d)}")
first=min(v.get("preflight",1e9) for v in ev.values()); lastv=max(v.get("verifying",0) for v in ev.values())
print(f"first preflight at {first:.2f} s; last verifying starts at {lastv:.2f} s; end {total:.2f} s")
eng=[v["verifying"]-v["preflight"] for v in ev.values() if "verifying" in v and "preflight" in v]
print(f"per-target engine phase (preflight -> verifying) sum {sum(eng):.1f} s, /5 slots = {sum(eng)/5:.1f} s")
