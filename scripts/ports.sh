# Sourced by scripts/bench and scripts/profile: free loopback ports and waiting for a server to listen on one.
# Errors name the script that sourced this file.

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # port pid log: until something listens on port, failing with the log's tail if pid exits
  local me
  me=scripts/$(basename "$0")
  for _ in $(seq 300); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "$me: a server exited:" >&2; tail -20 "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "$me: nothing listens on $1" >&2; exit 1
}
