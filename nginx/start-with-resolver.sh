#!/bin/sh
# compose.yaml's nginx command: gives nginx the container network's DNS server as its `resolver`, then runs it.
# The rendered configuration names the app by its service name (`--upstream app:3000`) and nginx looks it up again
# at each request (cached 5 s), so a restarted or recreated app container, which gets a new address, is found.
# The server is whatever this container's /etc/resolv.conf names first: docker's 127.0.0.11, podman's
# aardvark-dns or dnsname on the network's gateway. Plain sh: runs on the official nginx image and Debian's nginx.
set -eu
server=""
while read -r key value _; do
  if [ "$key" = nameserver ]; then server=$value; break; fi
done < /etc/resolv.conf
[ -n "$server" ] || { echo "nginx/start-with-resolver.sh: no nameserver in /etc/resolv.conf" >&2; exit 1; }
case $server in *:*) server="[$server]" ;; esac
echo "resolver $server valid=5s ipv6=off;" > /etc/nginx/conf.d/00-preview-gate-resolver.conf
exec nginx -g 'daemon off;'
