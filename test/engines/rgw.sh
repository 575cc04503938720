#!/usr/bin/env bash
# A throwaway S3 engine for tests: Ceph's RADOS Gateway (Debian's radosgw 16) over one monitor and one in-memory
# OSD, all in a temporary directory on 127.0.0.1, with one S3 user and one bucket; stopped (each daemon by its
# pid, waited for) and removed when this script exits.
#
#   bash test/engines/rgw.sh <command…>   runs the command with S3_ENDPOINT, S3_BUCKET, S3_REGION,
#                                         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY exported, stops the daemons
#                                         after it, exits with the command's exit code
#   source test/engines/rgw.sh            (no command) starts it and exports the same in the calling shell; the
#                                         daemons stop when that shell exits
#
# cephx with one keyring holding every entity's key (the monitor's mkfs imports them all): the gateway does not
# get past its monitor session with `auth none` in Ceph 16. No manager daemon: placement groups are created by the
# monitor, and nothing here needs its modules.
# Ceph's daemons can take seconds to exit on SIGTERM: the trap waits for every pid before removing the folder.
set -euo pipefail

if ! command -v radosgw >/dev/null || ! command -v ceph-mon >/dev/null || ! command -v ceph-osd >/dev/null || ! command -v curl >/dev/null; then
  echo "rgw.sh: installing radosgw ceph-mon ceph-osd curl" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq radosgw ceph-mon ceph-osd curl >&2
fi

# Seconds since `since` (nanoseconds from date +%s%N), with two decimals.
seconds_since() {
  local ms=$((($(date +%s%N) - $1) / 1000000))
  printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10))
}
started_at=$(date +%s%N)
rgw_dir=$(mktemp -d "${TMPDIR:-/tmp}/preview-gate-rgw.XXXXXX")
chmod 700 "$rgw_dir"
daemon_pids=()

stop_rgw() {
  local pid stopping_at
  stopping_at=$(date +%s%N)
  # The gateway first (it holds sessions to the OSD and the monitor), then the OSD, then the monitor.
  for ((i = ${#daemon_pids[@]} - 1; i >= 0; i--)); do
    pid=${daemon_pids[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    # Up to 20 s for a clean exit, then KILL; wait either way so nothing still writes into $rgw_dir.
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$rgw_dir"
  if ((${#daemon_pids[@]})); then echo "rgw.sh: RGW stopped in $(seconds_since "$stopping_at") s" >&2; fi
}
trap stop_rgw EXIT

# A free port: the kernel picks one for a socket bound to port 0.
free_port() {
  node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
}
mon_port=$(free_port)
rgw_port=$(free_port)
fsid=$(cat /proc/sys/kernel/random/uuid)

mkdir -p "$rgw_dir"/{run,log,mon,osd,rgw}
conf="$rgw_dir/ceph.conf"
cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
ms bind ipv6 = false
auth allow insecure global id reclaim = false
run dir = $rgw_dir/run
admin socket = $rgw_dir/run/\$name.asok
log file = $rgw_dir/log/\$name.log
pid file = $rgw_dir/run/\$name.pid
mon data = $rgw_dir/mon/\$name
osd data = $rgw_dir/osd/\$name
keyring = $rgw_dir/keyring
osd objectstore = memstore
memstore device bytes = 2147483648
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd max object name len = 460
osd max object namespace len = 64
[client.rgw.test]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $rgw_dir/rgw
rgw dns name = 127.0.0.1
CONF
keyring="$rgw_dir/keyring"
ceph-authtool --create-keyring "$keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
# A fresh cluster's first OSD is osd.0.
ceph-authtool "$keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap osd 'allow *' >/dev/null
ceph-authtool "$keyring" --gen-key -n client.rgw.test --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null

ceph_args=(--conf "$conf" --cluster ceph)
fail() {
  echo "rgw.sh: $1" >&2
  for log in "$rgw_dir"/log/*.log; do [[ -f "$log" ]] && { echo "--- $log" >&2; tail -30 "$log" >&2; }; done
  exit 1
}

# The monitor: a monmap naming only itself, then mkfs, then the daemon in the foreground (-f), so its pid is ours.
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$rgw_dir/monmap" >/dev/null
ceph-mon "${ceph_args[@]}" --id a --mkfs --monmap "$rgw_dir/monmap" --keyring "$keyring" >"$rgw_dir/log/mon-mkfs.out" 2>&1 || fail "ceph-mon --mkfs failed"
ceph-mon "${ceph_args[@]}" --id a -f >"$rgw_dir/log/mon.out" 2>&1 &
daemon_pids+=($!)

# The OSD: an id from the monitor, mkfs of its in-memory store, the daemon (it puts itself in the CRUSH map).
osd_id=$(ceph "${ceph_args[@]}" --connect-timeout 30 osd create) || fail "the monitor did not answer"
mkdir -p "$rgw_dir/osd/osd.$osd_id"
ceph-osd "${ceph_args[@]}" --id "$osd_id" --mkfs >"$rgw_dir/log/osd-mkfs.out" 2>&1 || fail "ceph-osd --mkfs failed"
ceph-osd "${ceph_args[@]}" --id "$osd_id" -f >"$rgw_dir/log/osd.out" 2>&1 &
daemon_pids+=($!)

# The gateway creates its pools itself once the OSD is up.
radosgw "${ceph_args[@]}" --id rgw.test -f >"$rgw_dir/log/rgw.out" 2>&1 &
daemon_pids+=($!)

endpoint="http://127.0.0.1:$rgw_port"
for _ in $(seq 1 1200); do
  if curl -s -o /dev/null "$endpoint/"; then break; fi
  for pid in "${daemon_pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a daemon exited during start"; done
  sleep 0.1
done
curl -s -o /dev/null "$endpoint/" || fail "the gateway did not answer on $endpoint"

access_key=$(head -c 15 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
secret_key=$(head -c 30 /dev/urandom | od -An -tx1 | tr -d ' \n')
radosgw-admin "${ceph_args[@]}" user create --uid=preview-gate --display-name=preview-gate \
  --access-key="$access_key" --secret="$secret_key" >/dev/null 2>"$rgw_dir/log/user.err" || fail "radosgw-admin user create failed"

export S3_ENDPOINT="$endpoint"
export S3_BUCKET=preview-gate-test
export S3_REGION=us-east-1
export AWS_ACCESS_KEY_ID="$access_key"
export AWS_SECRET_ACCESS_KEY="$secret_key"

# The bucket, made through S3 itself with the SDK the app uses (no other S3 client is installed), resolved from
# this repository whatever the working directory.
(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && node --input-type=module -e "
import { S3Client, CreateBucketCommand } from '@aws-sdk/client-s3';
const s3 = new S3Client({ endpoint: process.env.S3_ENDPOINT, region: process.env.S3_REGION, forcePathStyle: true });
await s3.send(new CreateBucketCommand({ Bucket: process.env.S3_BUCKET }));
") 2>"$rgw_dir/log/bucket.err" || fail "creating the bucket failed: $(cat "$rgw_dir/log/bucket.err")"

echo "S3_ENDPOINT=$S3_ENDPOINT S3_BUCKET=$S3_BUCKET (RGW up in $(seconds_since "$started_at") s)" >&2

if [[ $# -gt 0 ]]; then
  # In the background, waited for: a TERM or INT for this script (a CI time-out) then stops the command and
  # the daemons at once, instead of after the command ends on its own (bash runs traps between commands).
  "$@" <&0 &
  command_pid=$!
  trap 'kill -TERM "$command_pid" 2>/dev/null; wait "$command_pid" 2>/dev/null; exit 143' TERM
  trap 'kill -INT "$command_pid" 2>/dev/null; wait "$command_pid" 2>/dev/null; exit 130' INT
  set +e
  wait "$command_pid"
  status=$?
  set -e
  exit "$status"
fi
