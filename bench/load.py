"""Load generators, run as their own process (``python -m bench.load MODE ...``).

A generator in the measured process would share its event loop and its core with the
server it measures; here it gets a process of its own, as a real client would. Each
mode prints one JSON line: count, seconds, rate, latency percentiles, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
from twilio.request_validator import RequestValidator

from bench.common import percentile
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc

TEMPLATE = "HX" + "ab" * 16


def _summary(latencies: list[float], seconds: float, errors: int) -> dict[str, Any]:
    return {
        "count": len(latencies),
        "seconds": seconds,
        "rate": len(latencies) / seconds if seconds else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


async def _unary(address: str, total: int, callers: int) -> dict[str, Any]:
    """``callers`` concurrent callers, each sending SendMessage one after another."""
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = notifier_pb2_grpc.NotifierStub(channel)
        await channel.channel_ready()
        next_index = 0

        async def caller() -> None:
            nonlocal next_index, errors
            while next_index < total:
                i = next_index
                next_index += 1
                request = pb.SendMessageRequest(
                    to=f"+1415555{i % 10000:04d}",
                    content_sid=TEMPLATE,
                    variables={"1": f"customer {i}"},
                )
                began = time.perf_counter()
                try:
                    await stub.SendMessage(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        seconds = time.perf_counter() - began
    return _summary(latencies, seconds, errors)


def callback_form(index: int, status: str = "sent") -> dict[str, str]:
    """A WhatsApp status callback as Twilio posts it, for message number ``index``."""
    sid = f"SM{index:032x}"
    return {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "ChannelInstallSid": "XE" + "0123456789abcdef" * 2,
        "ChannelPrefix": "whatsapp",
        "ChannelToAddress": f"+1415555{index % 10000:04d}",
        "From": "whatsapp:+14155238886",
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
        "To": f"whatsapp:+1415555{index % 10000:04d}",
    }


async def _callbacks(url: str, token: str, total: int, connections: int) -> dict[str, Any]:
    """Signed status callbacks over ``connections`` keep-alive connections."""
    validator = RequestValidator(token)
    forms = [callback_form(i) for i in range(total)]
    signed = [(f, validator.compute_signature(url, f)) for f in forms]  # before the clock starts
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        next_index = 0

        async def client() -> None:
            nonlocal next_index, errors
            while next_index < total:
                form, signature = signed[next_index]
                next_index += 1
                began = time.perf_counter()
                async with session.post(
                    url, data=form, headers={"X-Twilio-Signature": signature}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        seconds = time.perf_counter() - began
    return _summary(latencies, seconds, errors)


def _bulk_requests(total: int, per_request: int) -> Iterator[pb.SendBulkRequest]:
    defaults = pb.BulkContent(content_sid=TEMPLATE, variables={"1": "Shop"})
    for start in range(0, total, per_request):
        items = [
            pb.BulkItem(
                correlation_id=str(i),
                to=f"+1415555{i % 10000:04d}",
                variables={"2": f"customer {i}"},
            )
            for i in range(start, min(total, start + per_request))
        ]
        yield pb.SendBulkRequest(defaults=defaults if start == 0 else None, items=items)


async def _bulk(address: str, total: int, per_request: int) -> dict[str, Any]:
    """One SendBulk stream of ``total`` recipients, ``per_request`` to a request; the
    requests are built before the clock starts so the figure is the server's pace."""
    requests = list(_bulk_requests(total, per_request))
    accepted = errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = notifier_pb2_grpc.NotifierStub(channel)
        await channel.channel_ready()
        began = time.perf_counter()
        async for reply in stub.SendBulk(iter(requests)):
            for result in reply.results:
                if result.HasField("accepted"):
                    accepted += 1
                else:
                    errors += 1
        seconds = time.perf_counter() - began
    return {
        "count": accepted,
        "seconds": seconds,
        "rate": accepted / seconds if seconds else 0.0,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    sub = parser.add_subparsers(dest="mode", required=True)
    unary = sub.add_parser("unary", help="SendMessage calls")
    unary.add_argument("address")
    unary.add_argument("total", type=int)
    unary.add_argument("callers", type=int)
    bulk = sub.add_parser("bulk", help="one SendBulk stream")
    bulk.add_argument("address")
    bulk.add_argument("total", type=int)
    bulk.add_argument("per_request", type=int)
    http = sub.add_parser("callbacks", help="signed status callbacks")
    http.add_argument("url")
    http.add_argument("token")
    http.add_argument("total", type=int)
    http.add_argument("connections", type=int)
    args = parser.parse_args()
    if args.mode == "unary":
        result = asyncio.run(_unary(args.address, args.total, args.callers))
    elif args.mode == "bulk":
        result = asyncio.run(_bulk(args.address, args.total, args.per_request))
    else:
        result = asyncio.run(_callbacks(args.url, args.token, args.total, args.connections))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
