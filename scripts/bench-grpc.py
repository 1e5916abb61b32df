#!/usr/bin/env python3
"""Measures a running tessera broker from outside, as a real gRPC client sees it.

A separate process with Python grpcio (stubs generated from proto/) against `tessera serve`:
  1. latency with one call in flight: N sequential ExchangeToken calls, then N sequential Introspect calls
     (after a warm-up), on one channel; mean / p50 / p99 / max in microseconds;
  2. throughput under load: grpc.aio with C calls in flight on one channel, for at most D seconds and at most
     M calls per operation; calls per second.

Every loop is bounded (by count, and the load phase also by time). Loopback only: --addr must be a loopback
address. `scripts/bench` starts a dev-mode broker on free ports, mints the assertion and runs this.
Exit status: 0 on success, 1 if any call failed, 2 on a usage or environment problem.
"""
import argparse
import asyncio
import ipaddress
import os
import statistics
import sys
import time

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
RPC_TIMEOUT = 10  # seconds per call


def import_deps(stubs_dir):
    global grpc, pb, pb_grpc
    sys.path.insert(0, os.path.abspath(stubs_dir))
    try:
        import grpc
        from tessera.v1 import broker_pb2 as pb
        from tessera.v1 import broker_pb2_grpc as pb_grpc
    except ImportError as e:
        print(f"bench-grpc: cannot import a dependency ({e}); need grpcio and tessera/v1/broker_pb2*.py under "
              f"--stubs {stubs_dir}", file=sys.stderr)
        sys.exit(2)


def exchange_request(args, assertion):
    return pb.ExchangeTokenRequest(grant_type=GRANT_TOKEN_EXCHANGE, subject_token=assertion,
                                   subject_token_type=TT_JWT, audience=[args.audience], scope=args.scope,
                                   task_id="bench")


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summary(name, samples_ns):
    us = sorted(s / 1000 for s in samples_ns)
    return (f"| {name} | {len(us)} | {statistics.fmean(us):.1f} | {percentile(us, 50):.1f} | "
            f"{percentile(us, 99):.1f} | {us[-1]:.1f} |")


def sequential(args, assertion):
    """One call in flight at a time; returns the table rows and a token for the load phase."""
    with grpc.insecure_channel(args.addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
        stub = pb_grpc.TokenBrokerStub(channel)
        request = exchange_request(args, assertion)
        token = stub.ExchangeToken(request, timeout=RPC_TIMEOUT).access_token
        introspect = pb.IntrospectRequest(token=token)
        for _ in range(args.warmup):
            stub.ExchangeToken(request, timeout=RPC_TIMEOUT)
            stub.Introspect(introspect, timeout=RPC_TIMEOUT)
        rows = []
        for name, call, req, check in [
            ("ExchangeToken", stub.ExchangeToken, request, lambda r: bool(r.access_token)),
            ("Introspect", stub.Introspect, introspect, lambda r: r.active),
        ]:
            samples = []
            for _ in range(args.n):
                start = time.perf_counter_ns()
                response = call(req, timeout=RPC_TIMEOUT)
                samples.append(time.perf_counter_ns() - start)
                if not check(response):
                    raise SystemExit(f"bench-grpc: {name} answered {response!r}")
            rows.append(summary(name, samples))
        return rows, token


async def load(args, assertion, token):
    """C calls in flight on one channel, bounded by --duration seconds and --max-calls per operation."""
    rows = []
    async with grpc.aio.insecure_channel(args.addr) as channel:
        stub = pb_grpc.TokenBrokerStub(channel)
        for name, call, req in [
            ("ExchangeToken", stub.ExchangeToken, exchange_request(args, assertion)),
            ("Introspect", stub.Introspect, pb.IntrospectRequest(token=token)),
        ]:
            await call(req, timeout=RPC_TIMEOUT)
            started = 0
            done = 0
            failed = 0
            begin = time.perf_counter()
            deadline = begin + args.duration

            async def worker():
                nonlocal started, done, failed
                while started < args.max_calls and time.perf_counter() < deadline:
                    started += 1
                    try:
                        await call(req, timeout=RPC_TIMEOUT)
                        done += 1
                    except grpc.aio.AioRpcError as e:
                        failed += 1
                        if failed == 1:
                            print(f"bench-grpc: {name} failed: {e.code().name} {e.details()}", file=sys.stderr)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            elapsed = time.perf_counter() - begin
            rows.append(f"| {name} | {args.concurrency} | {done} | {elapsed:.2f} | {done / elapsed:.0f} |")
            if failed:
                raise SystemExit(f"bench-grpc: {failed} {name} calls failed under load")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description="Latency and throughput of tessera over gRPC, from grpcio.")
    p.add_argument("--addr", required=True, help="broker gRPC address, loopback HOST:PORT (plaintext)")
    p.add_argument("--stubs", required=True, help="directory holding tessera/v1/broker_pb2{,_grpc}.py")
    p.add_argument("--assertion-file", required=True, help="file holding a dev-issuer assertion")
    p.add_argument("--audience", default="https://crm.example")
    p.add_argument("--scope", default="crm:read")
    p.add_argument("-n", type=int, default=2000, help="sequential calls per operation (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up calls of each operation (default 200)")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight under load (default 64)")
    p.add_argument("--duration", type=float, default=5.0, help="at most this many seconds of load per operation")
    p.add_argument("--max-calls", type=int, default=100_000, help="at most this many calls per operation under load")
    p.add_argument("--connect-timeout", type=float, default=20.0)
    args = p.parse_args(argv)
    host = args.addr.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"bench-grpc: {args.addr} is not a loopback address", file=sys.stderr)
        return 2
    if not (0 < args.n <= 1_000_000 and 0 < args.concurrency <= 1024 and 0 < args.duration <= 600):
        print("bench-grpc: -n, --concurrency or --duration out of range", file=sys.stderr)
        return 2
    import_deps(args.stubs)
    with open(args.assertion_file) as f:
        assertion = f.read().strip()

    rows, token = sequential(args, assertion)
    print(f"One call in flight, {args.n} calls each after {args.warmup} warm-up calls (µs):\n")
    print("| operation | n | mean | p50 | p99 | max |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    rows = asyncio.run(load(args, assertion, token))
    print(f"\nUnder load: grpc.aio, {args.concurrency} calls in flight on one channel, at most {args.duration:g} s "
          f"and {args.max_calls} calls per operation:\n")
    print("| operation | in flight | calls | seconds | calls/s |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
