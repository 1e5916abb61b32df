#!/usr/bin/env python3
"""An independent revocation watcher for tessera, as a gateway would write one.

Over gRPC it uses grpcio with stubs generated from proto/tessera/v1/broker.proto (WatchRevocations); over HTTP
it reads the Server-Sent Events of GET /revocations/watch with httpx, resuming with Last-Event-ID. It shares no
code with the Rust implementation.

It prints one JSON line per message, flushed at once, so the test can kill it at any point:
  {"event": {"cursor": ..., "kind": ..., "value": ..., "issuer": ..., "revoked_at": ..., "expires_at": ...,
             "reason_class": ..., "reason": ...}}
  {"heartbeat": {"cursor": ...}}
  {"error": {"code": ..., "status": ...}}   (then it exits 3)
"""
import argparse
import json
import sys


def emit(obj):
    print(json.dumps(obj), flush=True)


def watch_grpc(addr, stubs, cursor):
    sys.path.insert(0, stubs)
    import grpc
    from tessera.v1 import broker_pb2, broker_pb2_grpc

    channel = grpc.insecure_channel(addr)
    stub = broker_pb2_grpc.TokenBrokerStub(channel)
    try:
        for message in stub.WatchRevocations(broker_pb2.WatchRevocationsRequest(cursor=cursor)):
            if message.WhichOneof("kind") == "event":
                e = message.event
                emit({"event": {
                    "cursor": e.cursor, "kind": e.kind, "value": e.value, "issuer": e.issuer,
                    "revoked_at": e.revoked_at, "expires_at": e.expires_at,
                    "reason_class": e.reason_class, "reason": e.reason,
                }})
            else:
                emit({"heartbeat": {"cursor": message.heartbeat.cursor}})
    except grpc.RpcError as error:
        emit({"error": {"code": error.code().name, "status": error.details()}})
        sys.exit(3)


def watch_sse(url, cursor, authorization):
    import httpx

    headers = {"Accept": "text/event-stream"}
    if cursor:
        headers["Last-Event-ID"] = cursor
    if authorization:
        headers["Authorization"] = authorization
    with httpx.Client(timeout=httpx.Timeout(10.0, read=120.0)) as client:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                emit({"error": {"code": response.status_code, "status": response.json().get("error")}})
                sys.exit(3)
            kind, data, ident = None, [], None
            for line in response.iter_lines():
                if line == "":
                    # The end of one event (the SSE parsing rules, WHATWG HTML §9.2.6).
                    payload = json.loads("\n".join(data)) if data else None
                    if kind == "revocation":
                        if payload.get("cursor") != ident:
                            emit({"error": {"code": "id", "status": "the event id is not its cursor"}})
                            sys.exit(3)
                        emit({"event": payload})
                    elif kind == "heartbeat":
                        emit({"heartbeat": {"cursor": payload["cursor"]}})
                    elif kind == "error":
                        emit({"error": {"code": payload.get("error"), "status": "stream"}})
                        sys.exit(3)
                    kind, data, ident = None, [], None
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    kind = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    ident = value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", help="host:port of the gRPC face")
    parser.add_argument("--stubs", help="folder of the generated Python stubs")
    parser.add_argument("--sse", help="URL of GET /revocations/watch")
    parser.add_argument("--authorization", default="")
    parser.add_argument("--cursor", default="")
    args = parser.parse_args()
    if args.grpc:
        watch_grpc(args.grpc, args.stubs, args.cursor)
    elif args.sse:
        watch_sse(args.sse, args.cursor, args.authorization)
    else:
        parser.error("--grpc or --sse")


if __name__ == "__main__":
    main()
