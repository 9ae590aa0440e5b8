#!/usr/bin/env bash
# What the lock and history on the engine cost a single update: wall time of `agentctl update` (stop-first,
# min-healthy-time 1s) with two agentctl binaries (one built before engine locks, one after), alternating,
# each on its own container and state dir; ROUNDS updates each, medians.
#   benches/engine-lock-cost.sh OLD_AGENTCTL NEW_AGENTCTL [ROUNDS]
# Needs the images bench/agent:1.0.0 and bench/agent:2.0.0 (the demo agent FROM scratch, with a HEALTHCHECK).
set -euo pipefail
OLD=$1; NEW=$2; ROUNDS=${3:-10}
S=$(mktemp -d)
for who in old new; do docker rm -f lb-$who lb-$who.rev1 lb-$who.rev2 >/dev/null 2>&1 || true; docker run -d --name lb-$who --restart unless-stopped bench/agent:1.0.0 >/dev/null; done
declare -A T
for i in $(seq 1 $ROUNDS); do
  img=bench/agent:$([ $((i % 2)) = 1 ] && echo 2.0.0 || echo 1.0.0)
  for who in old new; do
    bin=$([ $who = old ] && echo $OLD || echo $NEW)
    t0=$(date +%s.%N)
    $bin --state-dir $S/$who --no-progress update lb-$who --image $img --min-healthy-time 1s --period 300ms -o json > $S/out-$who-$i.json 2>$S/err-$who-$i || { echo "FAIL $who $i"; cat $S/err-$who-$i; }
    t1=$(date +%s.%N)
    T[$who]+="$(echo "$t1 - $t0" | bc) "
  done
done
for who in old new; do echo "$who: ${T[$who]}"; echo ${T[$who]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print "median", (NR%2? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; done
for who in old new; do docker rm -f lb-$who $(docker ps -aq --filter name=lb-$who) >/dev/null 2>&1 || true; done
docker rm lb-new.agentctl-lock 2>/dev/null || true
